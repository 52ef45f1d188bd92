"""A version's lifecycle against a real replica and SeaweedFS: a transient failure is a 503 with Retry-After
until the retry succeeds (never a 404), odd upstream content is refused per model (never the whole catalogue),
and a broken version gives its disk slot back.

A 404 means only "not upstream". Each test here puts the replica through one fault a production replica meets:
an S3 outage during a miss, a full state disk, a name too long for the filesystem, a version number SQLite
cannot hold, a truncated model beside healthy ones.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.helpers import put_objects, write_api
from tests.replica_proc import wait_for
from tests.test_caching import PREDICTOR, ask, cached_spec, check_answer, disk_versions, upload_models


def _answer_within(r, name: str, content: dict, timeout: float, **params) -> list[int]:
    """Ask for `name` until it is answered right; return the statuses seen before (never a 404 is allowed)."""
    seen: list[int] = []

    def served() -> bool:
        resp = ask(r, name, timeout=30, **params)
        if check_answer(resp, name, content) is None:
            return True
        seen.append(resp.status_code)
        assert resp.status_code == 503, f"{name}: HTTP {resp.status_code} {resp.text[:300]}"
        assert resp.headers.get("Retry-After", "").isdigit(), resp.headers
        return False

    wait_for(served, timeout=timeout, interval=0.5, message=f"{name} served again")
    return seen


# -- 1. a transient failure is never a 404 ----------------------------------------------------------------------

def test_a_miss_during_an_s3_outage_is_503_then_served_once_s3_is_back(s3, bucket, replica, tmp_path):
    models = {"a": {"name": "a"}, "b": {"name": "b"}}
    upload_models(s3, bucket, models)
    r = replica(cached_spec(tmp_path / "api", bucket, 2, 3), env=s3.env, poll_interval=1.0)
    assert check_answer(ask(r, "a"), "a", models["a"]) is None
    s3.stop()
    try:
        resp = ask(r, "b", timeout=60)
        assert resp.status_code == 503, resp.text
        assert resp.headers.get("Retry-After", "").isdigit(), resp.headers
        error = resp.json()["error"]
        print("503 during the outage:", error)
        assert "'b'" in error and "version 1" in error, error
        assert s3.endpoint_url not in resp.text  # the endpoint goes to the log, not to clients
        # Asked again during the outage: still a 503 (the version is upstream), never a 404.
        again = ask(r, "b", timeout=60)
        assert again.status_code == 503, again.text
    finally:
        s3.start()
        s3.wait_ready()
    statuses = _answer_within(r, "b", models["b"], timeout=60)
    assert 404 not in statuses
    # /v1/models shows the version without the old error once it is served (published within a moment).
    def b_status() -> dict:
        return {m["name"]: m for m in r.get("/v1/models").json()["models"]}["b"]["model_version_status"][0]

    wait_for(lambda: b_status()["error"] is None, timeout=10, message="the old error gone from /v1/models")


def test_a_miss_on_a_full_state_disk_is_503_then_served_once_space_is_freed(s3, bucket, replica, tmp_path,
                                                                             small_fs):
    models = {"a": {"name": "a"}, "big": {"name": "big", "pad": "x" * (2 << 20)}}
    upload_models(s3, bucket, models)
    r = replica(cached_spec(tmp_path / "api", bucket, 2, 3), env=s3.env, state_dir=small_fs / "state",
                poll_interval=1.0)
    assert check_answer(ask(r, "a"), "a", models["a"]) is None
    filler = small_fs / "filler"
    with open(filler, "wb") as f:  # leave less than the big model needs
        f.truncate(0)
        chunk = b"\0" * (1 << 20)
        try:
            while os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize > (1 << 20):
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    resp = ask(r, "big", timeout=60)
    assert resp.status_code == 503, resp.text[:300]
    assert resp.headers.get("Retry-After", "").isdigit(), resp.headers
    assert str(small_fs) not in resp.text  # local paths go to the log, not to clients
    filler.unlink()
    statuses = _answer_within(r, "big", models["big"], timeout=60)
    assert 404 not in statuses


VERSIONED = PREDICTOR.replace('model = self.client.get_model(name)',
                              'model = self.client.get_model(name, query_params.get("version", "latest"))')
assert VERSIONED != PREDICTOR


def test_a_failed_latest_version_is_503_and_a_new_upload_clears_it(s3, s3_client, bucket, replica, tmp_path):
    """Version 2 of m fails to load: "latest" answers 503 naming version 2 (not a silent fallback to 1, not a
    404); uploading a good copy of version 2 is served at once, without waiting for the backoff."""
    put_objects(s3_client, bucket, {"models/m/1/model.json": json.dumps({"name": "m", "v": 1}).encode(),
                                    "models/m/2/model.json": json.dumps({"name": "m", "broken": True}).encode()})
    r = replica(cached_spec(tmp_path / "api", bucket, 2, 3, predictor=VERSIONED), env=s3.env, poll_interval=1.0)
    resp = ask(r, "m")
    assert resp.status_code == 503, resp.text
    assert "version 2" in resp.json()["error"] and "marked broken" in resp.json()["error"], resp.text
    assert ask(r, "m", version="1").status_code == 200
    put_objects(s3_client, bucket, {"models/m/2/model.json": json.dumps({"name": "m", "v": 2}).encode()})
    statuses = _answer_within(r, "m", {"name": "m", "v": 2}, timeout=30)
    assert 404 not in statuses


# -- 3. odd upstream content is refused per model -------------------------------------------------------------

def test_a_name_too_long_and_a_version_too_big_are_refused_per_model(s3, s3_client, bucket, replica, tmp_path):
    long_name, too_long = "n" * 250, "t" * 300  # the first fits a folder name, the second does not
    put_objects(s3_client, bucket, {
        "models/good/1/model.json": json.dumps({"name": "good"}).encode(),
        f"models/{long_name}/1/model.json": json.dumps({"name": long_name}).encode(),
        f"models/{too_long}/1/model.json": json.dumps({"name": too_long}).encode(),
        "models/huge/99999999999999999999/model.json": json.dumps({"name": "huge"}).encode(),
    })
    spec = write_api(tmp_path / "api", PREDICTOR, type="python", models={"dir": f"s3://{bucket}/models/"},
                     threads_per_process=2)
    r = replica(spec, env=s3.env, poll_interval=1.0)  # ready: the odd models do not stop the catalogue
    assert check_answer(ask(r, "good"), "good", {"name": "good"}) is None
    assert check_answer(ask(r, long_name), long_name, {"name": long_name}) is None
    status = {m["name"]: m for m in r.get("/v1/models").json()["models"]}
    assert "filesystem" in (status[too_long]["error"] or ""), status[too_long]
    assert ask(r, too_long).status_code == 404
    assert "2^63" in (status["huge"]["error"] or ""), status["huge"]
    # The replica keeps taking updates: a new model is served within a few polls.
    put_objects(s3_client, bucket, {"models/later/1/model.json": json.dumps({"name": "later"}).encode()})
    wait_for(lambda: check_answer(ask(r, "later"), "later", {"name": "later"}) is None, timeout=30,
             message="a model added after the odd ones served")
    assert "Traceback" not in r.log(), r.log()[-3000:]
# -- 5. a broken version gives its disk slot back ---------------------------------------------------------------

ONNX_PREDICTOR = """
class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client

    def predict(self, payload, query_params):
        name = query_params["model"]
        self.client.predict({"input": [[0.0, 0.0, 0.0, 0.0]]}, name)
        return {"name": name}
