"""Operating a replica: Prometheus metrics summed over workers, a killed worker replaced, /healthz following
the watcher, S3 restarts and malformed traffic under steady load, and SIGTERM under load (the systemd unit is
tested in tests/test_process_model.py).

Everything runs against a real replica (supervisor + 2 gunicorn workers) serving an ONNX model from SeaweedFS.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter

import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from scripts.model_factory import IRIS_BIAS, IRIS_LABELS, IRIS_SAMPLES, IRIS_WEIGHTS, write_onnx_linear
from tests.replica_proc import wait_for
from tests.helpers import BackgroundLoad, write_api

PREDICTOR = """
class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client
        self.config = config
        self.labels = config["labels"]

    def predict(self, payload, query_params, headers):
        if "X-Request-Id" in headers:  # the requests this replica accepted, for the SIGTERM test
            with open(self.config["seen"], "a") as f:
                f.write(headers["X-Request-Id"] + "\\n")
        scores, label = self.client.predict(payload, query_params.get("model"), query_params.get("version", "latest"))
        return {"labels": [self.labels[i] for i in label]}
"""

FEATURES = [x for x, _ in IRIS_SAMPLES]
EXPECTED = [label for _, label in IRIS_SAMPLES]


def upload_iris(s3_client, bucket: str, tmp_path, name: str = "iris", version: int = 1) -> None:
    path = tmp_path / f"{name}-{version}.onnx"
    write_onnx_linear(path, IRIS_WEIGHTS, IRIS_BIAS)
    s3_client.upload_file(str(path), bucket, f"models/{name}/{version}/model.onnx")


@pytest.fixture
def two_workers(s3, s3_client, bucket, replica, tmp_path):
    """A replica with 2 workers serving models.dir s3://BUCKET/models/ (iris and iris2), polling every 0.5 s."""
    upload_iris(s3_client, bucket, tmp_path)
    upload_iris(s3_client, bucket, tmp_path, "iris2")
    spec = write_api(tmp_path / "api", PREDICTOR, type="onnx", models={"dir": f"s3://{bucket}/models/"},
                     processes_per_replica=2, threads_per_process=4,
                     config={"labels": IRIS_LABELS, "seen": str(tmp_path / "seen.txt")})
    return replica(spec, env=s3.env, poll_interval=0.5, extra_args=("--heartbeat-timeout", "3", "--log-format", "json"))


def scrape(r) -> dict[tuple[str, tuple], float]:
    """GET /metrics, parsed: (sample name, sorted labels) -> value."""
    resp = r.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def good_request(session: requests.Session, base: str, model: str = "iris", request_id: str | None = None) -> str | None:
    """One prediction; None when the answer is right, else what went wrong."""
    headers = {"X-Request-Id": request_id} if request_id else {}
    resp = session.post(base + "/", params={"model": model}, json=FEATURES, timeout=30, headers=headers)
    if resp.status_code != 200:
        return f"HTTP {resp.status_code}: {resp.text[:200]}"
    if resp.json() != {"labels": EXPECTED}:
        return f"wrong answer {resp.text[:200]}"
    return None


class SteadyLoad(BackgroundLoad):
    """Threads sending good requests until stopped, recording every outcome.

    A request whose connection is broken by a killed worker (reset before the answer, or cut between the
    answer's headers and its body) is retried once on a fresh connection (what a load balancer or client
    library does for an idempotent call); such retries are counted separately.
    """

    def __init__(self, r, threads: int = 3):
        super().__init__(threads)
        self.r = r
        self.errors: list[str] = []
        self.ok = 0
        self.retried = 0

    def client(self, index: int) -> None:
        session = requests.Session()
        while not self.stop_event.is_set():
            model = "iris" if self.ok % 2 else "iris2"
            try:
                err = good_request(session, self.r.base, model)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
                self.retried += 1
                session = requests.Session()
                try:
                    err = good_request(session, self.r.base, model)
                except requests.RequestException as e:
                    err = f"retry failed: {e}"
            except requests.RequestException as e:
                err = f"{type(e).__name__}: {e}"
            if err:
                self.errors.append(err)
            else:
                self.ok += 1



# -- metrics ---------------------------------------------------------------------------------------------

def test_metrics_are_summed_over_workers(two_workers, s3):
    r = two_workers
    before = scrape(r)
    session = requests.Session()
    for _ in range(40):
        assert good_request(session, r.base) is None
    for _ in range(5):
        resp = session.post(r.base + "/", params={"model": "iris"}, data="{not json",
                            headers={"Content-Type": "application/json"})
        assert resp.status_code == 400
    assert session.post(r.base + "/", params={"model": "nope"}, json=FEATURES).status_code == 404
    marker = "payload-marker-5c1e"
    assert session.post(r.base + "/", params={"model": "iris"}, json=[[marker] * 4]).status_code == 400

    after = scrape(r)
    served = value(after, "replica_requests_total", model="iris", version="1", code="200") - \
        value(before, "replica_requests_total", model="iris", version="1", code="200")
    assert served == 40, "requests counted by model, version and code, over both workers"
    assert value(after, "replica_requests_total", model="", version="", code="400") >= 5
    assert value(after, "replica_requests_total", model="", version="", code="404") >= 1
    assert value(after, "replica_request_duration_seconds_count", model="iris") >= 40
    assert value(after, "replica_requests_in_flight") == 0
    # Two workers, each with both models loaded: every worker's gauge is summed.
    assert value(after, "replica_models_in_memory") == 4
    assert value(after, "replica_model_loads_total", model="iris") == 2
    assert value(after, "replica_model_load_duration_seconds_count") == 4
    assert value(after, "replica_cache_hits_total") >= 40
    # The supervisor's figures, from the state feed.
    assert value(after, "replica_upstream_list_calls_total") >= 1
    assert value(after, "replica_upstream_bytes_downloaded_total") > 0
    assert value(after, "replica_models_on_disk") == 2
    assert value(after, "replica_models_upstream") == 2
    assert 0 <= value(after, "replica_upstream_poll_duration_seconds") < 30
    assert time.time() - value(after, "replica_upstream_last_success_timestamp_seconds") < 30
    # Neither payloads nor credentials reach the log.
    log = r.log()
    assert marker not in log and s3.env["AWS_SECRET_ACCESS_KEY"] not in log


