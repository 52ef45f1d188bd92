"""Bad input of every kind, and what the user sees: specs, predictor files, model layouts upstream, corrupt model
files, request bodies and names in URLs.

Every case checks the status (or exit) code, that the message names the problem (the key path, the model, the
input...), that no Python traceback reaches the client, and that the replica still serves its good models
afterwards (a real prediction, checked against the known weights).

Few processes: spec and predictor-file cases run `replica validate` in-process (what the CLI runs) plus a handful of
real subprocesses; every request case runs against one of three module-scoped replicas (ONNX from S3 holding the
good and the broken models under one `models.dir`, Python and TensorFlow from local folders); the keys that S3
servers such as SeaweedFS refuse to store ('..', '.') go through the real watcher with a stub upstream.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import textwrap
import urllib.parse
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from replica.layout import ObjectInfo
from replica.spec import MODEL_NAME_RE
from supervisor.upstream import Written
from scripts.model_factory import IRIS_BIAS, IRIS_BIAS_V2, IRIS_SAMPLES, IRIS_WEIGHTS, write_onnx_linear, \
    write_python_linear
from tests.helpers import serving, write_api, write_spec, sync
from tests.predictors import LINEAR, json_predictor
from tests.replica_proc import wait_for
from tests.s3server import delete_bucket

REPO = Path(__file__).resolve().parent.parent
FEATURES = [x for x, _ in IRIS_SAMPLES]
SCORES = np.asarray(FEATURES) @ np.asarray(IRIS_WEIGHTS) + np.asarray(IRIS_BIAS)
SCORES_V2 = np.asarray(FEATURES) @ np.asarray(IRIS_WEIGHTS) + np.asarray(IRIS_BIAS_V2)
MAX_BODY = 64 << 10  # --max-request-size of the ONNX replica


# ==========================================================================
# helpers
# ==========================================================================

def assert_no_traceback(text: str) -> None:
    assert "Traceback" not in text and 'File "' not in text, text[:2000]


def error_of(resp, status: int) -> str:
    """The JSON error of a response with this status; never a traceback."""
    assert resp.status_code == status, (resp.status_code, resp.text[:2000])
    assert_no_traceback(resp.text)
    assert resp.headers["Content-Type"].startswith("application/json"), resp.headers["Content-Type"]
    body = resp.json()
    assert set(body) == {"error"}, body
    return body["error"]


def has_all(text: str, *fragments: str) -> None:
    for f in fragments:
        assert f in text, (f, text)


def raw_request(r, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """A request with the path sent exactly as written (requests would normalise '..' and quoting)."""
    conn = http.client.HTTPConnection("127.0.0.1", r.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def model_status(r, name: str) -> dict:
    resp = r.get("/v1/models/" + urllib.parse.quote(name, safe=""))
    assert resp.status_code == 200, resp.text
    return resp.json()


def all_errors(status: dict) -> str:
    """A model's own error and every version's, as one string."""
    errors = [status.get("error") or ""] + [row.get("error") or "" for row in status["model_version_status"]]
    return " | ".join(e for e in errors if e)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).rglob("*") if p.is_file() or p.is_symlink())


# ==========================================================================
# 1. specs: `replica validate` exits 2 naming the key path
# ==========================================================================

GOOD_PREDICTORS = """
class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client

    def predict(self, payload):
        return self.client.predict(payload)


class PythonPredictor:
    def __init__(self, config, python_client):
        self.client = python_client

    def load_model(self, model_path):
        return model_path

    def predict(self, payload):
        return payload