"""


def test_a_truncated_model_gives_its_disk_slot_back(s3, s3_client, bucket, replica, tmp_path):
    from scripts.model_factory import IRIS_WEIGHTS, write_onnx_linear

    files = {}
    for name in ("good1", "good2", "bad"):
        folder = tmp_path / "models" / name / "1"
        write_onnx_linear(folder / "model.onnx", IRIS_WEIGHTS, [1.0, 0.0, 0.0])
        data = (folder / "model.onnx").read_bytes()
        files[f"models/{name}/1/model.onnx"] = data[: len(data) // 2] if name == "bad" else data
    put_objects(s3_client, bucket, files)
    spec = write_api(tmp_path / "api", ONNX_PREDICTOR, type="onnx",
                     models={"dir": f"s3://{bucket}/models/", "cache_size": 1, "disk_cache_size": 2})
    r = replica(spec, env=s3.env, poll_interval=1.0)
    for name in ("good1", "good2"):
        resp = ask(r, name)
        assert resp.status_code == 200, resp.text
    assert sorted(disk_versions(r.state_dir)) == ["good1/1", "good2/1"]
    resp = ask(r, "bad")
    assert resp.status_code == 503, resp.text
    # The broken version leaves the disk and the healthy version evicted for it comes back.
    wait_for(lambda: sorted(disk_versions(r.state_dir)) == ["good1/1", "good2/1"], timeout=30,
             message=f"both healthy models back on disk (on disk: {disk_versions(r.state_dir)})")
    for name in ("good1", "good2"):
        assert ask(r, name).status_code == 200


# -- 4. a damaged disk copy is fetched again ------------------------------------------------------------------

def _flip(path: Path, old: bytes, new: bytes) -> None:
    """Change bytes of a file in place, keeping its size (as a bit flip on the disk would)."""
    data = path.read_bytes()
    assert old in data and len(old) == len(new)
    path.write_bytes(data.replace(old, new, 1))


def test_a_cached_file_with_flipped_bytes_is_fetched_again(s3, bucket, replica, tmp_path):
    models = {"a": {"name": "a", "value": 1}, "b": {"name": "b", "value": 2}}
    upload_models(s3, bucket, models)
    r = replica(cached_spec(tmp_path / "api", bucket, 1, 2), env=s3.env, poll_interval=1.0)
    for name in ("a", "b"):  # a leaves memory, stays on disk
        assert check_answer(ask(r, name), name, models[name]) is None
    _flip(r.state_dir / "models" / "a" / "1" / "model.json", b'{"name"', b'X"name"')  # no longer JSON
    statuses = _answer_within(r, "a", models["a"], timeout=30)
    assert 404 not in statuses and len(statuses) <= 1, statuses  # at most the request whose load failed
    assert "a version 1 on disk is damaged" in r.log()


def test_a_flip_that_still_parses_is_caught_at_restart(s3, bucket, replica, tmp_path):
    models = {"a": {"name": "a", "value": 1}}
    upload_models(s3, bucket, models)
    spec = write_api(tmp_path / "api", PREDICTOR, type="python", models={"dir": f"s3://{bucket}/models/"})
    state = tmp_path / "state"
    first = replica(spec, env=s3.env, state_dir=state, poll_interval=1.0)
    assert check_answer(ask(first, "a"), "a", models["a"]) is None
    first.stop()
    _flip(state / "models" / "a" / "1" / "model.json", b'"value": 1', b'"value": 7')  # still valid JSON
    again = replica(spec, env=s3.env, state_dir=state, poll_interval=1.0)
    wait_for(lambda: check_answer(ask(again, "a"), "a", models["a"]) is None, timeout=30,
             message="the good copy served after the restart")
    assert "a version 1 on disk is damaged" in again.log()
