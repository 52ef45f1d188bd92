"""Model caching against a real replica and SeaweedFS: hard bounds, single flight, 503 on saturation,
failed loads, live reloading with caching, and the processes_per_replica refusal (DESIGN.md section 7).

The python predictor's models are tiny `model.json` files; it answers with the model's content plus the name
it asked for, so every answer can be checked against what was uploaded.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import botocore.config
import numpy as np
import pytest
import requests

from tests.helpers import put_objects, read_state, write_api
from tests.replica_proc import wait_for

PREDICTOR = """
import json
import os
import time
from pathlib import Path


class PythonPredictor:
    def __init__(self, config, python_client):
        self.client = python_client
        self.marker_dir = config.get("marker_dir")

    def load_model(self, model_path):
        with open(os.path.join(model_path, "model.json")) as f:
            model = json.load(f)
        if model.get("broken"):
            raise ValueError("model.json is marked broken")
        return model

    def predict(self, payload, query_params):
        name = query_params["model"]
        model = self.client.get_model(name)
        if query_params.get("sleep"):
            if self.marker_dir:  # tells the test that the model is pinned and the request is sleeping
                Path(self.marker_dir, name).write_text("sleeping")
            time.sleep(float(query_params["sleep"]))
        return {"name": name, "model": model}
"""


# -- helpers -------------------------------------------------------------------------------------------------

def model_body(name: str, **extra) -> bytes:
    return json.dumps({"name": name, **extra}).encode()


def upload_models(s3, bucket: str, models: dict[str, dict], prefix: str = "models", threads: int = 16) -> float:
    """Upload `name -> model.json content` as `prefix/NAME/model.json`; return the seconds it took."""
    client = s3.client(config=botocore.config.Config(max_pool_connections=threads))
    start = time.perf_counter()
    put_objects(client, bucket, {f"{prefix}/{n}/model.json": json.dumps(c).encode() for n, c in models.items()},
                threads=threads)
    return time.perf_counter() - start


def cached_spec(folder: Path, bucket: str, cache: int, disk: int, *, threads: int = 4, processes: int = 1,
                config: dict | None = None, predictor: str = PREDICTOR, ptype: str = "python") -> Path:
    return write_api(folder, predictor, type=ptype,
                     models={"dir": f"s3://{bucket}/models/", "cache_size": cache, "disk_cache_size": disk},
                     processes_per_replica=processes, threads_per_process=threads, config=config)


def ask(r, name: str, timeout: float = 60, **params) -> requests.Response:
    return r.post("/", params={"model": name, **params}, json={}, timeout=timeout)


def memory_versions(r) -> list[tuple[str, str]]:
    """(name, version) of every version /v1/models reports in memory (unloading ones included)."""
    body = r.get("/v1/models", timeout=30).json()
    return [(m["name"], row["version"]) for m in body["models"] for row in m["model_version_status"] if row["memory"]]


def disk_versions(state_dir: Path) -> list[str]:
    """Every version folder under STATE/models/*/ (tolerates folders vanishing while it looks)."""
    found = []
    models = Path(state_dir) / "models"
    try:
        names = list(models.iterdir())
    except FileNotFoundError:
        return found
    for mdir in names:
        try:
            found += [f"{mdir.name}/{v.name}" for v in mdir.iterdir() if v.is_dir()]
        except (FileNotFoundError, NotADirectoryError):
            pass
    return found


def tree_snapshot(state_dir: Path) -> set[str]:
    """Every path under the disk tree's models/ and tmp/ folders."""
    root = Path(state_dir)
    return {str(p.relative_to(root)) for sub in ("models", "tmp") if (root / sub).exists() for p in (root / sub).rglob("*")}


def log_count(r, pattern: str) -> int:
    return len(re.findall(pattern, r.log()))


def downloaded(name: str) -> str:
    return rf"model {re.escape(name)} version 1 downloaded "


def loading(name: str) -> str:
    return rf"loading model {re.escape(name)} version 1\b"


def check_answer(resp: requests.Response, name: str, content: dict) -> str | None:
    """None when the answer is right, else a description of what is wrong."""
    if resp.status_code != 200:
        return f"{name}: HTTP {resp.status_code} {resp.text[:300]}"
    body = resp.json()
    if body != {"name": name, "model": content}:
        return f"{name}: wrong answer {body!r}"
    return None


# -- 1. hard bounds under a catalogue walk plus a hot set ---------------------------------------------------

CATALOGUE = 1000
HOT = 20
CACHE, DISK = 3, 5


@pytest.fixture
def catalogue_replica(s3, bucket, replica, tmp_path):
    models = {f"m{i:04d}": {"name": f"m{i:04d}", "value": i} for i in range(CATALOGUE)}
    upload_models(s3, bucket, models)
    spec = cached_spec(tmp_path / "api", bucket, CACHE, DISK, threads=4)
    r = replica(spec, env=s3.env, poll_interval=1.0)
    return r, models


def _walk_with_hot_set(r, models: dict[str, dict], walk: list[str]) -> dict:
    """One client walks `walk` in order while 4 threads hammer a hot set and a sampler checks the bounds."""
    hot = list(models)[:HOT]
    stop = threading.Event()
    errors: list[str] = []
    samples = {"n": 0, "max_memory": 0, "max_disk": 0, "over": []}
    counts = {"walk": 0, "hot": 0}
    miss_latency: list[float] = []

    def sampler():
        session = requests.Session()
        while not stop.is_set():
            try:
                body = session.get(r.base + "/v1/models", timeout=30).json()
            except requests.RequestException as e:
                errors.append(f"sampler: {e}")
                continue
            memory = [(m["name"], row["version"]) for m in body["models"] for row in m["model_version_status"]
                      if row["memory"]]
            disk = disk_versions(r.state_dir)
            samples["n"] += 1
            samples["max_memory"] = max(samples["max_memory"], len(memory))
            samples["max_disk"] = max(samples["max_disk"], len(disk))
            if len(memory) > CACHE or len(disk) > DISK:
                samples["over"].append({"memory": memory, "disk": disk})
            stop.wait(0.05)

    def hammer(seed: int):
        rng = random.Random(seed)
        session = requests.Session()
        while not stop.is_set():
            name = rng.choice(hot)
            resp = session.post(r.base + "/", params={"model": name}, json={}, timeout=60)
            if (err := check_answer(resp, name, models[name])) is not None:
                errors.append("hot " + err)
            counts["hot"] += 1

    threads = [threading.Thread(target=sampler, daemon=True)]
    threads += [threading.Thread(target=hammer, args=(seed,), daemon=True) for seed in range(4)]
    for t in threads:
        t.start()
    session = requests.Session()
    try:
        for name in walk:
            start = time.perf_counter()
            resp = session.post(r.base + "/", params={"model": name}, json={}, timeout=60)
            miss_latency.append(time.perf_counter() - start)
            if (err := check_answer(resp, name, models[name])) is not None:
                errors.append("walk " + err)
            counts["walk"] += 1
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    return {"errors": errors, "samples": samples, "counts": counts, "latency": miss_latency}


def _assert_walk(r, result: dict, walked: int) -> None:
    s = result["samples"]
    print(f"\nwalked {result['counts']['walk']} models, {result['counts']['hot']} hot requests, "
          f"{s['n']} samples; max memory {s['max_memory']}, max disk {s['max_disk']}; walk latency "
          f"median {np.median(result['latency']) * 1000:.0f} ms, p95 {np.percentile(result['latency'], 95) * 1000:.0f} ms")
    assert not result["errors"], f"{len(result['errors'])} wrong answers, first: {result['errors'][:5]}"
    assert result["counts"]["walk"] == walked
    assert result["counts"]["hot"] > 0
    assert s["n"] >= 20, "the sampler barely ran"
    assert not s["over"], f"bounds exceeded in {len(s['over'])} samples, first: {s['over'][0]}"
    assert s["max_memory"] <= CACHE and s["max_disk"] <= DISK
    assert s["max_memory"] >= 1 and s["max_disk"] >= 1
    # Nothing was removed upstream: a version leaving memory as "removed" lost its disk copy while loaded (or a
    # stale state feed made the worker think so). Every eviction is an admission's, and nothing went wrong.
    assert log_count(r, r"removed; unloading once idle") == 0
    assert log_count(r, r" (WARNING|ERROR) ") == 0, [line for line in r.log().splitlines() if " WARNING " in line
                                                     or " ERROR " in line][:5]


WALK_DEFAULT = 80  # a bounded part of the 1,000-model catalogue; the whole walk is the slow variant


def test_catalogue_walk_keeps_hard_bounds(catalogue_replica):
    r, models = catalogue_replica
    names = list(models)
    walk = names[HOT:HOT + WALK_DEFAULT // 2] + names[-(WALK_DEFAULT - WALK_DEFAULT // 2):]  # both ends of the listing
    result = _walk_with_hot_set(r, models, walk)
    _assert_walk(r, result, len(walk))
    assert log_count(r, r"evicted from memory") > 0 and log_count(r, r"evicted from disk") > 0


@pytest.mark.slow
def test_catalogue_walk_all_1000_models_keeps_hard_bounds(catalogue_replica):
    r, models = catalogue_replica
    result = _walk_with_hot_set(r, models, list(models))
    _assert_walk(r, result, CATALOGUE)


# -- 2. unknown names --------------------------------------------------------------------------------------

@pytest.fixture
def small_catalogue(s3, bucket):
    models = {n: {"name": n, "value": i} for i, n in enumerate(["a", "b", "c", "d"])}
    upload_models(s3, bucket, models)
    return models


def test_unknown_model_is_404_at_once_without_download(s3, bucket, replica, tmp_path, small_catalogue):
    r = replica(cached_spec(tmp_path / "api", bucket, 2, 3), env=s3.env, poll_interval=1.0)
    assert ask(r, "a").status_code == 200  # something on disk, so "unchanged" means something
    before = tree_snapshot(r.state_dir)
    downloads = log_count(r, r" downloaded ")
    for name in ["nope", "a-missing", "A", "m0001"]:
        start = time.perf_counter()
        resp = ask(r, name)
        elapsed = time.perf_counter() - start
        assert resp.status_code == 404, resp.text
        assert name in resp.json()["error"]
        assert elapsed < 1.0, f"404 for {name} took {elapsed:.2f}s"
    assert r.get("/v1/models/nope").status_code == 404
    time.sleep(1.5)  # a poll in between changes nothing either
    assert tree_snapshot(r.state_dir) == before
    assert log_count(r, r" downloaded ") == downloads
    assert memory_versions(r) == [("a", "1")]


# -- 3. single flight ------------------------------------------------------------------------------------------

def test_concurrent_first_requests_share_one_download_and_one_load(s3, bucket, replica, tmp_path, small_catalogue):
    n = 8
    r = replica(cached_spec(tmp_path / "api", bucket, 2, 3, threads=n), env=s3.env, poll_interval=1.0)
    barrier = threading.Barrier(n)

    def first_request(_):
        barrier.wait()
        return ask(r, "b")

    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(first_request, range(n)))
    problems = [p for resp in answers if (p := check_answer(resp, "b", small_catalogue["b"]))]
    assert not problems, problems
    assert log_count(r, downloaded("b")) == 1, r.log()[-3000:]
    assert log_count(r, loading("b")) == 1, r.log()[-3000:]
    assert disk_versions(r.state_dir) == ["b/1"]


def test_one_slot_in_memory_and_on_disk_serves_every_model_in_turn(s3, bucket, replica, tmp_path, small_catalogue):
    """cache_size == disk_cache_size == 1: each miss evicts the one resident version from memory and disk."""
    r = replica(cached_spec(tmp_path / "api", bucket, 1, 1), env=s3.env, poll_interval=1.0)
    for name in ["a", "b", "c", "a", "d", "b"]:
        assert check_answer(ask(r, name), name, small_catalogue[name]) is None
        assert memory_versions(r) == [(name, "1")]
        assert disk_versions(r.state_dir) == [f"{name}/1"]
    # The same story in /metrics: six misses, five evictions from memory and from disk, one version resident
    # (the supervisor's figures are published within 0.25 s of a fetch).
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict[str, float]:
        return {s.name: s.value for f in text_string_to_metric_families(r.get("/metrics").text)
                for s in f.samples if not s.labels}

    metrics = wait_for(lambda: (m := scrape())["replica_disk_evictions_total"] == 5 and m, timeout=10,
                       message="the supervisor's figures published")
    assert metrics["replica_cache_misses_total"] == 6 and metrics["replica_cache_hits_total"] == 0
    assert metrics["replica_model_evictions_total"] == 5
    assert metrics["replica_models_in_memory"] == 1 and metrics["replica_models_on_disk"] == 1


# -- 4. saturation: 503 with Retry-After ------------------------------------------------------------------------

def test_saturated_cache_answers_503_with_retry_after(s3, bucket, replica, tmp_path, small_catalogue):
    markers = tmp_path / "markers"
    markers.mkdir()
    r = replica(cached_spec(tmp_path / "api", bucket, 1, 1, threads=4, config={"marker_dir": str(markers)}),
                env=s3.env, poll_interval=1.0)
    holder: dict = {}

    def hold_a():
        holder["resp"] = ask(r, "a", sleep=8)

    t = threading.Thread(target=hold_a)
    t.start()
    try:
        wait_for(lambda: (markers / "a").exists(), timeout=30, message="model a pinned by a sleeping request")
        start = time.perf_counter()
        resp = ask(r, "b", timeout=30)
        elapsed = time.perf_counter() - start
        assert resp.status_code == 503, resp.text
        assert resp.headers.get("Retry-After", "").isdigit(), resp.headers
        assert int(resp.headers["Retry-After"]) >= 1
        assert "saturated" in resp.json()["error"]
        assert 4.0 <= elapsed < 7.5, f"503 after {elapsed:.2f}s (admission waits 5 s)"
    finally:
        t.join(30)
    assert check_answer(holder["resp"], "a", small_catalogue["a"]) is None  # the pinned request was not disturbed
    # Once a is idle again, b takes its slot (memory and disk both hold one model).
    assert check_answer(ask(r, "b"), "b", small_catalogue["b"]) is None
    assert memory_versions(r) == [("b", "1")]
    assert disk_versions(r.state_dir) == ["b/1"]


# -- 5. a failed load evicts nothing ------------------------------------------------------------------------

def test_failed_load_evicts_nothing(s3, bucket, replica, tmp_path):
    models = {"a": {"name": "a"}, "b": {"name": "b"}, "c": {"name": "c", "broken": True}}
    upload_models(s3, bucket, models)
    r = replica(cached_spec(tmp_path / "api", bucket, 2, 3), env=s3.env, poll_interval=1.0)
    for name in ("a", "b"):
        assert check_answer(ask(r, name), name, models[name]) is None
    assert sorted(memory_versions(r)) == [("a", "1"), ("b", "1")]

    resp = ask(r, "c")
    assert resp.status_code == 503, resp.text  # the model is catalogued but cannot be served now: retry later
    assert resp.headers.get("Retry-After", "").isdigit()
    error = resp.json()["error"]
    assert "'c'" in error and "could not be loaded" in error and "marked broken" in error, error
    assert "Traceback" not in resp.text
    # Fails fast afterwards, without another load attempt.
    again = ask(r, "c")
    assert again.status_code == 503 and "tried again in" in again.json()["error"], again.text
    assert 1 <= int(again.headers["Retry-After"]) <= 30, again.headers
    assert log_count(r, loading("c")) == 1

    # The model evicted to make room for c is loaded back in the background, and nothing else moves.
    wait_for(lambda: sorted(memory_versions(r)) == [("a", "1"), ("b", "1")], timeout=20,
             message="the healthy models back in memory after c's failed load")
    loads_a, loads_b = log_count(r, loading("a")), log_count(r, loading("b"))
    for name in ("a", "b"):
        assert check_answer(ask(r, name), name, models[name]) is None
    assert (log_count(r, loading("a")), log_count(r, loading("b"))) == (loads_a, loads_b)
    assert log_count(r, r"loaded back after c version 1 failed to load") == 1


# -- 6. live reloading with caching ------------------------------------------------------------------------

def _state_fingerprint(r, name: str) -> str | None:
    state = read_state(r.state_dir)
    return state["models"].get(name, {}).get("versions", {}).get("1", {}).get("fingerprint")


def test_cached_model_updated_or_removed_upstream(s3, s3_client, bucket, replica, tmp_path, small_catalogue):
    r = replica(cached_spec(tmp_path / "api", bucket, 2, 3), env=s3.env, poll_interval=1.0)
    for name in ("a", "b"):
        assert check_answer(ask(r, name), name, small_catalogue[name]) is None
    old = _state_fingerprint(r, "a")

    fresh = {"name": "a", "value": 100, "rev": 2}
    s3_client.put_object(Bucket=bucket, Key="models/a/model.json", Body=json.dumps(fresh).encode())
    s3_client.delete_object(Bucket=bucket, Key="models/b/model.json")
    wait_for(lambda: _state_fingerprint(r, "a") not in (None, old), timeout=20, message="the new copy of a on disk")
    time.sleep(1.0)  # the worker notices the feed within its 0.2 s tick
    assert check_answer(ask(r, "a"), "a", fresh) is None
    assert log_count(r, r"model a version 1 updated \(") == 1  # the supervisor downloaded it once

    wait_for(lambda: "b/1" not in disk_versions(r.state_dir), timeout=20, message="b removed from disk")
    time.sleep(1.0)
    resp = ask(r, "b")
    assert resp.status_code == 404, resp.text
    assert "'b'" in resp.json()["error"]
    assert ("b", "1") not in memory_versions(r)

    # A model added upstream is served after a poll, with nothing downloaded before it is asked for.
    s3_client.put_object(Bucket=bucket, Key="models/e/model.json", Body=model_body("e"))
    wait_for(lambda: ask(r, "e").status_code == 200, timeout=20, message="new model e served")
    assert check_answer(ask(r, "e"), "e", {"name": "e"}) is None


# -- 7. cache fields with several processes are refused ----------------------------------------------------

def test_caching_with_several_processes_is_refused(replica, tmp_path):
    models = tmp_path / "models"
    for name in ("a", "b"):
        (models / name).mkdir(parents=True)
        (models / name / "model.json").write_text(json.dumps({"name": name}))
    spec = write_api(tmp_path / "api", PREDICTOR, type="python",
                     models={"dir": str(models), "cache_size": 1, "disk_cache_size": 2},
                     processes_per_replica=2, threads_per_process=1)
    r = replica(spec, wait=False)
    code = r.wait_exit(60)
    assert code != 0
    log = r.log()
    assert "processes_per_replica" in log and "cache_size" in log, log[-2000:]
    assert "Traceback" not in log, log[-2000:]


# -- ONNX: the same bounds with real sessions ------------------------------------------------------------------

ONNX_PREDICTOR = """
class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client

    def predict(self, payload, query_params):
        scores, label = self.client.predict(payload, query_params["model"])
        return {"scores": scores, "label": label}
"""

ONNX_WEIGHTS = [[1.0, 0.0], [0.0, 1.0], [0.5, -0.5]]


def test_onnx_models_dir_with_caching(s3, s3_client, bucket, replica, tmp_path):
    from scripts.model_factory import write_onnx_linear

    biases = {f"lin{i}": [float(i), -float(i)] for i in range(5)}
    for name, bias in biases.items():
        path = write_onnx_linear(tmp_path / "onnx" / name / "model.onnx", ONNX_WEIGHTS, bias)
        s3_client.put_object(Bucket=bucket, Key=f"models/{name}/1/model.onnx", Body=path.read_bytes())
    spec = cached_spec(tmp_path / "api", bucket, 2, 3, predictor=ONNX_PREDICTOR, ptype="onnx")
    r = replica(spec, env=s3.env, poll_interval=1.0)
    x = [[1.0, 2.0, 3.0], [0.0, 0.0, -1.0]]
    order = list(biases) + list(reversed(biases)) + ["lin0", "lin4", "lin0", "lin4"]
    for name in order:
        resp = r.post("/", params={"model": name}, json=x)
        assert resp.status_code == 200, resp.text
        want = np.asarray(x) @ np.asarray(ONNX_WEIGHTS) + np.asarray(biases[name])
        np.testing.assert_allclose(resp.json()["scores"], want, rtol=1e-5)
        assert resp.json()["label"] == list(np.argmax(want, axis=1))
        assert len(memory_versions(r)) <= 2
        assert len(disk_versions(r.state_dir)) <= 3
    # The last two requests alternated lin0 and lin4 while both stayed in memory: no reload.
    assert sorted(memory_versions(r)) == [("lin0", "1"), ("lin4", "1")]
    assert log_count(r, r"loading model lin4 version 1\b") == 2