"""


def _api(**predictor) -> str:
    pred = {"type": "onnx", "path": "predictor.py", "model_path": "models/iris"}
    pred.update(predictor)
    for k in [k for k, v in pred.items() if v is None]:
        del pred[k]
    return yaml.safe_dump([{"name": "iris", "kind": "RealtimeAPI", "predictor": pred}], sort_keys=False,
                          allow_unicode=True)


def _paths(*entries) -> dict:
    return {"paths": [dict(e) for e in entries]}


P = "[0].predictor"
SPEC_CASES = [
    # (id, spec text or bytes, fragments the message must hold)
    ("invalid-yaml", "- name: iris\n  predictor: {type: onnx, path: [\n", ["not valid YAML", "line"]),
    ("tab-indented-yaml", "- name: iris\n\tpredictor: {}\n", ["not valid YAML"]),
    ("duplicate-key", "- name: iris\n  predictor:\n    type: onnx\n    path: predictor.py\n    type: python\n"
                      "    model_path: models/iris\n", ["not valid YAML", "duplicate key 'type'", "line 3"]),
    ("not-utf8", b"- name: iris\xff\n", ["not UTF-8"]),
    ("empty-file", "", ["an API mapping or a list of API mappings"]),
    ("a-scalar", "just text\n", ["an API mapping or a list of API mappings"]),
    ("two-apis-no-api-flag", _api() + _api().replace("iris", "other"), ["2 APIs", "--api NAME"]),
    ("unknown-predictor-key", _api(modle_path="x"), [f"{P}.modle_path: unknown key", "did you mean 'model_path'"]),
    ("unknown-api-key", _api().replace("  kind:", "  knd:"), ["[0].knd: unknown key", "did you mean 'kind'"]),
    ("unknown-path-entry-key", _api(model_path=None, models=_paths({"name": "a", "model_path": "m", "signture_key": 1})),
     [f"{P}.models.paths[0].signture_key: unknown key", "did you mean 'signature_key'"]),
    ("predictor-not-mapping", "- name: iris\n  predictor: onnx\n", [f"{P}: required mapping"]),
    ("bad-api-name", _api().replace("name: iris", "name: Iris_API"), ["[0].name: 'Iris_API' is not valid"]),
    ("bad-kind", _api().replace("kind: RealtimeAPI", "kind: BatchAPI"), ["[0].kind: 'BatchAPI' is not supported"]),
    ("bad-type", _api(type="pytorch"), [f"{P}.type: must be one of python, tensorflow, onnx", "'pytorch'"]),
    ("processes-not-int", _api(processes_per_replica="two"), [f"{P}.processes_per_replica: must be an integer", "'two'"]),
    ("processes-over-100", _api(processes_per_replica=101), [f"{P}.processes_per_replica: must be between 1 and 100"]),
    ("threads-zero", _api(threads_per_process=0), [f"{P}.threads_per_process: must be >= 1"]),
    ("threads-bool", _api(threads_per_process=True), [f"{P}.threads_per_process: must be an integer", "True"]),
    ("config-not-mapping", _api(config=["a", "b"]), [f"{P}.config: must be a mapping", "list"]),
    ("env-not-mapping", _api(env="A=1"), [f"{P}.env: must be a mapping"]),
    ("predictor-path-missing", _api(path="nothere.py"), [f"{P}.path: 'nothere.py' does not exist"]),
    ("predictor-path-not-py", _api(path="predictor.txt"), [f"{P}.path: 'predictor.txt' must be a .py file"]),
    ("predictor-path-absent", _api(path=None), [f"{P}.path: required"]),
    ("onnx-without-models", _api(model_path=None), [f"{P}: the onnx predictor needs models"]),
    ("model-path-and-models", _api(models=_paths({"name": "a", "model_path": "m"})),
     [f"{P}: set either model_path or models"]),
    ("paths-and-dir", _api(model_path=None, models={**_paths({"name": "a", "model_path": "m"}), "dir": "models"}),
     [f"{P}.models: set exactly one of paths"]),
    ("paths-empty", _api(model_path=None, models={"paths": []}), [f"{P}.models.paths: must be a non-empty list"]),
    ("path-entry-not-mapping", _api(model_path=None, models={"paths": ["models/a"]}),
     [f"{P}.models.paths[0]: must be a mapping"]),
    ("path-entry-no-model-path", _api(model_path=None, models=_paths({"name": "a"})),
     [f"{P}.models.paths[0].model_path: required"]),
    ("dir-not-a-path", _api(model_path=None, models={"dir": 7}), [f"{P}.models.dir: must be an s3://"]),
    ("s3-dotdot-prefix", _api(model_path="s3://bucket/models/../secrets/"), [f"{P}.model_path:", "contains '..'"]),
    ("s3-no-bucket", _api(model_path="s3:///models/"), [f"{P}.model_path:", "has no bucket"]),
    ("unsupported-scheme", _api(model_path="gs://bucket/models/"), [f"{P}.model_path:", "unsupported scheme"]),
    ("signature-key-on-onnx", _api(signature_key="serving_default"), [f"{P}.signature_key: only the tensorflow"]),
    ("caching-with-2-processes", _api(model_path=None, processes_per_replica=2,
                                      models={**_paths({"name": "a", "model_path": "m"}), "cache_size": 1,
                                              "disk_cache_size": 2}),
     [f"{P}.models.cache_size: model caching needs processes_per_replica: 1 (got 2)"]),
    ("cache-size-without-disk", _api(model_path=None, models={**_paths({"name": "a", "model_path": "m"}),
                                                               "cache_size": 1}),
     [f"{P}.models.disk_cache_size:", "add disk_cache_size"]),
    ("cache-over-disk", _api(model_path=None, models={**_paths({"name": "a", "model_path": "m"}), "cache_size": 3,
                                                       "disk_cache_size": 2}),
     [f"{P}.models.disk_cache_size: must be >= cache_size"]),
    ("duplicate-model-names", _api(model_path=None, models=_paths({"name": "a", "model_path": "m1"},
                                                                  {"name": "a", "model_path": "m2"})),
     [f"{P}.models.paths[1].name: model name 'a' is used twice"]),
] + [
    (f"model-name-{label}", _api(model_path=None, models=_paths({"name": name, "model_path": "m"})),
     [f"{P}.models.paths[0].name:", repr(name), "not a valid model name"])
    for label, name in [("dotdot-slash", "../x"), ("slash", "a/b"), ("absolute", "/etc/passwd"), ("dotdot", ".."),
                        ("space", "odd name"), ("percent-slash", "a%2Fb"), ("newline", "x\n"), ("unicode", "modèle"),
                        ("empty", ""), ("dot", "a.b"), ("integer", 7)]
]


@pytest.fixture
def spec_dir(tmp_path):
    (tmp_path / "predictor.py").write_text(textwrap.dedent(GOOD_PREDICTORS))
    (tmp_path / "predictor.txt").write_text("not python")
    return tmp_path


def validate_in_process(spec: Path, monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """`replica validate SPEC` as the CLI runs it (supervisor.cli.main), without re-configuring pytest's logging."""
    from supervisor import cli

    monkeypatch.setattr("replica.logs.configure_logging", lambda *a, **k: None)
    code = cli.main(["validate", str(spec), *args])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize("text, fragments", [c[1:] for c in SPEC_CASES], ids=[c[0] for c in SPEC_CASES])
def test_bad_spec_exits_2_naming_the_key(spec_dir, monkeypatch, capsys, text, fragments):
    spec = spec_dir / "api.yaml"
    spec.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, output = validate_in_process(spec, monkeypatch, capsys)
    assert code == 2, output
    assert output.startswith("error: invalid API spec"), output
    has_all(output, *fragments)
    assert_no_traceback(output)


@pytest.mark.parametrize("target", ["missing", "directory"])
def test_unreadable_spec_exits_2(spec_dir, monkeypatch, capsys, target):
    spec = spec_dir / "nothere.yaml" if target == "missing" else spec_dir
    code, output = validate_in_process(spec, monkeypatch, capsys)
    assert code == 2, output
    has_all(output, "error: invalid API spec", "does not exist" if target == "missing" else "cannot read the spec file")
    assert_no_traceback(output)


# ==========================================================================
# 2. predictor files: refused before serving, naming the class, method or argument
# ==========================================================================

PREDICTOR_CASES = [
    ("syntax-error", "onnx", "class ONNXPredictor:\n    def __init__(self, onnx_client, config)\n        pass\n",
     ["predictor.path: predictor.py:2: syntax error"]),
    ("not-utf8", "onnx", b"class ONNXPredictor:\n    x = '\xff\xfe'\n", ["predictor.path: predictor.py:", "syntax error"]),
    ("null-bytes", "onnx", b"class ONNXPredictor:\n    pass\x00\n", ["predictor.path: predictor.py", "null bytes"]),
    ("empty-file", "onnx", "", ["predictor.py defines no class ONNXPredictor"]),
    ("missing-class", "onnx", "class OnnxPredictor:\n    pass\n", ["predictor.py defines no class ONNXPredictor"]),
    ("wrong-class-for-type", "tensorflow", GOOD_PREDICTORS, ["predictor.py defines no class TensorFlowPredictor"]),
    ("init-without-client", "onnx", """
        class ONNXPredictor:
            def __init__(self, config):
                pass

            def predict(self, payload):
                return payload
     """, ["ONNXPredictor.__init__ must take a 'onnx_client' argument"]),
    ("init-unknown-arg", "onnx", """
        class ONNXPredictor:
            def __init__(self, onnx_client, config, gpu):
                pass

            def predict(self, payload):
                return payload
     """, ["ONNXPredictor.__init__ has an unexpected argument 'gpu'"]),
    ("predict-unknown-arg", "onnx", """
        class ONNXPredictor:
            def __init__(self, onnx_client, config):
                pass

            def predict(self, payload, request):
                return payload
     """, ["ONNXPredictor.predict has an unexpected argument 'request'", "payload, query_params, headers"]),
    ("predict-missing", "onnx", """
        class ONNXPredictor:
            def __init__(self, onnx_client, config):
                pass
     """, ["ONNXPredictor.predict is missing"]),
    ("load-model-wrong-signature", "python", """
        class PythonPredictor:
            def __init__(self, config, python_client):
                pass

            def load_model(self, path, name):
                return path

            def predict(self, payload):
                return payload
     """, ["PythonPredictor.load_model must be load_model(self, model_path), got (self, path, name)"]),
    ("post-predict-unknown-arg", "onnx", """
        class ONNXPredictor:
            def __init__(self, onnx_client, config):
                pass

            def predict(self, payload):
                return payload

            def post_predict(self, result):
                pass
     """, ["ONNXPredictor.post_predict has an unexpected argument 'result'"]),
]


