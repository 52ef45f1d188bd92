"""Live reloading from S3 and local directories, with no failed request.

Every model here is the tiny linear classifier of scripts/model_factory.py with bias [TAG, 0, 0]; the
predictors below feed it zeros, so the first score *is* the tag and every answer says which copy of which
version served it. Each event (added, removed, restructured, updated in place) is timed from the moment the
upstream change is complete until every worker serves it.

Coverage chosen for 2 shared cores (a full type x processes x upstream product would take minutes):
  events:  onnx/S3 x {1, 3} processes, python/S3 x 1, tensorflow/S3 x 1, python/local directory x 1
           (all through `models.dir`, so "added" includes a new child prefix = a new model)
  plus:    a client that never pauses across 20 version changes and a model removal (onnx, 2 processes),
           an S3 outage, a half-uploaded TensorFlow version, a version that changes during its download
           (watcher level, S3 and local), restarts that re-use the disk tree, and the /v1/models shape.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
import yaml

from scripts.model_factory import IRIS_WEIGHTS, write_onnx_linear, write_python_linear
from tests.replica_proc import wait_for
from tests.helpers import paused, read_state, sync
from tests.s3server import delete_prefix, list_keys, upload_dir

POLL = 1.0
# Seconds a change may take on top of one poll interval (+10 % jitter) and the workers' 0.2 s tick:
# download plus load, with room for two busy shared cores. The measured values are printed (-s).
DOWNLOAD_AND_LOAD = {"onnx": 4.0, "python": 4.0, "tensorflow": 8.0}
REPO = Path(__file__).resolve().parent.parent


def event_bound(ptype: str, poll: float = POLL) -> float:
    return 1.1 * poll + 0.2 + DOWNLOAD_AND_LOAD[ptype]


# ==========================================================================
# predictors that answer {"tag": first score, "pid": worker pid}
# ==========================================================================

PREDICTORS = {
    "onnx": '''
        import os
        import numpy as np

        class ONNXPredictor:
            def __init__(self, onnx_client, config):
                self.client = onnx_client

            def predict(self, query_params):
                scores, _label = self.client.predict(np.zeros((1, 4), np.float32), query_params.get("model"),
                                                     query_params.get("version", "latest"))
                return {"tag": float(np.asarray(scores).reshape(-1)[0]), "pid": os.getpid()}
    ''',
    "tensorflow": '''
        import os
        import numpy as np

        class TensorFlowPredictor:
            def __init__(self, tensorflow_client, config):
                self.client = tensorflow_client

            def predict(self, query_params):
                out = self.client.predict({"x": np.zeros((1, 4), np.float32)}, query_params.get("model"),
                                          query_params.get("version", "latest"))
                return {"tag": float(np.asarray(out["scores"]).reshape(-1)[0]), "pid": os.getpid()}
    ''',
    "python": '''
        import json
        import os

        class PythonPredictor:
            def __init__(self, config, python_client):
                self.client = python_client

            def load_model(self, model_path):
                with open(os.path.join(model_path, "model.json")) as f:
                    return json.load(f)["bias"]

            def predict(self, query_params):
                bias = self.client.get_model(query_params.get("model"), query_params.get("version", "latest"))
                return {"tag": float(bias[0]), "pid": os.getpid()}
    ''',
}


def write_api(folder: Path, ptype: str, *, model_path: str | None = None, models_dir: str | None = None,
              paths: dict[str, str] | None = None, processes: int = 1, threads: int = 1) -> Path:
    """api.yaml plus predictor.py in `folder`; returns the spec's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "predictor.py").write_text(textwrap.dedent(PREDICTORS[ptype]))
    predictor = {"type": ptype, "path": "predictor.py", "processes_per_replica": processes,
                 "threads_per_process": threads}
    if model_path is not None:
        predictor["model_path"] = model_path
    elif models_dir is not None:
        predictor["models"] = {"dir": models_dir}
    else:
        predictor["models"] = {"paths": [{"name": n, "model_path": p} for n, p in paths.items()]}
    spec = folder / "api.yaml"
    spec.write_text(yaml.safe_dump([{"name": f"live-{ptype}", "kind": "RealtimeAPI", "predictor": predictor}]))
    return spec


