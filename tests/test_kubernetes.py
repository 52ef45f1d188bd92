"""deploy/kubernetes/ and the Dockerfile, checked offline: every manifest against Kubernetes' own schemas
(kubernetes-validate, strict: unknown fields are errors), the router's haproxy.cfg against the generator and
HAProxy, the spec against the replica's loader, and the numbers that must agree across files.

No cluster and no image builder run here: container registries are unreachable from this machine, so buildah
cannot pull a base image (docs/scaling.md). The Dockerfile's build steps run against a fresh virtualenv
instead (slow)."""

from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import pytest
import requests
import yaml

from deploy.haproxy.config import main as haproxy_config_main
from replica.interface import check_source
from replica.spec import load_spec
from tests.haproxy_proc import find_haproxy
from tests.replica_proc import free_port

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(K8S.glob("*.yaml"))
ROUTER_ARGS = ["--kubernetes", "8", "--bind", ":8080"]  # as router.yaml's comment says


def documents() -> list[dict]:
    return [d for path in MANIFESTS for d in yaml.safe_load_all(path.read_text()) if d]


def find(kind: str, name: str) -> dict:
    return next(d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name)


def container(workload: dict) -> dict:
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    return c


def env(c: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_every_manifest_is_valid_kubernetes(version):
    kinds = []
    for doc in documents():
        kubernetes_validate.validate(doc, version, strict=True)
        kinds.append(doc["kind"])
    assert sorted(set(kinds)) == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "StatefulSet"]


def test_the_validator_rejects_a_wrong_field():
    sts = copy.deepcopy(find("StatefulSet", "replica"))
    sts["spec"]["template"]["spec"]["terminationGracePeriod"] = 60
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, "1.37.0", strict=True)