@pytest.mark.parametrize("ptype, source, fragments", [c[1:] for c in PREDICTOR_CASES],
                         ids=[c[0] for c in PREDICTOR_CASES])
def test_bad_predictor_file_exits_2_naming_the_problem(tmp_path, monkeypatch, capsys, ptype, source, fragments):
    predictor = tmp_path / "predictor.py"
    if isinstance(source, bytes):
        predictor.write_bytes(source)
    else:
        predictor.write_text(textwrap.dedent(source).lstrip())
    spec = write_spec(tmp_path, f"""
        - name: iris
          predictor:
            type: {ptype}
            path: predictor.py
            model_path: models/iris
    """)
    code, output = validate_in_process(spec, monkeypatch, capsys)
    assert code == 2, output
    has_all(output, "error: invalid API spec", *fragments)
    assert_no_traceback(output)


def test_real_cli_validate_exits_2_and_names_each_problem(tmp_path):
    """The installed `replica validate` in its own process: every problem at once, each with its key path."""
    (tmp_path / "predictor.py").write_text(textwrap.dedent(GOOD_PREDICTORS))
    spec = tmp_path / "api.yaml"
    spec.write_text(_api(model_path=None, processes_per_replica=3, threads_per_procses=2,
                         models={**_paths({"name": "../x", "model_path": "m"}), "cache_size": 1,
                                 "disk_cache_size": 1}))
    proc = subprocess.run([sys.executable, "-m", "supervisor.cli", "validate", str(spec)], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 2, proc.stderr
    has_all(proc.stderr, f"{P}.threads_per_procses: unknown key", "did you mean 'threads_per_process'",
            f"{P}.models.paths[0].name: '../x'", f"{P}.models.cache_size: model caching needs processes_per_replica: 1")
    assert_no_traceback(proc.stderr)


def test_real_cli_serve_with_a_bad_spec_exits_2_before_starting_anything(tmp_path):
    (tmp_path / "predictor.py").write_text(textwrap.dedent(GOOD_PREDICTORS))
    spec = tmp_path / "api.yaml"
    spec.write_text(_api(model_path=None, models=_paths({"name": "a/b", "model_path": "m"})))
    proc = subprocess.run([sys.executable, "-m", "supervisor.cli", "serve", str(spec), "--port", "1",
                           "--state-dir", str(tmp_path / "state")], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2, proc.stderr
    has_all(proc.stderr, f"{P}.models.paths[0].name: 'a/b' is not a valid model name")
    assert_no_traceback(proc.stderr)
    assert not (tmp_path / "state").exists()


def test_validate_reports_every_broken_layout_and_exits_1(tmp_path, monkeypatch, capsys):
    """A valid spec whose models are broken upstream: `replica validate` lists every model, exits 1."""
    (tmp_path / "predictor.py").write_text(textwrap.dedent(GOOD_PREDICTORS))
    up = tmp_path / "up"
    write_onnx_linear(up / "iris" / "1" / "model.onnx", IRIS_WEIGHTS, IRIS_BIAS)
    for rel in ("nonint/v1/model.onnx", "twoonnx/1/a.onnx", "twoonnx/1/b.onnx", "bad name/1/model.onnx"):
        (up / rel).parent.mkdir(parents=True, exist_ok=True)
        (up / rel).write_bytes(b"onnx")
    spec = tmp_path / "api.yaml"
    spec.write_text(_api(model_path=None, models={"dir": "up"}))
    code, output = validate_in_process(spec, monkeypatch, capsys)
    assert code == 1, output
    has_all(output, "model iris version 1: 1 file(s), ok",
            "model nonint version 1: 1 file(s), error:", "version folders must be named by integers",
            "model twoonnx version 1: 2 file(s), error: an ONNX model needs exactly one .onnx file",
            "model bad name: error: unsafe model name 'bad name'")
    assert_no_traceback(output)


STARTUP_CASES = [
    ("exception-in-init", """
        class PythonPredictor:
            def __init__(self, config):
                raise ValueError("config key 'labels' is missing")

            def predict(self, payload):
                return payload
     """, ["ValueError", "config key 'labels' is missing", "predictor.py"]),
    ("import-error", """
        import not_a_module_anyone_has

        class PythonPredictor:
            def __init__(self, config):
                pass

            def predict(self, payload):
                return payload
     """, ["ModuleNotFoundError", "not_a_module_anyone_has", "predictor.py"]),
]


@pytest.mark.parametrize("source, fragments", [c[1:] for c in STARTUP_CASES], ids=[c[0] for c in STARTUP_CASES])
def test_predictor_that_fails_in_the_worker_stops_startup(tmp_path, replica, source, fragments):
    """What only running the class shows (an exception in __init__ or at import): `replica serve` exits non-zero
    and the log names the exception and the user's file."""
    spec = write_api(tmp_path, source, type="python")
    r = replica(spec, wait=False)
    assert r.wait_exit(60) != 0
    has_all(r.log(), *fragments)


# ==========================================================================
# 3. the ONNX replica: good and broken models in one S3 bucket (models.dir)
# ==========================================================================

ONNX_PREDICTOR = """
class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client

    def predict(self, payload, query_params):
        outputs = self.client.predict(payload, query_params.get("model", "iris"), query_params.get("version", "latest"))
        return {"outputs": outputs}
"""


def write_onnx_pair(path: Path) -> Path:
    """A two-input model: sum = a + b, a and b float32 [batch, 2]."""
    import onnx
    from onnx import TensorProto, helper

    from scripts.model_factory import ONNX_IR_VERSION, ONNX_OPSET

    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"])], "pair",
        inputs=[helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 2]) for n in ("a", "b")],
        outputs=[helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = ONNX_IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


GOOD_ONNX_NAMES = ("iris", "pair", "upgrade", "overwrite", "emptyver")


class OnnxBench:
    """The running replica, its bucket and the model bytes, for the tests that change models upstream."""

    def __init__(self, r, client, bucket, folder, good: bytes, good_v2: bytes):
        self.r, self.client, self.bucket, self.folder = r, client, bucket, folder
        self.good, self.good_v2 = good, good_v2

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key="models/" + key, Body=body)