# -- lifecycle and chaos under load -------------------------------------------------------------------------

MALFORMED = [
    {"data": "{not json", "headers": {"Content-Type": "application/json"}},
    {"json": [[1, 2, 3]]},  # wrong width
    {"json": [["a", "b", "c", "d"]]},  # wrong dtype
    {"json": FEATURES, "params": {"model": "no-such-model"}},
    {"json": FEATURES, "params": {"model": "iris", "version": "abc"}},
    {"json": FEATURES, "params": {"model": "iris", "version": "99"}},
    {"data": b"\xff\xfe\x00", "headers": {"Content-Type": "application/json"}},
    {"data": "", "headers": {"Content-Type": "application/json"}},
]


def test_worker_kill_s3_restart_and_malformed_traffic_leave_good_requests_answered(two_workers, s3):
    r = two_workers
    statuses: Counter = Counter()
    with SteadyLoad(r) as load:
        # 1. kill -9 one worker: gunicorn replaces it; /readyz says so until the new one has loaded its models.
        victim = r.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: r.get("/readyz").status_code == 503, timeout=10, interval=0.05,
                 message="/readyz false while a worker is missing")
        wait_for(lambda: r.get("/readyz").status_code == 200, timeout=60, message="/readyz true again")
        assert victim not in r.worker_pids() and len(r.worker_pids()) == 2

        # 2. The S3 server restarts: the models keep serving, polls resume.
        restarted = time.time()
        s3.restart()
        wait_for(lambda: value(scrape(r), "replica_upstream_last_success_timestamp_seconds") > restarted,
                 timeout=30, message="a successful listing after the S3 restart")

        # 3. 1,000 malformed requests, each a clear 4xx.
        session = requests.Session()
        for i in range(1000):
            kw = dict(MALFORMED[i % len(MALFORMED)])
            kw.setdefault("params", {"model": "iris"})
            resp = session.post(r.base + "/", timeout=30, **kw)
            statuses[resp.status_code] += 1
            assert 400 <= resp.status_code < 500, (kw, resp.status_code, resp.text)
            assert "error" in resp.json() and "Traceback" not in resp.text
        time.sleep(1.0)
    assert load.errors == [], load.errors[:5]
    assert load.ok > 50
    assert load.retried <= 3 * 2, "only requests in flight on the killed worker may need a retry"
    assert set(statuses) <= {400, 404}, statuses
    lines = [json.loads(line) for line in r.log().splitlines() if line.strip()]  # every line is JSON
    messages = [line["message"] for line in lines]
    assert any(f"pid:{victim}" in m and "SIGKILL" in m for m in messages), "the log says which worker was killed"
    assert any(m.startswith("listing failed, keeping the previous state") for m in messages), "S3 outage logged"
    assert any(m.startswith("listing") and m.endswith("works again") for m in messages), "S3 recovery logged"
    assert r.get("/healthz").status_code == 200


def test_healthz_fails_while_the_watcher_does_not_poll(two_workers):
    r = two_workers
    assert r.get("/healthz").status_code == 200
    supervisor = psutil.Process(r.proc.pid)
    supervisor.suspend()  # the supervisor, and its watcher, stop: nothing polls upstream any more
    try:
        resp, = wait_for(lambda: (x := r.get("/healthz")).status_code == 503 and [x], timeout=20,
                         message="/healthz failing")  # (a Response is falsy when its status is an error)
        assert "watcher last polled" in resp.json()["error"]
        assert good_request(requests.Session(), r.base) is None, "models already loaded keep serving"
    finally:
        supervisor.resume()
    wait_for(lambda: r.get("/healthz").status_code == 200, timeout=20, message="/healthz back")


def test_sigterm_under_load_drops_no_accepted_request(two_workers, tmp_path):
    """Every request the replica accepted (its predictor saw it) gets its answer; once SIGTERM arrives, new
    connections are refused or reset before any request is read, which a client can safely retry."""
    r = two_workers
    answered: dict[str, str] = {}
    failed: dict[str, str] = {}
    stop = threading.Event()

    def client(n: int):
        i = 0
        while not stop.is_set():
            request_id = f"c{n}-{i}"
            i += 1
            try:
                err = good_request(requests.Session(), r.base, request_id=request_id)
                (failed if err else answered)[request_id] = err or "ok"
            except requests.ConnectionError as e:
                failed[request_id] = str(e)
                if "refused" in str(e).lower():
                    return

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(answered) > 40, timeout=30, message="load running")
    assert r.stop() == 0, r.log()[-2000:]
    stop.set()
    for t in threads:
        t.join(30)
    seen = set((tmp_path / "seen.txt").read_text().split())
    dropped = {i: failed[i] for i in seen if i not in answered}
    assert dropped == {}, dropped
    answers = [e for e in failed.values() if e.startswith(("HTTP ", "wrong answer"))]
    assert answers == [], answers  # no error answers: only connections refused or reset before a request was read
    assert len(seen) >= len(answered) > 40
    assert "replica stopped" in r.log()