def test_router_config_is_the_generators_and_valid_haproxy(tmp_path, capsys):
    assert haproxy_config_main(ROUTER_ARGS) == 0
    generated = capsys.readouterr().out
    cfg = find("ConfigMap", "replica-router")["data"]["haproxy.cfg"]
    assert cfg == generated, "deploy/kubernetes/router.yaml is stale: regenerate its haproxy.cfg"
    sts = find("StatefulSet", "replica")
    assert f"server {sts['metadata']['name']}-0 \"{sts['metadata']['name']}-0.{sts['spec']['serviceName']}." in cfg
    assert sts["spec"]["replicas"] <= 8, "the router lists 8 pods: raise --kubernetes with the replicas"
    port = container(sts)["ports"][0]["containerPort"]
    assert f"svc.${{CLUSTER_DOMAIN}}:{port}\"" in cfg
    router = container(find("Deployment", "replica-router"))
    assert router["ports"][0]["containerPort"] == 8080 and {"POD_NAMESPACE", "CLUSTER_DOMAIN"} <= set(env(router))
    if find_haproxy() is None:
        pytest.skip("haproxy is not installed: `haproxy -c` not run")
    (tmp_path / "haproxy.cfg").write_text(cfg)
    check = subprocess.run([find_haproxy(), "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True,
                           text=True, env={**os.environ, "POD_NAMESPACE": "models", "CLUSTER_DOMAIN": "cluster.local"})
    assert check.returncode == 0, check.stdout + check.stderr


def test_spec_configmap_is_a_valid_spec(tmp_path):
    data = find("ConfigMap", "replica-spec")["data"]
    for name, text in data.items():
        (tmp_path / name).write_text(text)
    api = load_spec(tmp_path / "api.yaml")
    assert api.predictor.caching and api.predictor.processes_per_replica == 1
    assert check_source(api.predictor.path, api.predictor.type, True) == []
    args = container(find("StatefulSet", "replica"))["args"]
    assert args == ["/etc/replica/api.yaml"]


def test_replica_probes_drain_and_volume_agree():
    sts = find("StatefulSet", "replica")
    headless = find("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    pod = sts["spec"]["template"]["spec"]
    c = container(sts)
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(env(c)["REPLICA_DRAIN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + drain
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    assert mount["mountPath"] == env(c)["REPLICA_STATE_DIR"] == dockerfile_volume()
    labels = sts["spec"]["template"]["metadata"]["labels"]
    for doc in (headless, find("PodDisruptionBudget", "replica")):
        selector = doc["spec"]["selector"]
        assert (selector.get("matchLabels") or selector).items() <= labels.items()
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_router_drain_fits_its_grace_period():
    router = find("Deployment", "replica-router")
    c = container(router)
    cfg = find("ConfigMap", "replica-router")["data"]["haproxy.cfg"]
    hard_stop = int(re.search(r"hard-stop-after (\d+)s", cfg).group(1))
    assert router["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > \
        hard_stop + float(c["lifecycle"]["preStop"]["exec"]["command"][1])
    labels = router["spec"]["template"]["metadata"]["labels"]
    assert find("Service", "replica-router")["spec"]["selector"].items() <= labels.items()


# -- the Dockerfile -------------------------------------------------------------------------------------------

def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), one list per stage."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def dockerfile_volume() -> str:
    final = dockerfile_stages()[-1]
    (volume,) = [line for line in final if line.startswith("VOLUME")]
    return yaml.safe_load(volume.split(None, 1)[1])[0]


def test_dockerfile_is_multi_stage_and_runs_as_a_user():
    build, final = dockerfile_stages()
    assert " AS build" in build[0] and any(line.startswith("COPY --from=build") for line in final)
    (user,) = [line for line in final if line.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in ("0", "root")
    for line in build:
        if line.startswith("COPY ") and "--from" not in line:
            for source in shlex.split(line)[1:-1]:
                assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is not in the repository"


def _build_stage(tmp_path) -> tuple[Path, dict]:
    """The Dockerfile's build stage, its RUN lines as written, in a copy of what its COPY lines take, with VENV
    in tmp: (the virtualenv, the environment it was built with)."""
    build = dockerfile_stages()[0]
    src = tmp_path / "src"
    src.mkdir()
    for line in build:
        if line.startswith("COPY "):
            *sources, dest = shlex.split(line)[1:]
            for source in sources:
                target = src / (Path(source).name if dest.endswith("/") else dest)
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(ROOT / source, target)
    venv = tmp_path / "venv"
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    clean_env.update(VENV=str(venv), PIP_DISABLE_PIP_VERSION_CHECK="1")
    python = shutil.which("python3", path="/usr/local/bin:/usr/bin") or sys.executable
    for line in build:
        if line.startswith("RUN "):
            command = line[4:].replace("python -m venv", f"{python} -m venv", 1)
            done = subprocess.run(["bash", "-ec", command], cwd=src, env=clean_env, capture_output=True, text=True,
                                  timeout=900)
            assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return venv, clean_env


def _serve_until_ready(command: list[str], env: dict, tmp_path: Path, port: int) -> subprocess.Popen:
    log = tmp_path / f"replica-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, cwd=tmp_path, start_new_session=True, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while True:
        assert proc.poll() is None, f"the replica exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except requests.ConnectionError:
            pass
        assert time.time() < deadline, f"not ready after 120 s:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


@pytest.mark.slow
def test_dockerfile_build_steps_in_a_fresh_virtualenv(tmp_path):
    """The build stage's steps; then the installed (not editable) replica serves a prediction."""
    venv, clean_env = _build_stage(tmp_path)
    project = tmp_path / "project"
    (project / "model").mkdir(parents=True)
    (project / "model" / "weights.txt").write_text("3")
    (project / "predictor.py").write_text(
        "class PythonPredictor:\n"
        "    def __init__(self, config, python_client):\n        self.client = python_client\n"
        "    def load_model(self, model_path):\n        return int(open(model_path + '/weights.txt').read())\n"
        "    def predict(self, payload):\n        return {'y': self.client.get_model() * payload['x']}\n")
    (project / "api.yaml").write_text("name: demo\nkind: RealtimeAPI\npredictor:\n  type: python\n"
                                      "  path: predictor.py\n  model_path: model\n")
    port = free_port()
    proc = _serve_until_ready([str(venv / "bin" / "replica"), "serve", str(project / "api.yaml"), "--port",
                               str(port), "--state-dir", str(tmp_path / "state")], clean_env, tmp_path, port)
    try:
        assert requests.post(f"http://127.0.0.1:{port}/", json={"x": 2}, timeout=10).json() == {"y": 6}
    finally:
        proc.terminate()
        proc.wait(60)


@pytest.mark.slow
def test_project_dockerfile_bakes_in_a_project_and_its_requirements(tmp_path):
    """deploy/docker/project.Dockerfile's steps on top of the build stage's virtualenv, /etc/replica and the
    packages folder in tmp: the project's requirement is installed at build time, and the replica then serves
    with a fresh state directory (the container's volume) without installing anything."""
    venv, env = _build_stage(tmp_path)
    lines = (ROOT / "deploy" / "docker" / "project.Dockerfile").read_text().replace("\\\n", " ").splitlines()
    etc, packages = tmp_path / "etc-replica", tmp_path / "project-packages"
    (etc / "model").mkdir(parents=True)
    (etc / "model" / "weights.txt").write_text("3")
    (etc / "requirements.txt").write_text("tabulate==0.9.0\n")
    (etc / "predictor.py").write_text(
        "import tabulate\n\n\nclass PythonPredictor:\n"
        "    def __init__(self, config, python_client):\n        self.client = python_client\n"
        "    def load_model(self, model_path):\n        return int(open(model_path + '/weights.txt').read())\n"
        "    def predict(self, payload):\n        return {'y': self.client.get_model() * payload['x'],"
        " 'table': tabulate.tabulate([[1]])}\n")
    (etc / "api.yaml").write_text("name: demo\nkind: RealtimeAPI\npredictor:\n  type: python\n"
                                  "  path: predictor.py\n  model_path: model\n")
    env = {**env, "PATH": f"{venv / 'bin'}:{env['PATH']}", "REPLICA_PACKAGES_DIR": str(packages),
           "REPLICA_SPEC": str(etc / "api.yaml")}
    runs = [ln[4:].replace("/etc/replica", str(etc)) for ln in lines if ln.startswith("RUN ")]
    assert runs and any("replica prepare" in r for r in runs)
    for command in runs:
        done = subprocess.run(["bash", "-ec", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert any(packages.glob("*/site/tabulate/__init__.py")), "the requirement was installed into the packages folder"
    port = free_port()
    proc = _serve_until_ready([str(venv / "bin" / "replica"), "serve", env["REPLICA_SPEC"], "--port", str(port),
                               "--state-dir", str(tmp_path / "volume")], env, tmp_path, port)
    try:
        answer = requests.post(f"http://127.0.0.1:{port}/", json={"x": 2}, timeout=10).json()
        assert answer["y"] == 6 and "1" in answer["table"]
    finally:
        proc.terminate()
        proc.wait(60)
    assert not (tmp_path / "volume" / "project").exists()  # nothing installed at start