# ==========================================================================
# models, built once per session
# ==========================================================================

TF_TAGS = (1, 2, 10, 11, 12, 13, 14, 20)

_TF_BUILD = '''
import sys
from pathlib import Path
from scripts.model_factory import IRIS_WEIGHTS, write_tf_linear
root = Path(sys.argv[1])
for tag in sys.argv[2:]:
    write_tf_linear(root / f"tensorflow-{tag}", IRIS_WEIGHTS, [float(tag), 0.0, 0.0], extra_signature=False)
'''


@pytest.fixture(scope="session")
def build(tmp_path_factory):
    """build(ptype, tag) -> a local folder holding one model version whose first score is `tag`."""
    root = tmp_path_factory.mktemp("live-models")
    built: dict[tuple[str, int], Path] = {}

    def _build(ptype: str, tag: int) -> Path:
        key = (ptype, tag)
        if key in built:
            return built[key]
        d = root / f"{ptype}-{tag}"
        if ptype == "onnx":
            write_onnx_linear(d / "model.onnx", IRIS_WEIGHTS, [float(tag), 0.0, 0.0])
        elif ptype == "python":
            write_python_linear(d, IRIS_WEIGHTS, [float(tag), 0.0, 0.0])
        elif ptype == "tensorflow":
            # TensorFlow stays out of the test process: every SavedModel is written by one child process.
            missing = [t for t in sorted(set(TF_TAGS) | {tag}) if not (root / f"tensorflow-{t}").exists()]
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
            subprocess.run([sys.executable, "-c", _TF_BUILD, str(root), *map(str, missing)], check=True, env=env,
                           cwd=REPO, timeout=300)
            for t in missing:
                built[("tensorflow", t)] = root / f"tensorflow-{t}"
        else:
            raise ValueError(ptype)
        built[key] = d
        return d

    return _build


# ==========================================================================
# upstream stores: S3 (SeaweedFS) and a local directory, one interface
# ==========================================================================

class S3Store:
    def __init__(self, client, bucket: str, prefix: str = "models/"):
        self.client, self.bucket, self.prefix = client, bucket, prefix
        self.url = f"s3://{bucket}/{prefix}"

    def put(self, rel: str, src: Path) -> None:
        """Upload every file of `src` under rel/ (overwriting what is there)."""
        upload_dir(self.client, self.bucket, src, self.prefix + rel)

    def put_file(self, rel: str, src: Path) -> None:
        with open(src, "rb") as fh:
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + rel, Body=fh)

    def delete(self, rel: str) -> None:
        assert delete_prefix(self.client, self.bucket, self.prefix + rel.rstrip("/") + "/") > 0

    def delete_unversioned(self, model: str) -> None:
        """Delete a model's files that are not inside an integer version folder."""
        base = f"{self.prefix}{model}/"
        doomed = [k for k in list_keys(self.client, self.bucket, base) if not k[len(base):].split("/")[0].isdigit()]
        assert doomed
        self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in doomed], "Quiet": True})


