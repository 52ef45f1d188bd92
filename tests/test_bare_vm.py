"""Several replicas on one host from the template unit `replica@.service`, behind the HAProxy configuration
`make haproxy-config` writes: both rendered, verified (`systemd-analyze verify`, `haproxy -c`), and run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.haproxy_proc import HAProxyProcess, find_haproxy
from tests.helpers import write_api
from tests.predictors import json_predictor
from tests.replica_proc import ReplicaProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
PREDICTOR = json_predictor("""
def predict(self, query_params):
    return self.client.get_model(query_params["model"])
""")

pytestmark = pytest.mark.skipif(find_haproxy() is None, reason="haproxy is not installed (make test installs it)")


class UnitReplica(ReplicaProcess):
    """A replica started the way systemd starts an instance of the rendered template: its ExecStart and
    Environment= lines with %i the port; the state and runtime directories (StateDirectory=,
    RuntimeDirectory=) under the test's folder instead of /var/lib and /run."""

    def __init__(self, unit: str, port: int, folder: Path):
        super().__init__(Path("unused"), folder / "state", port=port)
        lines = [ln.replace("%i", str(port)) for ln in unit.splitlines()]
        self.command = next(ln.split("=", 1)[1] for ln in lines if ln.startswith("ExecStart=")).split()
        self.unit_env = dict(ln.split("=", 1)[1].split("=", 1) for ln in lines if ln.startswith("Environment="))
        self.folder = folder

    def start(self) -> "UnitReplica":
        run = self.folder / "run"
        run.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.unit_env, "REPLICA_STATE_DIR": str(self.state_dir), "RUNTIME_DIRECTORY": str(run),
               "REPLICA_POLL_INTERVAL": "1"}
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.state_dir, start_new_session=True)
        return self


def _make(target: str, **variables: str) -> subprocess.CompletedProcess:
    args = ["make", "-s", "-C", str(ROOT), target, *(f"{k}={v}" for k, v in variables.items())]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)


def test_two_replicas_from_the_template_unit_behind_the_rendered_haproxy(tmp_path):
    models = tmp_path / "models"
    names = [f"model-{i}" for i in range(8)]
    for name in names:
        (models / name).mkdir(parents=True)
        (models / name / "model.json").write_text(json.dumps({"name": name}))
    spec = write_api(tmp_path / "api", PREDICTOR, type="python",
                     models={"dir": str(models), "cache_size": 2, "disk_cache_size": 4})
    build = tmp_path / "build"
    ports = [free_port(), free_port()]
    _make("replica-template", BUILD=str(build), PREFIX=str(ROOT), SPEC=str(spec), SERVICE_USER="root")
    unit = (build / "replica@.service").read_text()
    assert not re.search(r"@[A-Z]+@", unit), "every placeholder filled in"
    assert f"ExecStart={ROOT}/.venv/bin/replica serve {spec} --port %i" in unit.splitlines()
    assert {"StateDirectory=replica/%i", "Environment=REPLICA_STATE_DIR=/var/lib/replica/%i"} <= set(unit.splitlines())
    if shutil.which("systemd-analyze") is not None:
        for port in ports:  # an instance verifies against the template beside it
            check = subprocess.run(["systemd-analyze", "verify", str(build / f"replica@{port}.service")],
                                   capture_output=True, text=True, timeout=60)
            assert check.returncode == 0, check.stdout + check.stderr
    bind = free_port()
    haproxy_dir = tmp_path / "haproxy"
    haproxy_dir.mkdir()
    servers = " ".join(f"host1-{p}=127.0.0.1:{p}" for p in ports)
    _make("haproxy-config", BUILD=str(build), BIND=f"127.0.0.1:{bind}", SERVERS=servers,
          HAPROXY_ARGS=f"--stats-socket {haproxy_dir / 'haproxy.sock'} --check-interval 500ms --rise 1")
    replicas = [UnitReplica(unit, port, tmp_path / f"replica-{port}") for port in ports]
    haproxy = HAProxyProcess(haproxy_dir, [], port=bind, config=build / "haproxy.cfg")
    try:
        for r in replicas:
            r.start()
        for r in replicas:
            r.wait_ready()
        haproxy.start().wait_ready()
        for _ in range(3):
            for name in names:
                answer = requests.post(f"{haproxy.base}/?model={name}", json={}, timeout=30)
                assert answer.status_code == 200 and answer.json() == {"name": name}, answer.text
        served = {r.port: _requests_by_model(r) for r in replicas}
        for name in names:  # each model answered by one replica, its home, every time
            homes = [port for port, counts in served.items() if counts[name]]
            assert len(homes) == 1 and served[homes[0]][name] == 3, (name, served)
        assert all(sum(counts.values()) for counts in served.values()), "both replicas are home to some models"
    finally:
        haproxy.stop()
        for r in replicas:
            r.stop()


def _requests_by_model(r: ReplicaProcess) -> Counter:
    counts: Counter = Counter()
    for family in text_string_to_metric_families(r.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "replica_requests_total" and sample.labels.get("code") == "200":
                counts[sample.labels["model"]] += sample.value
    return counts