@pytest.fixture(scope="module")
def onnx_bench(s3, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-input-onnx")
    good = write_onnx_linear(folder / "build" / "iris.onnx", IRIS_WEIGHTS, IRIS_BIAS).read_bytes()
    good_v2 = write_onnx_linear(folder / "build" / "iris2.onnx", IRIS_WEIGHTS, IRIS_BIAS_V2).read_bytes()
    pair = write_onnx_pair(folder / "build" / "pair.onnx").read_bytes()
    objects = {
        "iris/1/model.onnx": good,
        "pair/1/model.onnx": pair,
        "upgrade/1/model.onnx": good,  # version 2, broken, arrives during a test
        "overwrite/1/model.onnx": good,  # overwritten with garbage during a test
        "emptyver/1/model.onnx": good, "emptyver/2/": b"",  # an empty version folder: ignored
        "truncated/1/model.onnx": good[: len(good) // 2],
        "garbage/1/model.onnx": b"this is not an ONNX model\n" * 20,
        "emptyfile/1/model.onnx": b"",
        "nonint/v1/model.onnx": good, "nonint/latest/model.onnx": good,
        "allempty/1/": b"", "allempty/2/": b"",
        "twoonnx/1/a.onnx": good, "twoonnx/1/b.onnx": good,
        "noonnx/1/readme.txt": b"the model is elsewhere",
        "clash/1": good, "clash/1/model.onnx": good,  # a file where a version folder is expected
        "nested/1/model.onnx": good, "nested/1/model.onnx/extra": b"x",  # a file that is also a folder
        "dupver/1/model.onnx": good, "dupver/01/model.onnx": good,
        "we ird/1/model.onnx": good, "a%2Fb/1/model.onnx": good, "modèle/1/model.onnx": good,
        "nl\nx/1/model.onnx": good, "tab\tx/1/model.onnx": good,
        "loose.onnx": good,  # a file beside the model folders: not a model
    }
    client = s3.client()
    bucket = f"bad-input-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key="models/" + key, Body=body)
    spec = write_api(folder, ONNX_PREDICTOR, type="onnx", name="bad-input",
                     models={"dir": f"s3://{bucket}/models/"})
    try:
        with serving(spec, folder / "state", env=s3.env, poll_interval=0.5,
                     extra_args=("--max-request-size", str(MAX_BODY))) as r:
            yield OnnxBench(r, client, bucket, folder, good, good_v2)
    finally:
        delete_bucket(client, bucket)


@pytest.fixture
def onnx_replica(onnx_bench):
    """The ONNX replica; after each test it must still serve its good models with the right numbers."""
    yield onnx_bench.r
    assert_onnx_serves(onnx_bench.r)


def assert_onnx_serves(r) -> None:
    resp = r.post("/?model=iris", json=FEATURES)
    assert resp.status_code == 200, resp.text
    scores, labels = resp.json()["outputs"]
    np.testing.assert_allclose(scores, SCORES, rtol=1e-5)
    assert labels == [0, 1, 2]
    resp = r.post("/?model=pair", json={"a": [[1, 2]], "b": [[10, 20]]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["outputs"] == [[[11.0, 22.0]]]


# -- model layouts and corrupt files: an error per model/version, 404 on request -------------------------------

LAYOUT_CASES = [
    # (model, fragments in GET /v1/models/NAME's errors, fragments in the POST's error)
    ("truncated", ["model.onnx", "INVALID_PROTOBUF"], ["version 1 is not available", "INVALID_PROTOBUF"]),
    ("garbage", ["INVALID_PROTOBUF"], ["version 1 is not available", "INVALID_PROTOBUF"]),
    ("emptyfile", ["model.onnx"], ["version 1 is not available"]),
    ("nonint", ["found: none", "version folders must be named by integers", "v1/model.onnx"],
     ["version folders must be named by integers"]),
    ("twoonnx", ["exactly one .onnx file", "a.onnx, b.onnx"], ["exactly one .onnx file"]),
    ("noonnx", ["exactly one .onnx file", "found: none"], ["found: none"]),
    ("clash", ["mixes integer version folders", "1 (a file)"], ["mixes integer version folders"]),
    ("nested", ["'model.onnx' is both a file and a folder"], ["both a file and a folder"]),
    ("dupver", ["name the same version 1"], ["name the same version 1"]),
    ("we ird", ["unsafe model name"], ["unsafe model name"]),
    ("a%2Fb", ["unsafe model name"], ["unsafe model name"]),
    ("modèle", ["unsafe model name"], ["unsafe model name"]),
    ("nl\nx", ["unsafe model name"], ["unsafe model name"]),
    ("tab\tx", ["unsafe model name"], ["unsafe model name"]),
]


@pytest.mark.parametrize("name, status_fragments, post_fragments", LAYOUT_CASES, ids=[c[0] for c in LAYOUT_CASES])
def test_broken_model_shows_its_error_and_answers_404(onnx_replica, name, status_fragments, post_fragments):
    wait_for(lambda: all(f in all_errors(model_status(onnx_replica, name)) for f in status_fragments), timeout=30,
             message=f"the error of {name!r}")
    status = model_status(onnx_replica, name)
    assert not any(row["memory"] for row in status["model_version_status"]), status
    listing = {m["name"]: m for m in onnx_replica.get("/v1/models").json()["models"]}
    assert all_errors(listing[name]) == all_errors(status)
    error = error_of(onnx_replica.post("/", params={"model": name}, json=FEATURES), 404)
    has_all(error, f"model '{name}'", *post_fragments)


def test_model_of_folder_markers_only_is_not_a_model(onnx_replica):
    """`allempty/1/` and `allempty/2/` are S3 folder markers, which are ignored: there is no such model."""
    has_all(error_of(onnx_replica.get("/v1/models/allempty"), 404), "model 'allempty' not found")
    has_all(error_of(onnx_replica.post("/?model=allempty", json=FEATURES), 404), "model 'allempty' not found")
    assert "allempty" not in {m["name"] for m in onnx_replica.get("/v1/models").json()["models"]}


def test_broken_version_is_not_loaded_again_on_every_request(onnx_bench, onnx_replica):
    """A copy that failed to load answers from its recorded failure: requests do not re-read a broken file."""
    def attempts() -> int:
        return onnx_replica.log().count("loading model garbage version 1")

    wait_for(lambda: attempts() >= 1, timeout=30, message="the first load attempt")
    before = attempts()
    for _ in range(5):
        has_all(error_of(onnx_replica.post("/?model=garbage", json=FEATURES), 404), "INVALID_PROTOBUF")
    assert attempts() - before <= 1, attempts() - before  # at most the background retry


def test_empty_version_folder_is_ignored(onnx_replica):
    status = model_status(onnx_replica, "emptyver")
    assert [row["version"] for row in status["model_version_status"]] == ["1"], status
    assert all_errors(status) == ""
    error = error_of(onnx_replica.post("/?model=emptyver&version=2", json=FEATURES), 404)
    has_all(error, "model 'emptyver' has no version 2", "versions: 1")
    resp = onnx_replica.post("/?model=emptyver", json=FEATURES)
    assert resp.status_code == 200, resp.text


def test_nothing_of_a_broken_or_unsafe_model_reaches_the_disk(onnx_bench):
    state = onnx_bench.folder / "state"
    on_disk = {p.name for p in (state / "models").iterdir() if p.is_dir()}
    assert on_disk <= set(GOOD_ONNX_NAMES) | {"truncated", "garbage", "emptyfile"}, on_disk
    assert all(MODEL_NAME_RE.match(n) for n in on_disk)
    # nothing outside the state folder besides what the test itself wrote
    outside = [p for p in files_under(onnx_bench.folder) if state not in p.parents]
    assert {p.relative_to(onnx_bench.folder).as_posix() for p in outside} <= {
        "api.yaml", "predictor.py", "build/iris.onnx", "build/iris2.onnx", "build/pair.onnx",
    } | {p.relative_to(onnx_bench.folder).as_posix() for p in outside if p.name.startswith("replica-")}
    assert_onnx_serves(onnx_bench.r)


def test_broken_new_version_never_replaces_the_good_one(onnx_bench, onnx_replica):
    onnx_bench.put("upgrade/2/model.onnx", onnx_bench.good[:100])
    status = wait_for(lambda: (s := model_status(onnx_replica, "upgrade")) and any(
        row["version"] == "2" and row["error"] for row in s["model_version_status"]) and s,
        timeout=30, message="version 2's load error")
    rows = {row["version"]: row for row in status["model_version_status"]}
    assert rows["1"]["state"] == "AVAILABLE" and rows["1"]["memory"] and not rows["1"]["error"], rows
    assert not rows["2"]["memory"] and "INVALID_PROTOBUF" in rows["2"]["error"], rows
    for _ in range(3):  # "latest" stays on version 1, with version 1's numbers
        resp = onnx_replica.post("/?model=upgrade", json=FEATURES)
        assert resp.status_code == 200, resp.text
        np.testing.assert_allclose(resp.json()["outputs"][0], SCORES, rtol=1e-5)
    error = error_of(onnx_replica.post("/?model=upgrade&version=2", json=FEATURES), 404)
    has_all(error, "model 'upgrade' version 2 is not available", "INVALID_PROTOBUF")


def test_broken_copy_of_a_served_version_keeps_the_good_copy_serving(onnx_bench, onnx_replica):
    onnx_bench.put("overwrite/1/model.onnx", b"garbage that replaced a good model")
    status = wait_for(lambda: (s := model_status(onnx_replica, "overwrite")) and all_errors(s) and s,
                      timeout=30, message="the overwrite's load error")
    (row,) = status["model_version_status"]
    assert row["state"] == "AVAILABLE" and row["memory"], row
    assert "INVALID_PROTOBUF" in row["error"], row
    resp = onnx_replica.post("/?model=overwrite", json=FEATURES)
    assert resp.status_code == 200, resp.text
    np.testing.assert_allclose(resp.json()["outputs"][0], SCORES, rtol=1e-5)
    # a good copy upstream again (a new one: version 2's weights) is picked up
    onnx_bench.put("overwrite/1/model.onnx", onnx_bench.good_v2)

    def fixed():
        body = onnx_replica.post("/?model=overwrite", json=FEATURES).json()
        return np.allclose(body["outputs"][0], SCORES_V2, rtol=1e-5) and not all_errors(
            model_status(onnx_replica, "overwrite"))

    wait_for(fixed, timeout=30, message="the fixed copy serving")


# -- payloads --------------------------------------------------------------------------------------------------

JSON = {"Content-Type": "application/json"}
PAYLOAD_CASES = [
    # (id, query, body bytes, headers, status, fragments)
    ("invalid-json", "model=iris", b"{not json", JSON, 400, ["malformed JSON body"]),
    ("empty-body", "model=iris", b"", JSON, 400, ["empty body"]),
    ("not-utf8-json", "model=iris", b"\xff\xfe[1, 2]", JSON, 400, ["malformed JSON body"]),
    ("json-nested-too-deep", "model=iris", b"[" * 20_000 + b"]" * 20_000, JSON, 400, ["JSON body", "nested"]),
    ("json-string", "model=iris", b'"hello"', JSON, 400, ["model 'iris' input 'input' expects float32"]),
    ("json-null", "model=iris", b"null", JSON, 400, ["model 'iris' input 'input'"]),
    ("json-object-wrong-key", "model=iris", json.dumps({"features": FEATURES}).encode(), JSON, 400,
     ["model 'iris' input is missing key(s) input"]),
    ("list-for-two-inputs", "model=pair", b"[[1, 2]]", JSON, 400, ["model 'pair' has 2 inputs", "a, b"]),
    ("wrong-width", "model=iris", b"[[1, 2, 3]]", JSON, 400,
     ["model 'iris' input 'input' expects shape ['batch', 4], got [1, 3]"]),
    ("wrong-rank", "model=iris", json.dumps([FEATURES]).encode(), JSON, 400,
     ["model 'iris' input 'input' expects 2 dimensions"]),
    ("too-many-dimensions", "model=iris", b"[" * 70 + b"1" + b"]" * 70, JSON, 400, ["model 'iris' input 'input'"]),
    ("wrong-dtype", "model=iris", b'[["a", "b", "c", "d"]]', JSON, 400, ["model 'iris' input 'input' expects float32"]),
    ("ragged", "model=iris", b"[[1, 2, 3, 4], [1]]", JSON, 400, ["model 'iris' input 'input' expects float32"]),
    ("wrong-dtype-second-input", "model=pair", b'{"a": [[1, 2]], "b": [["x", "y"]]}', JSON, 400,
     ["model 'pair' input 'b' expects float32"]),
    ("wrong-shape-second-input", "model=pair", b'{"a": [[1, 2]], "b": [[1, 2, 3]]}', JSON, 400,
     ["model 'pair' input 'b' expects shape"]),
    ("body-over-max-request-size", "model=iris", b"[" + b"1.0, " * (MAX_BODY // 4) + b"1.0]", JSON, 413,
     ["over the limit", str(MAX_BODY), "--max-request-size"]),
    ("body-far-over-max-request-size", "model=iris", b"[" + b"1.0, " * (1 << 20) + b"1.0]", JSON, 413,
     ["over the limit", str(MAX_BODY), "--max-request-size"]),
    ("text-plain", "model=iris", json.dumps(FEATURES).encode(), {"Content-Type": "text/plain"}, 400,
     ["model 'iris' input 'input' expects float32"]),
    ("text-plain-not-utf8", "model=iris", b"\xff\xfe\xfa", {"Content-Type": "text/plain; charset=utf-8"}, 400,
     ["text body is not valid utf-8"]),
    ("text-plain-unknown-charset", "model=iris", b"abc", {"Content-Type": "text/plain; charset=klingon"}, 400,
     ["text body is not valid klingon"]),
    ("octet-stream", "model=iris", b"\x00\x01\x02\x03", {"Content-Type": "application/octet-stream"}, 400,
     ["model 'iris' input 'input'"]),
    ("no-content-type", "model=iris", json.dumps(FEATURES).encode(), {}, 400, ["model 'iris' input 'input'"]),
    ("form", "model=iris", b"features=1", {"Content-Type": "application/x-www-form-urlencoded"}, 400,
     ["model 'iris' input is missing key(s) input"]),
    ("unknown-model", "model=tulip", json.dumps(FEATURES).encode(), JSON, 404, ["model 'tulip' not found"]),
    ("model-name-path", "model=../../etc/passwd", json.dumps(FEATURES).encode(), JSON, 404,
     ["model '../../etc/passwd' not found"]),
    ("unknown-version", "model=iris&version=7", json.dumps(FEATURES).encode(), JSON, 404,
     ["model 'iris' has no version 7"]),
    ("huge-version", "model=iris&version=" + "9" * 40, json.dumps(FEATURES).encode(), JSON, 404,
     ["model 'iris' has no version " + "9" * 40]),
] + [
    (f"bad-version-{label}", "model=iris&version=" + urllib.parse.quote(v), json.dumps(FEATURES).encode(), JSON, 400,
     ["invalid model version", repr(v)])
    for label, v in [("word", "abc"), ("negative", "-1"), ("decimal", "1.5"), ("prefixed", "v2"), ("empty", ""),
                     ("exponent", "1e3"), ("superscript", "²"), ("arabic-digit", "١"), ("space", " ")]
]


@pytest.mark.parametrize("query, body, headers, status, fragments", [c[1:] for c in PAYLOAD_CASES],
                         ids=[c[0] for c in PAYLOAD_CASES])
def test_bad_payload(onnx_replica, query, body, headers, status, fragments):
    resp = onnx_replica.post("/?" + query, data=body, headers=headers)
    error = error_of(resp, status)
    has_all(error, *fragments)


def test_chunked_body_over_max_request_size_is_413(onnx_replica):
    """No Content-Length to check up front: the limit holds while the body streams in."""
    def chunks():
        yield b"["
        for _ in range(64):
            yield b"1.0, " * 1024
        yield b"1.0]"

    error = error_of(onnx_replica.post("/?model=iris", data=chunks(), headers=JSON), 413)
    has_all(error, "over the limit", str(MAX_BODY))


def test_chunked_body_under_the_limit_is_served(onnx_replica):
    def chunks():
        yield json.dumps(FEATURES[:1]).encode()

    resp = onnx_replica.post("/?model=iris", data=chunks(), headers=JSON)
    assert resp.status_code == 200, resp.text
    assert resp.json()["outputs"][1] == [0]


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8"])
def test_body_of_exactly_max_request_size_is_served(onnx_replica, content_type):
    """The limit is inclusive, and the whole body is read: trailing JSON whitespace pads it to the limit."""
    doc = json.dumps(FEATURES[:1]).encode()
    body = doc + b" " * (MAX_BODY - len(doc))
    assert len(body) == MAX_BODY
    resp = onnx_replica.post("/?model=iris", data=body, headers={"Content-Type": content_type})
    assert resp.status_code == 200, resp.text
    assert resp.json()["outputs"][1] == [0]
    error_of(onnx_replica.post("/?model=iris", data=body + b" ", headers={"Content-Type": content_type}), 413)


# -- names in URLs -------------------------------------------------------------------------------------------

URL_CASES = [
    # (id, method, raw path, status, fragments)
    ("dotdot-name", "GET", "/v1/models/..", 404, ["model '..' not found"]),
    ("dotdot-path", "GET", "/v1/models/../..", 404, ["no route /v1/models/../.."]),
    ("dotdot-escape", "GET", "/v1/models/../../../etc/passwd", 404, ["no route"]),
    ("percent-slash", "GET", "/v1/models/a%2Fb", 404, ["no route"]),
    ("percent-dotdot", "GET", "/v1/models/%2E%2E%2F%2E%2E%2Fetc", 404, ["no route"]),
    ("percent-nul", "GET", "/v1/models/%00", 404, ["not found"]),
    ("long-name", "GET", "/v1/models/" + "m" * 3000, 404, ["model '" + "m" * 3000 + "' not found"]),
    ("odd-name", "GET", "/v1/models/" + urllib.parse.quote("<script>"), 404, ["model '<script>' not found"]),
    ("unknown-version-route", "GET", "/v1/models/iris/versions/9", 404, ["model 'iris' has no version 9"]),
    ("bad-version-route", "GET", "/v1/models/iris/versions/abc", 400, ["invalid model version 'abc'"]),
    ("superscript-version-route", "GET", "/v1/models/iris/versions/" + urllib.parse.quote("²"), 400,
     ["invalid model version '²'"]),
    ("huge-version-route", "GET", "/v1/models/iris/versions/" + "9" * 40, 404, ["has no version"]),
    ("unknown-route", "GET", "/v1/modelz", 404, ["no route /v1/modelz"]),
    ("wrong-method", "DELETE", "/v1/models/iris", 405, ["DELETE is not allowed on /v1/models/iris"]),
    ("post-unknown-path", "POST", "/predict/../../etc", 404, ["no route"]),
]


@pytest.mark.parametrize("method, path, status, fragments", [c[1:] for c in URL_CASES], ids=[c[0] for c in URL_CASES])
def test_bad_names_in_urls(onnx_replica, method, path, status, fragments):
    got, ctype, body = raw_request(onnx_replica, method, path)
    assert got == status, (got, body[:500])
    assert ctype.startswith("application/json"), (ctype, body[:500])
    has_all(json.loads(body)["error"], *fragments)
    assert_no_traceback(body)


def test_name_longer_than_the_request_line_limit_is_refused(onnx_replica):
    got, ctype, body = raw_request(onnx_replica, "GET", "/v1/models/" + "m" * 10_000)
    assert got in (400, 414), (got, body[:500])
    assert "too large" in body.lower() or "too long" in body.lower(), body[:500]
    assert_no_traceback(body)


# ==========================================================================
# 4. keys that could escape the state directory: the real watcher, a stub upstream
# ==========================================================================

class StubUpstream:
    """An upstream that lists exactly the keys given (S3 allows '..' and '.' in keys; SeaweedFS refuses them)."""

    def __init__(self, url: str, objects: dict[str, bytes]):
        self.url = url
        self.objects = objects
        self.fetched: list[str] = []

    def list(self) -> list[ObjectInfo]:
        return [ObjectInfo(k, len(v), hashlib.md5(v).hexdigest()) for k, v in self.objects.items()]

    def fetch(self, obj: ObjectInfo, dest: Path, progress=None) -> Written:
        self.fetched.append(obj.key)
        data = self.objects[obj.key]
        dest.write_bytes(data)
        return Written(len(data), hashlib.sha256(data).hexdigest())


ESCAPE_OBJECTS = {
    "good/1/model.bin": b"good",
    "esc/1/model.bin": b"esc one",
    "esc/2/model.bin": b"esc two", "esc/2/../../../../evil-dotdot.bin": b"evil",
    "abs//tmp/evil-abs.bin": b"evil",
    "../evil-parent/1/model.bin": b"evil",
    "./evil-dot/1/model.bin": b"evil",
    "dot/1/./evil-dot.bin": b"evil",
    "back/1/a\\..\\..\\evil-back.bin": b"evil",
    "dbl/1//evil-dbl.bin": b"evil",
    "nul/1/evil\x00.bin": b"evil",
    "rootdotdot/../evil-root.bin": b"evil",
}
ESCAPE_CASES = [
    # (model, version or None for the model's own error, fragments)
    ("esc", 2, ["unsafe file key", "'../../../../evil-dotdot.bin'"]),
    ("abs", None, ["unsafe file key", "'/tmp/evil-abs.bin'"]),
    ("..", None, ["unsafe model name '..'"]),
    (".", None, ["unsafe model name '.'"]),
    ("dot", 1, ["unsafe file key", "'./evil-dot.bin'"]),
    ("back", 1, ["unsafe file key", "evil-back.bin"]),
    ("dbl", 1, ["unsafe file key", "'/evil-dbl.bin'"]),
    ("nul", 1, ["unsafe file key", "evil\\x00.bin"]),
    ("rootdotdot", None, ["unsafe file key", "'../evil-root.bin'"]),
]


@pytest.fixture(scope="module")
def escape_sync(tmp_path_factory):
    """One pass of the real catalogue + watcher over a stub upstream; returns (tmp folder, state, the status
    `GET /v1/models` serves from it, the stub)."""
    from replica.disktree import DiskTree
    from replica.spec import load_spec
    from supervisor.catalogue import Catalogue
    from supervisor.watcher import Watcher
    from workers.registry import ModelRegistry

    folder = tmp_path_factory.mktemp("bad-input-escape")
    (folder / "state").mkdir()
    spec = write_api(folder, GOOD_PREDICTORS, type="python", models={"dir": "up"})
    predictor = load_spec(spec).predictor
    stub = StubUpstream(predictor.sources[0].url, ESCAPE_OBJECTS)
    watcher = Watcher(DiskTree(folder / "state" / "tree"), Catalogue(predictor, [(predictor.sources[0], stub)]),
                      poll_interval=0.01)
    watcher.start()
    sync(watcher)
    sync(watcher)  # a second pass: still nothing fetched, nothing written
    registry = ModelRegistry(DiskTree(folder / "state" / "tree"), load=lambda *a: None)
    status = {m["name"]: m for m in registry.status()}
    return folder, folder / "state", status, stub


@pytest.mark.parametrize("name, version, fragments", ESCAPE_CASES, ids=[c[0] for c in ESCAPE_CASES])
def test_unsafe_key_is_refused_with_an_error_and_writes_nothing(escape_sync, name, version, fragments):
    folder, state, status, stub = escape_sync
    model = status[name]
    if version is None:
        error = model["error"]
    else:
        (row,) = [row for row in model["model_version_status"] if row["version"] == str(version)]
        assert not row["disk"] and not row["memory"], row
        error = row["error"]
    assert error, model
    has_all(error, *fragments)
    # only the safe versions were fetched, and nothing exists outside the state folder but the spec's files
    assert sorted(stub.fetched) == ["esc/1/model.bin", "good/1/model.bin"], stub.fetched
    outside = {p.relative_to(folder).as_posix() for p in files_under(folder) if state not in p.parents}
    assert outside == {"api.yaml", "predictor.py"}, outside
    assert not Path("/tmp/evil-abs.bin").exists()
    tree = state / "tree" / "models"
    assert {p.relative_to(tree).as_posix() for p in files_under(tree)} == {
        "good/1/model.bin", "good/1.manifest.json", "esc/1/model.bin", "esc/1.manifest.json"}
    assert (tree / "good" / "1" / "model.bin").read_bytes() == b"good"


# ==========================================================================
# 5. a Python predictor whose load_model raises
# ==========================================================================

PYTHON_PREDICTOR = json_predictor("""
def predict(self, payload, query_params):
    model = self.client.get_model(query_params.get("model", "iris"), query_params.get("version", "latest"))
    return {"scores": np.asarray(payload["x"]) @ model["weights"] + model["bias"]}
""", load="""
if "broken" in spec:
    raise ValueError("cannot read the weights: " + spec["broken"])
""" + LINEAR)


@pytest.fixture(scope="module")
def python_replica(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-input-python")
    models = folder / "models"
    write_python_linear(models / "iris" / "1", IRIS_WEIGHTS, IRIS_BIAS)
    (models / "boom" / "1").mkdir(parents=True)
    (models / "boom" / "1" / "model.json").write_text(json.dumps({"broken": "matrix 3x3 expected"}))
    write_python_linear(models / "upgrade" / "1", IRIS_WEIGHTS, IRIS_BIAS)
    (models / "upgrade" / "2").mkdir(parents=True)
    (models / "upgrade" / "2" / "model.json").write_text(json.dumps({"broken": "half uploaded"}))
    spec = write_api(folder, PYTHON_PREDICTOR, type="python", name="bad-python", models={"paths": [
        {"name": n, "model_path": f"models/{n}"} for n in ("iris", "boom", "upgrade")]})
    with serving(spec, folder / "state") as r:
        yield r
        resp = r.post("/?model=iris", json={"x": FEATURES})
        assert resp.status_code == 200, resp.text
        np.testing.assert_allclose(resp.json()["scores"], SCORES, rtol=1e-9)


def test_python_load_model_exception_is_the_models_error(python_replica):
    status = model_status(python_replica, "boom")
    (row,) = status["model_version_status"]
    assert row["state"] == "END" and not row["memory"], row
    has_all(row["error"], "ValueError", "cannot read the weights: matrix 3x3 expected")
    error = error_of(python_replica.post("/?model=boom", json={"x": FEATURES}), 404)
    has_all(error, "model 'boom' version 1 is not available", "ValueError: cannot read the weights")


def test_python_broken_new_version_keeps_the_old_one_as_latest(python_replica):
    rows = {row["version"]: row for row in model_status(python_replica, "upgrade")["model_version_status"]}
    assert rows["1"]["state"] == "AVAILABLE" and rows["2"]["state"] == "END", rows
    has_all(rows["2"]["error"], "ValueError", "half uploaded")
    resp = python_replica.post("/?model=upgrade", json={"x": FEATURES})
    assert resp.status_code == 200, resp.text
    np.testing.assert_allclose(resp.json()["scores"], SCORES, rtol=1e-9)
    error = error_of(python_replica.post("/?model=upgrade&version=2", json={"x": FEATURES}), 404)
    has_all(error, "model 'upgrade' version 2 is not available", "half uploaded")


# ==========================================================================
# 6. TensorFlow: a garbage saved_model.pb
# ==========================================================================

TF_PREDICTOR = """
class TensorFlowPredictor:
    def __init__(self, tensorflow_client, config):
        self.client = tensorflow_client

    def predict(self, payload, query_params):
        return self.client.predict(payload, query_params.get("model", "iris"), query_params.get("version", "latest"))
"""

_TF_BUILD = """
import sys
from pathlib import Path
from scripts.model_factory import IRIS_BIAS, IRIS_WEIGHTS, write_tf_linear
write_tf_linear(Path(sys.argv[1]), IRIS_WEIGHTS, IRIS_BIAS, extra_signature=False)
"""


def _garbage_saved_model(folder: Path) -> None:
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"\x08\x01garbage, not a SavedModel" * 10)
    (folder / "variables" / "variables.index").write_bytes(b"garbage index")
    (folder / "variables" / "variables.data-00000-of-00001").write_bytes(b"garbage data")


@pytest.fixture(scope="module")
def tf_replica(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-input-tf")
    models = folder / "models"
    # TensorFlow stays out of the test process (it would hang forked children): a child writes the SavedModel.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", _TF_BUILD, str(models / "iris" / "1")], check=True, env=env, cwd=REPO,
                   timeout=300)
    _garbage_saved_model(models / "garbage" / "1")
    shutil.copytree(models / "iris" / "1", models / "upgrade" / "1")
    _garbage_saved_model(models / "upgrade" / "2")
    spec = write_api(folder, TF_PREDICTOR, type="tensorflow", name="bad-tf", models={"paths": [
        {"name": n, "model_path": f"models/{n}"} for n in ("iris", "garbage", "upgrade")]})
    with serving(spec, folder / "state", extra_args=("--drain-timeout", "2")) as r:  # nothing in flight at the end
        yield r
        resp = r.post("/?model=iris", json={"x": FEATURES})
        assert resp.status_code == 200, resp.text
        np.testing.assert_allclose(resp.json()["scores"], SCORES.reshape(-1), rtol=1e-5)


@pytest.mark.tensorflow
def test_tf_garbage_saved_model_is_the_models_error(tf_replica):
    (row,) = model_status(tf_replica, "garbage")["model_version_status"]
    assert row["state"] == "END" and not row["memory"] and row["error"], row
    has_all(row["error"], "Cannot parse file", "saved_model.pb")
    error = error_of(tf_replica.post("/?model=garbage", json={"x": FEATURES}), 404)
    has_all(error, "model 'garbage' version 1 is not available")


@pytest.mark.tensorflow
def test_tf_broken_new_version_keeps_the_old_one_as_latest(tf_replica):
    rows = {row["version"]: row for row in model_status(tf_replica, "upgrade")["model_version_status"]}
    assert rows["1"]["state"] == "AVAILABLE" and rows["2"]["state"] == "END" and rows["2"]["error"], rows
    resp = tf_replica.post("/?model=upgrade", json={"x": FEATURES})
    assert resp.status_code == 200, resp.text
    np.testing.assert_allclose(resp.json()["scores"], SCORES.reshape(-1), rtol=1e-5)
    error_of(tf_replica.post("/?model=upgrade&version=2", json={"x": FEATURES}), 404)


@pytest.mark.tensorflow
@pytest.mark.parametrize("body, fragments", [
    ({"x": [[1, 2, 3]]}, ["model 'iris' input 'x' expects shape [None, 4], got [1, 3]"]),
    ({"x": [["a", "b", "c", "d"]]}, ["model 'iris' input 'x' expects float32"]),
    ({"y": FEATURES}, ["model 'iris' input is missing key(s) x"]),
], ids=["shape", "dtype", "missing-input"])
def test_tf_bad_payload_is_400_naming_the_input(tf_replica, body, fragments):
    has_all(error_of(tf_replica.post("/?model=iris", json=body), 400), *fragments)


def test_validate_into_a_pipe_closed_early_ends_without_a_traceback(tmp_path):
    import subprocess
    import sys

    models = tmp_path / "models"
    for i in range(3000):  # more output than a pipe holds, so writes go on after the reader has gone
        (models / f"model-{i:04d}").mkdir(parents=True)
        (models / f"model-{i:04d}" / "model.json").write_text("{}")
    (tmp_path / "predictor.py").write_text("class PythonPredictor:\n    def __init__(self, config, python_client):\n"
                                           "        pass\n\n    def load_model(self, model_path):\n"
                                           "        return 1\n\n    def predict(self, payload):\n        return 1\n")
    (tmp_path / "api.yaml").write_text(f"- name: api\n  kind: RealtimeAPI\n  predictor:\n    type: python\n"
                                       f"    path: predictor.py\n    models:\n      dir: {models}\n")
    cmd = f"{sys.executable} -m supervisor.cli validate {tmp_path / 'api.yaml'} | head -n 1"
    out = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("API api: python predictor, 3000 model(s)"), out.stdout
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr
    assert out.returncode == 141  # as a command ended by SIGPIPE, which pipefail reports


def test_validate_load_finds_a_model_file_that_does_not_load(tmp_path):
    import subprocess
    import sys

    from scripts.model_factory import write_onnx_linear

    models = tmp_path / "models"
    write_onnx_linear(models / "good" / "1" / "model.onnx", [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    (models / "broken" / "1").mkdir(parents=True)
    (models / "broken" / "1" / "model.onnx").write_bytes(b"not a protobuf at all")
    (tmp_path / "predictor.py").write_text("class ONNXPredictor:\n    def __init__(self, onnx_client, config):\n"
                                           "        self.client = onnx_client\n\n"
                                           "    def predict(self, payload):\n        return 1\n")
    (tmp_path / "api.yaml").write_text(f"- name: api\n  kind: RealtimeAPI\n  predictor:\n    type: onnx\n"
                                       f"    path: predictor.py\n    models:\n      dir: {models}\n")
    run = [sys.executable, "-m", "supervisor.cli", "validate", str(tmp_path / "api.yaml")]
    plain = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stdout + plain.stderr  # laid out right: validate alone passes it
    loaded = subprocess.run(run + ["--load"], capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 1, loaded.stdout + loaded.stderr
    assert "model good: version 1 loaded in" in loaded.stdout
    assert "model broken: version 1 failed to load:" in loaded.stdout