class LocalStore:
    """A local models folder; every file appears with an atomic rename, as a careful publisher would do."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = str(root)
        self._n = 0

    def put(self, rel: str, src: Path) -> None:
        for f in sorted(p for p in src.rglob("*") if p.is_file()):
            self.put_file(f"{rel}/{f.relative_to(src).as_posix()}", f)

    def put_file(self, rel: str, src: Path) -> None:
        dest = self.root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._n += 1
        tmp = self.root / f".incoming-{self._n}"  # dotfiles are ignored by the watcher
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)

    def delete(self, rel: str) -> None:
        shutil.rmtree(self.root / rel)

    def delete_unversioned(self, model: str) -> None:
        for child in (self.root / model).iterdir():
            if not child.name.isdigit():
                shutil.rmtree(child) if child.is_dir() else child.unlink()


# ==========================================================================
# talking to the replica
# ==========================================================================

def ask(r, model: str | None = None, version=None) -> tuple[object, int | None]:
    """(tag, pid) for a 200, (HTTP status, None) otherwise. A fresh connection per call spreads the calls
    over every gunicorn worker."""
    params = {}
    if model is not None:
        params["model"] = model
    if version is not None:
        params["version"] = str(version)
    resp = requests.post(r.base + "/predict", params=params, headers={"Connection": "close"}, timeout=30)
    if resp.status_code == 200:
        body = resp.json()
        return body["tag"], body["pid"]
    return resp.status_code, None


def wait_served(r, model, expect, *, since: float, timeout: float, processes: int = 1, version=None) -> float:
    """Seconds from `since` until the replica serves `expect` (a tag, or an HTTP status such as 404).

    With several workers it counts only once a run of consecutive answers all match and (for a tag) came
    from every worker, so a worker still on the old copy cannot hide behind one that already swapped."""
    need = 1 if processes == 1 else 6 * processes
    run, run_start, pids, last = 0, 0.0, set(), None
    answers: Counter = Counter()  # (answer, pid) over the whole wait, for the failure message
    deadline = since + timeout + 15  # keep asking past the bound, to report how late it was
    while time.time() < deadline:
        t = time.time()
        got, pid = ask(r, model, version)
        last = got
        answers[(got, pid)] += 1
        if got == expect:
            if run == 0:
                run_start, pids = t, set()
            run += 1
            pids.add(pid)
            if run >= need and pid is not None and len(pids) < processes:
                others = ask_the_others(r, model, version, expect, seen=pids)
                if others is None:  # a worker that had no turn yet answers something else: not served yet
                    run = 0
                    continue
                pids |= others
            if run >= need and (pid is None or len(pids) >= processes):
                return run_start - since
        else:
            run = 0
        time.sleep(0.02)
    raise AssertionError(f"model {model} version {version} never served {expect!r} (last answer {last!r}; "
                         f"(answer, pid) counts {dict(answers)})\n" + r.log()[-3000:])


def ask_the_others(r, model, version, expect, *, seen: set) -> set | None:
    """The workers that answer while those in `seen` are paused; None if one of them does not answer `expect`.

    Workers share one listening socket and the kernel hands each connection to whichever is scheduled first:
    on busy cores one worker can lose every race for many seconds. Pausing the others makes it accept."""
    answered: set = set()
    with paused(seen):
        for _ in range(3 * len(r.worker_pids())):
            got, pid = ask(r, model, version)
            if got != expect:
                return None
            answered.add(pid)
    return answered


def models_status(r) -> dict:
    resp = r.get("/v1/models")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    check_models_shape(body)
    return {m["name"]: {v["version"]: v for v in m["model_version_status"]} for m in body["models"]}


def check_models_shape(body: dict) -> None:
    """GET /v1/models: {"models": [{"name", "model_version_status": [{"version", "state", "status":
    {"error_code", "error_message"}, "upstream", "disk", "memory", "error"}]}], "upstream_errors": {url: why}}."""
    assert isinstance(body, dict) and set(body) == {"models", "upstream_errors"}, body
    assert isinstance(body["upstream_errors"], dict)
    assert isinstance(body["models"], list)
    for m in body["models"]:
        assert {"name", "model_version_status"} <= set(m), m
        assert isinstance(m["name"], str) and isinstance(m["model_version_status"], list)
        for v in m["model_version_status"]:
            assert {"version", "state", "status", "upstream", "disk", "memory", "error"} <= set(v), v
            assert isinstance(v["version"], str) and v["version"].isdigit(), v
            assert v["state"] in ("START", "LOADING", "AVAILABLE", "UNLOADING", "END"), v
            assert set(v["status"]) == {"error_code", "error_message"}, v
            assert isinstance(v["status"]["error_code"], str) and isinstance(v["status"]["error_message"], str)
            assert all(isinstance(v[k], bool) for k in ("upstream", "disk", "memory")), v
            assert v["error"] is None or isinstance(v["error"], str), v
            if v["error"]:
                assert v["status"]["error_code"] != "OK" or v["state"] == "UNLOADING", v


# ==========================================================================
# 1. the four events, per predictor type, processes and upstream kind
# ==========================================================================

EVENT_CASES = [
    pytest.param("onnx", 1, "s3", id="onnx-1proc-s3"),
    pytest.param("onnx", 3, "s3", id="onnx-3proc-s3"),
    pytest.param("python", 1, "s3", id="python-1proc-s3"),
    pytest.param("python", 1, "local", id="python-1proc-local"),
    pytest.param("tensorflow", 1, "s3", id="tensorflow-1proc-s3", marks=pytest.mark.tensorflow),
]


@pytest.mark.parametrize("ptype,processes,where", EVENT_CASES)
def test_each_event_is_served_within_a_poll(ptype, processes, where, s3, s3_client, bucket, build, replica, tmp_path):
    store = S3Store(s3_client, bucket) if where == "s3" else LocalStore(tmp_path / "upstream")
    bound = event_bound(ptype)
    timings: dict[str, float] = {}

    def timed(event: str, model: str, expect, version=None, since: float | None = None) -> None:
        took = wait_served(r, model, expect, since=since, timeout=bound, processes=processes, version=version)
        timings[event] = max(timings.get(event, 0.0), took)

    # model "a", unversioned (version 1, tag 10)
    store.put("a", build(ptype, 10))
    spec = write_api(tmp_path / "api", ptype, models_dir=store.url, processes=processes)
    r = replica(spec, env=s3.env, poll_interval=POLL)
    assert ask(r, "a")[0] == 10.0
    assert ask(r, "a", 1)[0] == 10.0
    status = models_status(r)
    assert status["a"]["1"]["state"] == "AVAILABLE" and status["a"]["1"]["memory"] is True

    # RESTRUCTURED: unversioned -> versions 1 (tag 11) and 2 (tag 12); mixed while in progress, done on delete
    store.put("a/1", build(ptype, 11))
    store.put("a/2", build(ptype, 12))
    assert ask(r, "a")[0] in (10.0, 12.0)  # never down while half restructured
    store.delete_unversioned("a")
    t = time.time()
    timed("restructured", "a", 12.0, since=t)
    timed("restructured", "a", 11.0, version=1, since=t)

    # ADDED: a version of an existing model, then a new model (a new child prefix of models.dir)
    store.put("a/3", build(ptype, 13))
    timed("added version", "a", 13.0, since=time.time())
    store.put("b", build(ptype, 20))
    timed("added model", "b", 20.0, since=time.time())

    # UPDATED in place: same version, new content
    store.put("a/3", build(ptype, 14))
    t = time.time()
    timed("updated in place", "a", 14.0, since=t)
    timed("updated in place", "a", 14.0, version=3, since=t)

    # REMOVED: a version (latest falls back to 2), then a whole model
    store.delete("a/3")
    t = time.time()
    timed("removed version", "a", 404, version=3, since=t)
    timed("removed version", "a", 12.0, since=t)
    store.delete("b")
    timed("removed model", "b", 404, since=time.time())

    print(f"\n[{ptype} x{processes} {where}] seconds from change to served (bound {bound:.1f}): "
          + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
    late = {k: round(v, 2) for k, v in timings.items() if v > bound}
    assert not late, f"served later than poll + download + load ({bound:.1f}s): {late}"

    def without_b():
        status = models_status(r)
        return status if "b" not in status else None

    status = wait_for(without_b, timeout=10, message="model b gone from /v1/models")
    rows = status["a"]
    assert sorted(rows) == ["1", "2"], rows
    for v in rows.values():
        assert v["state"] == "AVAILABLE" and v["upstream"] and v["disk"] and v["memory"], v
        assert v["error"] is None and v["status"] == {"error_code": "OK", "error_message": ""}, v


# ==========================================================================
# 2. a client that never pauses sees no failed request
# ==========================================================================

def test_no_failed_request_across_20_changes_and_a_removal(s3, s3_client, bucket, build, replica, tmp_path):
    poll = 0.5
    store = S3Store(s3_client, bucket)
    store.put("m/1", build("onnx", 101))
    store.put("gone", build("onnx", 900))
    # models.dir: removing a model = deleting its child prefix (an emptied `paths` root keeps its last copy)
    spec = write_api(tmp_path / "api", "onnx", processes=2, threads=2, models_dir=store.url)
    r = replica(spec, env=s3.env, poll_interval=poll)

    results: list[tuple[float, str, object]] = []  # (sent at, model, tag or status or exception)
    stop = threading.Event()
    removed_at = [float("inf")]

    def client() -> None:
        session_models = ("m", "gone")
        i = 0
        while not stop.is_set():
            model = session_models[i % 2]
            i += 1
            sent = time.time()
            try:
                got, _pid = ask(r, model)
            except requests.RequestException as e:
                got = e
            results.append((sent, model, got))

    def seen_since(since: float, tag: float) -> bool:
        return any(s >= since and m == "m" and g == tag for s, m, g in list(results))

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(results) > 10, timeout=10, message="client running")
        valid_tags = {101.0}
        latest = 1
        for change in range(1, 21):
            t = time.time()
            if change % 4 == 0:  # every fourth change rewrites the latest version in place
                tag = 100.0 + latest + 50 * change
                store.put(f"m/{latest}", build("onnx", int(tag)))
            else:
                latest += 1
                tag = 100.0 + latest
                store.put(f"m/{latest}", build("onnx", int(tag)))
                if latest >= 3 and change % 3 == 0:
                    store.delete(f"m/{latest - 2}")  # old versions leave too, while requests go on
            valid_tags.add(tag)
            wait_for(lambda: seen_since(t, tag), timeout=event_bound("onnx", poll),
                     message=f"change {change} (tag {tag}) served")
            if change == 10:
                removed_at[0] = time.time()
                store.delete("gone")
        wait_for(lambda: any(s > removed_at[0] and m == "gone" and g == 404 for s, m, g in list(results)),
                 timeout=event_bound("onnx", poll), message="model 'gone' removed")
        time.sleep(2 * poll)
    finally:
        stop.set()
        thread.join(30)

    failed = []
    for sent, model, got in results:
        if model == "m" and got not in valid_tags:
            failed.append((sent, model, got))
        if model == "gone" and got != 900.0 and not (got == 404 and sent >= removed_at[0]):
            failed.append((sent, model, got))
    counts = {"m": sum(1 for _, m, _ in results if m == "m"), "gone": sum(1 for _, m, _ in results if m == "gone")}
    gone_404 = sum(1 for _, m, g in results if m == "gone" and g == 404)
    print(f"\n[no failed request] {len(results)} requests ({counts}), {gone_404} 404s for 'gone' after its "
          f"removal, {len(failed)} failed")
    assert not failed, f"{len(failed)} failed requests, first ones: {failed[:5]}\n" + r.log()[-3000:]
    assert counts["m"] > 200 and gone_404 > 0
    # once the removal is seen, it stays removed
    last_gone = [g for _, m, g in results if m == "gone"][-5:]
    assert last_gone == [404] * 5, last_gone


# ==========================================================================
# 3. an S3 outage
# ==========================================================================

def test_s3_outage_keeps_serving_and_recovers(s3, s3_client, bucket, build, replica, tmp_path):
    store = S3Store(s3_client, bucket, prefix="iris/")
    store.put("1", build("onnx", 1))
    spec = write_api(tmp_path / "api", "onnx", model_path=store.url)
    r = replica(spec, env=s3.env, poll_interval=POLL)
    assert ask(r)[0] == 1.0
    state_dir = r.state_dir
    outage = 4 * POLL
    answers = []
    store.put("2", build("onnx", 2))  # a change just before the outage: seen now or after it, never lost
    try:
        t_stop = time.time()
        s3.stop()
        down_at = time.time()
        # the watcher notices (a listing error is recorded) ...
        wait_for(lambda: read_state(state_dir)["root_errors"], timeout=10 * POLL, message="listing error recorded")
        # ... and every model keeps serving for several poll intervals
        while time.time() < down_at + outage or len(answers) < 20:
            answers.append(ask(r)[0])
            assert r.get("/healthz").status_code == 200
            time.sleep(0.1)
        rows = models_status(r)["live-onnx"]
        assert rows["1"]["state"] == "AVAILABLE" and rows["1"]["disk"] and rows["1"]["memory"], rows
    finally:
        if not s3.running:
            s3.start()
        s3.wait_ready(timeout=60)
    down_for = time.time() - t_stop
    assert set(answers) <= {1.0, 2.0} and answers == sorted(answers), answers
    assert (state_dir / "models" / "live-onnx" / "1.manifest.json").exists()

    # after recovery, the change made before the outage and one made after it are picked up
    wait_served(r, None, 2.0, since=time.time(), timeout=30)
    store.put("3", build("onnx", 3))
    took = wait_served(r, None, 3.0, since=time.time(), timeout=30)
    wait_for(lambda: not read_state(state_dir)["root_errors"], timeout=10, message="root error cleared")
    print(f"\n[outage] served {len(answers)} requests while S3 was down ({down_for:.1f}s in all); a change made "
          f"after recovery served in {took:.2f}s")
    # The watcher backs off exponentially while S3 fails (poll x 2^failures, at most 300 s), so how soon a change
    # is seen after recovery grows with the outage: about 2-16 s after these ~8 s at a 1 s poll.
    assert took <= 30


# ==========================================================================
# 4. a half-uploaded TensorFlow version is never loaded
# ==========================================================================

@pytest.mark.tensorflow
def test_half_uploaded_tensorflow_version_is_never_loaded(s3, s3_client, bucket, build, replica, tmp_path):
    store = S3Store(s3_client, bucket, prefix="tf/")
    store.put("1", build("tensorflow", 1))
    spec = write_api(tmp_path / "api", "tensorflow", model_path=store.url)
    r = replica(spec, env=s3.env, poll_interval=POLL)
    assert ask(r)[0] == 1.0

    v2 = build("tensorflow", 2)
    store.put_file("2/saved_model.pb", v2 / "saved_model.pb")  # variables/ not there yet

    def v2_error():
        row = models_status(r)["live-tensorflow"].get("2")
        return row if row and row["error"] else None

    row = wait_for(v2_error, timeout=event_bound("tensorflow"), message="version 2's error shown")
    assert "variables" in row["error"], row
    assert row["state"] != "AVAILABLE" and not row["disk"] and not row["memory"] and row["upstream"], row
    assert row["status"]["error_code"] != "OK" and "variables" in row["status"]["error_message"], row
    end = time.time() + 3 * POLL
    while time.time() < end:  # several polls later, latest is still version 1
        assert ask(r)[0] == 1.0
        time.sleep(0.1)
    assert not (r.state_dir / "models" / "live-tensorflow" / "2").exists()
    assert models_status(r)["live-tensorflow"]["1"]["state"] == "AVAILABLE"

    # the rest of the upload arrives: version 2 is served
    for f in sorted(p for p in v2.rglob("*") if p.is_file() and p.name != "saved_model.pb"):
        store.put_file(f"2/{f.relative_to(v2).as_posix()}", f)
    took = wait_served(r, None, 2.0, since=time.time(), timeout=event_bound("tensorflow"))
    assert took <= event_bound("tensorflow")
    row = models_status(r)["live-tensorflow"]["2"]
    assert row["state"] == "AVAILABLE" and row["error"] is None, row


# ==========================================================================
# 5. a version that changes while it downloads is fetched again (watcher level)
# ==========================================================================

class ChangingUpstream:
    """Wraps a real upstream; just before its n-th fetch it runs `change` (a new upload)."""

    def __init__(self, inner, n: int, change):
        self.inner, self.n, self.change = inner, n, change
        self.url = inner.url
        self.fetches = 0
        self.armed = False

    def list(self):
        return self.inner.list()

    def fetch(self, obj, dest, progress=None):
        if self.armed:
            self.fetches += 1
            if self.fetches == self.n:
                self.armed = False
                self.change()
        return self.inner.fetch(obj, dest)


@pytest.mark.parametrize("where", ["s3", "local"])
@pytest.mark.parametrize("nth", [1, 2], ids=["before-first-file", "between-files"])
def test_version_changed_during_download_is_fetched_again(where, nth, s3_client, bucket, tmp_path):
    from replica.disktree import DiskTree
    from replica.spec import ModelSource, PredictorSpec
    from supervisor.catalogue import Catalogue
    from supervisor.upstream import LocalUpstream, S3Upstream
    from supervisor.watcher import Watcher

    def content(tag: str) -> Path:
        d = tmp_path / f"content-{tag}"
        d.mkdir(exist_ok=True)
        (d / "a.txt").write_text(f"first file {tag}\n")
        (d / "b.txt").write_text(f"second file {tag}, longer\n")
        return d

    if where == "s3":
        store = S3Store(s3_client, bucket, prefix="m/")
        inner = S3Upstream(store.url, s3_client)
    else:
        store = LocalStore(tmp_path / "upstream")
        inner = LocalUpstream(store.root)
    store.put("1", content("A"))
    upstream = ChangingUpstream(inner, nth, lambda: store.put("1", content("C")))
    source = ModelSource(url=upstream.url, name="m")
    catalogue = Catalogue(PredictorSpec(type="python", path=tmp_path / "predictor.py", sources=(source,)),
                          [(source, upstream)])
    tree = DiskTree(tmp_path / "state")
    watcher = Watcher(tree, catalogue, poll_interval=10.0)
    watcher.start()
    sync(watcher)
    installed = tree.model_path("m", 1)
    assert (installed / "a.txt").read_text() == "first file A\n"
    old_manifest = tree.manifest("m", 1)

    # B is listed, and C replaces it while B downloads
    store.put("1", content("B"))
    upstream.armed = True
    sync(watcher)
    assert upstream.fetches == nth
    err = read_state(tree.root)["models"]["m"]["versions"]["1"]["error"]
    assert "changed upstream during download" in err and "serving the last good copy" in err, err
    assert tree.manifest("m", 1) == old_manifest  # the good copy A stays, never a mix of A, B and C
    assert (installed / "a.txt").read_text() == "first file A\n"
    assert (installed / "b.txt").read_text() == "second file A, longer\n"
    assert list(tree.tmp.iterdir()) == []  # the aborted download is cleaned up
    assert watcher.next_delay() <= 1.0  # fetched again soon, not after a whole poll interval

    sync(watcher)
    assert (installed / "a.txt").read_text() == "first file C\n"
    assert (installed / "b.txt").read_text() == "second file C, longer\n"
    listing = catalogue.models["m"].listing.versions[1]
    assert tree.manifest("m", 1)["fingerprint"] == listing.fingerprint
    assert read_state(tree.root)["models"]["m"]["versions"]["1"]["error"] is None


# ==========================================================================
# 6. restarting downloads nothing that did not change
# ==========================================================================

def test_restart_downloads_only_what_changed(s3, s3_client, bucket, build, replica, tmp_path):
    store = S3Store(s3_client, bucket, prefix="")
    store.put("a/1", build("onnx", 1))
    store.put("a/2", build("onnx", 2))
    store.put("b/1", build("onnx", 5))
    spec = write_api(tmp_path / "api", "onnx", paths={"a": store.url + "a/", "b": store.url + "b/"})
    state_dir = tmp_path / "state"
    manifests = {v: state_dir / "models" / f"{v}.manifest.json" for v in ("a/1", "a/2", "b/1")}

    def installed_at() -> dict[str, float]:
        """When each version was installed (inode numbers can be reused once a file is freed)."""
        return {v: json.loads(p.read_text())["installed_at"] for v, p in manifests.items()}

    def fetch_lines(log: str) -> list[str]:
        return [line for line in log.splitlines() if "downloaded (" in line or "updated (" in line]

    r1 = replica(spec, env=s3.env, poll_interval=POLL, state_dir=state_dir)
    assert (ask(r1, "a")[0], ask(r1, "b")[0]) == (2.0, 5.0)
    first = installed_at()
    assert read_state(state_dir)["bytes_downloaded"] > 0
    assert len(fetch_lines(r1.log())) == 3
    r1.stop()

    # nothing changed: nothing is downloaded
    r2 = replica(spec, env=s3.env, poll_interval=POLL, state_dir=state_dir)
    assert (ask(r2, "a")[0], ask(r2, "b")[0], ask(r2, "a", 1)[0]) == (2.0, 5.0, 1.0)
    time.sleep(1.5 * POLL)  # a further poll downloads nothing either
    log2 = r2.log()[len(r1.log()):] if r2.log_path == r1.log_path else r2.log()
    assert fetch_lines(log2) == [], fetch_lines(log2)
    assert read_state(state_dir)["bytes_downloaded"] == 0
    assert installed_at() == first
    r2.stop()

    # b/1 rewritten in place and a/3 added while stopped: only those two are downloaded
    store.put("b/1", build("onnx", 6))
    store.put("a/3", build("onnx", 3))
    r3 = replica(spec, env=s3.env, poll_interval=POLL, state_dir=state_dir)
    assert (ask(r3, "a")[0], ask(r3, "b")[0], ask(r3, "a", 1)[0], ask(r3, "a", 2)[0]) == (3.0, 6.0, 1.0, 2.0)
    time.sleep(1.5 * POLL)
    log3 = r3.log()
    for earlier in (r1, r2):
        if r3.log_path == earlier.log_path:
            log3 = log3[len(earlier.log()):]
    lines = fetch_lines(log3)
    assert len(lines) == 2 and any("model b version 1 updated" in x for x in lines) \
        and any("model a version 3 downloaded" in x for x in lines), lines
    changed_bytes = (build("onnx", 6) / "model.onnx").stat().st_size + (build("onnx", 3) / "model.onnx").stat().st_size
    assert read_state(state_dir)["bytes_downloaded"] == changed_bytes
    now = installed_at()
    assert now["a/1"] == first["a/1"] and now["a/2"] == first["a/2"] and now["b/1"] != first["b/1"]


# ==========================================================================
# 7. a long outage: the watcher backs off, but stays alive for /healthz
# ==========================================================================

def test_heartbeat_stays_fresh_while_the_watcher_backs_off(tmp_path):
    """/healthz fails once the heartbeat is older than max(30 s, 4 polls); the listing backoff grows to
    300 s, so without a heartbeat during the wait a long S3 outage would make a serving replica look dead
    (and get it restarted, losing the copies it serves from)."""
    from replica.disktree import DiskTree
    from replica.spec import ModelSource, PredictorSpec
    from supervisor.catalogue import Catalogue
    from supervisor.upstream import LocalUpstream
    from supervisor.watcher import Watcher

    poll = 0.05
    source = ModelSource(url=str(tmp_path / "missing"), name="m")
    upstream = LocalUpstream(source.url)  # listing fails: not a directory
    catalogue = Catalogue(PredictorSpec(type="python", path=tmp_path / "p.py", sources=(source,)),
                          [(source, upstream)])
    tree = DiskTree(tmp_path / "state")
    watcher = Watcher(tree, catalogue, poll_interval=poll)
    watcher.start()
    watcher.failures = 8  # deep in the backoff: the next wait is at least 0.8 * 256 polls
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: upstream.list_calls >= 1 and tree.heartbeat_file.exists(), timeout=5)
        time.sleep(40 * poll)
        assert upstream.list_calls == 1  # still waiting out the backoff ...
        age = time.time() - tree.heartbeat_file.stat().st_mtime
        assert age < 10 * poll, f"heartbeat {age:.2f}s old while the watcher waits"  # ... and alive
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
