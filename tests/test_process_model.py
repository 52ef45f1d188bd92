"""The process model under faults and operator mistakes: the supervisor owns the listening socket, nothing
outlives it, gunicorn restarts without a bind gap, and start-up errors a restart cannot fix exit 2 at once.

Every test runs a real replica (supervisor + gunicorn) on a local model folder and sends real signals.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import numpy as np
import psutil
import pytest
import requests

from scripts.model_factory import IRIS_BIAS, IRIS_BIAS_V2, IRIS_WEIGHTS, write_python_linear
from tests.helpers import BackgroundLoad, write_api, sync
from tests.replica_proc import ReplicaProcess, wait_for
from tests.predictors import json_predictor, LINEAR

PREDICTOR = json_predictor("""
def predict(self, payload):
    model = self.client.get_model("iris")
    return {"scores": (np.asarray(payload["x"]) @ model["weights"] + model["bias"]).tolist()}
""", load=LINEAR)

X = [5.1, 3.5, 1.4, 0.2]


def iris_spec(folder, **keys):
    write_python_linear(folder / "models" / "iris" / "1", IRIS_WEIGHTS, IRIS_BIAS)
    return write_api(folder, PREDICTOR, type="python", name="iris",
                     models={"paths": [{"name": "iris", "model_path": "models/iris"}]}, **keys)


def family(r: ReplicaProcess) -> list[psutil.Process]:
    """The supervisor's descendants: gunicorn's master and its workers."""
    try:
        return psutil.Process(r.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def refused(port: int) -> bool:
    """True when nothing listens on the port any more."""
    with socket.socket() as s:
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return False


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("error:")]


class Load(BackgroundLoad):
    """Threads sending predictions on fresh connections, recording refused connections and other failures.

    A request reset by a worker killed under it is retried once (what a client library or load balancer does
    for an idempotent call) and counted in `retried`; only a failed retry is a failure."""

    def __init__(self, r: ReplicaProcess, threads: int = 2):
        super().__init__(threads)
        self.r = r
        self.ok = 0
        self.refused: list[float] = []
        self.failed: list[str] = []
        self.last_ok = 0.0
        self.retried = 0
        self.ok_times: list[float] = []

    def client(self, index: int) -> None:
        while not self.stop_event.is_set():
            try:
                try:
                    resp = requests.post(self.r.base + "/", json={"x": X}, timeout=30)
                except requests.ConnectionError as e:
                    if "refused" in str(e).lower():
                        raise
                    self.retried += 1
                    resp = requests.post(self.r.base + "/", json={"x": X}, timeout=30)
                if resp.status_code == 200:
                    self.ok += 1
                    self.last_ok = time.monotonic()
                    self.ok_times.append(self.last_ok)
                else:
                    self.failed.append(f"HTTP {resp.status_code}: {resp.text[:200]}")
            except requests.ConnectionError as e:
                if "refused" in str(e).lower():
                    self.refused.append(time.monotonic())
                else:
                    self.failed.append(str(e))
            except requests.RequestException as e:  # a timeout, a body cut short: a failure too
                self.failed.append(f"{type(e).__name__}: {e}")



# -- the socket belongs to the supervisor ---------------------------------------------------------------------

def test_kill_9_of_gunicorn_master_refuses_no_connection(tmp_path, replica):
    r = replica(iris_spec(tmp_path, processes_per_replica=2))
    master = psutil.Process(r.proc.pid).children()[0]
    with Load(r) as load:
        wait_for(lambda: load.ok > 5, timeout=20, message="load running")
        killed_at = time.monotonic()
        master.kill()
        wait_for(lambda: any(p.pid != master.pid for p in psutil.Process(r.proc.pid).children()), timeout=10,
                 message="a new gunicorn")
        wait_for(lambda: load.last_ok > killed_at, timeout=5, interval=0.05, message="serving again within 5 s")
        resumed = load.last_ok - killed_at
        ok_before = load.ok
        wait_for(lambda: load.ok > ok_before + 5, timeout=10, message="load running on the new gunicorn")
    assert load.refused == [], f"{len(load.refused)} connections refused"
    assert load.failed == [], load.failed[:5]
    assert load.retried <= 2, "at most the requests in flight when the master died"
    assert resumed < 5
    after = [t for t in sorted(load.ok_times) if t >= killed_at]
    gap = max(b - a for a, b in zip([killed_at] + after, after))
    assert gap < 5, f"no answer for {gap:.1f}s"
    print(f"\n[kill -9 gunicorn master] {load.ok} requests answered, {len(load.refused)} refused, "
          f"{load.retried} retried; longest time without an answer after the kill: {gap:.2f}s")
    wait_for(lambda: r.get("/readyz").status_code == 200, timeout=20, message="/readyz back")
    assert "restarting it now" in r.log()


def test_kill_9_of_supervisor_leaves_nothing_serving_and_a_new_one_takes_over(tmp_path, replica):
    spec = iris_spec(tmp_path, processes_per_replica=2)
    state = tmp_path / "state"
    first = replica(spec, state_dir=state)
    orphans = family(first)
    assert len(orphans) == 3
    first.proc.kill()
    first.proc.wait()
    killed = time.monotonic()
    wait_for(lambda: refused(first.port), timeout=5, interval=0.05, message="nothing listening within 5 s")
    silent = time.monotonic() - killed
    gone, alive = psutil.wait_procs(orphans, timeout=5)
    assert alive == [], f"left running: {alive}"

    started = time.monotonic()
    second = replica(spec, state_dir=state, port=first.port, wait=False)
    second.wait_ready(timeout=10, interval=0.05)
    ready = time.monotonic() - started
    assert ready < 10
    print(f"\n[kill -9 supervisor] port refused {silent:.2f}s after the kill; a new supervisor ready in {ready:.2f}s")
    assert second.post("/", json={"x": X}).status_code == 200


def test_new_supervisor_stops_the_leftovers_of_a_killed_one(tmp_path, replica):
    """Processes that survived their supervisor (here: stopped, so no parent-death signal can end them) are
    stopped by the next supervisor on the same state directory before it listens."""
    spec = iris_spec(tmp_path)
    state = tmp_path / "state"
    first = replica(spec, state_dir=state)
    leftovers = family(first)
    for p in leftovers:
        p.suspend()  # a SIGSTOPped process receives its SIGTERM only when continued
    first.proc.kill()
    first.proc.wait()
    try:
        second = replica(spec, state_dir=state, port=first.port, wait=False)
        second.wait_ready(timeout=15)
        gone, alive = psutil.wait_procs(leftovers, timeout=5)
        assert alive == []
        assert "left running" in second.log()
    finally:
        for p in leftovers:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


def test_gunicorn_restart_backoff():
    from supervisor.arbiter import MAX_RESTART_DELAY, restart_delay

    delays = [restart_delay(n) for n in range(1, 12)]
    assert delays[0] == 0.0, "the first restart is immediate"
    assert delays == sorted(delays) and delays[1] > 0
    assert max(delays) == MAX_RESTART_DELAY


# -- start-up errors a restart cannot fix: exit 2, one line, nothing served --------------------------------------

def test_port_in_use_exits_2_naming_the_flags(tmp_path, replica):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = replica(iris_spec(tmp_path), port=port, wait=False)
        assert r.wait_exit(30) == 2
    log = r.log()
    lines = error_lines(log)
    assert len(lines) == 1, log
    assert all(word in lines[0] for word in (str(port), "--port", "REPLICA_PORT", "make run-local PORT=")), lines
    assert "serving on" not in log and "Traceback" not in log
    assert family(r) == []


def test_state_dir_not_writable_exits_2(tmp_path, replica):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.system(f"mount -t tmpfs -o ro,size=1m tmpfs {ro} 2>/dev/null") != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        r = replica(iris_spec(tmp_path), state_dir=ro, wait=False)
        assert r.wait_exit(30) == 2
    finally:
        os.system(f"umount {ro}")
    lines = error_lines(r.log())
    assert len(lines) == 1 and "not writable" in lines[0] and "--state-dir" in lines[0], r.log()
    assert "Traceback" not in r.log()


# -- the spec is read once; SIGHUP re-validates it and rolls the workers -----------------------------------------

TAGGED = PREDICTOR.replace('''        self.client = python_client
''', '''        self.client = python_client
        self.tag = config["tag"]
''').replace('''        return {"scores":''', '''        return {"tag": self.tag, "scores":''')


def tagged_spec(folder, tag: str, model_dir: str = "models/iris", bias=IRIS_BIAS, **keys):
    write_python_linear(folder / model_dir / "1", IRIS_WEIGHTS, bias)
    return write_api(folder, TAGGED, type="python", name="iris", config={"tag": tag},
                     models={"paths": [{"name": "iris", "model_path": model_dir}]}, **keys)


def test_a_broken_spec_file_does_not_reach_a_restarted_worker(tmp_path, replica):
    spec = tagged_spec(tmp_path, "first")
    r = replica(spec)
    spec.write_text(spec.read_text().replace("predictor:", "predictor: [oops"))  # saved with a typo
    victim = r.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(set(r.worker_pids()) - {victim}) == 1, timeout=20, message="a replacement worker")
    wait_for(lambda: r.get("/readyz").status_code == 200, timeout=30, message="/readyz after the replacement")
    resp = r.post("/", json={"x": X})
    assert resp.status_code == 200 and resp.json()["tag"] == "first", resp.text
    assert r.proc.poll() is None


def test_sighup_with_an_invalid_spec_keeps_the_running_one(tmp_path, replica):
    spec = tagged_spec(tmp_path, "first", processes_per_replica=2)
    r = replica(spec)
    workers = set(r.worker_pids())
    spec.write_text(spec.read_text().replace("processes_per_replica", "procesess_per_replica"))
    r.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in r.log(), timeout=20, message="the reload refused in the log")
    assert "procesess_per_replica" in r.log().split("reload refused")[-1]
    assert set(r.worker_pids()) == workers
    assert r.post("/", json={"x": X}).json()["tag"] == "first"


def test_sighup_with_a_valid_spec_replaces_workers_one_at_a_time_without_a_failed_request(tmp_path, replica):
    spec = tagged_spec(tmp_path, "first", processes_per_replica=2)
    r = replica(spec)
    workers = set(r.worker_pids())
    with Load(r) as load:
        wait_for(lambda: load.ok > 5, timeout=20, message="load running")
        tagged_spec(tmp_path, "second", model_dir="models/iris-new", bias=IRIS_BIAS_V2, processes_per_replica=2)  # new config, path
        r.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload done" in r.log(), timeout=60, message="the reload done")
        wait_for(lambda: not (set(r.worker_pids()) & workers), timeout=30, message="old workers gone")
        ok_before = load.ok
        wait_for(lambda: load.ok > ok_before + 5, timeout=10, message="load after the reload")
    assert load.refused == [] and load.failed == [] and load.retried == 0, (load.refused, load.failed[:5])
    print(f"\n[SIGHUP] {load.ok} requests answered during the reload, {len(load.failed)} failed")
    assert r.post("/", json={"x": X}).json()["tag"] == "second"
    assert len(r.worker_pids()) == 2
    expected = (np.asarray(X) @ np.asarray(IRIS_WEIGHTS) + np.asarray(IRIS_BIAS_V2)).tolist()
    wait_for(lambda: r.post("/", json={"x": X}).json()["scores"] == pytest.approx(expected), timeout=30,
             message="the model from the new path served")


def test_predictor_that_does_not_import_exits_2_before_serving(tmp_path, replica):
    import subprocess
    import sys

    spec = write_api(tmp_path, "import no_such_module_4f2a\n\nclass PythonPredictor:\n"
                     "    def __init__(self, config):\n        pass\n\n    def predict(self, payload):\n"
                     "        return payload\n", type="python")
    r = replica(spec, wait=False)
    assert r.wait_exit(60) == 2
    log = r.log()
    assert "no_such_module_4f2a" in log and "line 1 of predictor.py" in log, log
    assert "Traceback" not in log and "serving on" not in log and "Worker failed to boot" not in log
    validate = subprocess.run([sys.executable, "-m", "supervisor.cli", "validate", str(spec)], capture_output=True,
                              text=True, timeout=60)
    assert validate.returncode == 2 and "no_such_module_4f2a" in validate.stderr


# -- a full state disk -------------------------------------------------------------------------------------------

def fill(folder) -> None:
    """Write until the filesystem says ENOSPC."""
    with open(folder / "filler", "wb") as f:
        chunk = b"\0" * (1 << 20)
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    assert os.statvfs(folder).f_bavail == 0


def test_a_full_state_disk_fails_no_request_for_a_loaded_model(tmp_path, replica, small_fs):
    spec = iris_spec(tmp_path, processes_per_replica=2)
    r = replica(spec, state_dir=small_fs / "state", poll_interval=0.5)
    fill(small_fs)
    with Load(r) as load:
        wait_for(lambda: load.ok > 5, timeout=20, message="load running on a full disk")
        for _ in range(2):  # every worker replaced while the disk is full
            victim = r.worker_pids()[0]
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: victim not in r.worker_pids() and len(r.worker_pids()) == 2, timeout=20,
                     message="the worker replaced")
            wait_for(lambda: r.get("/readyz").status_code == 200, timeout=30, message="ready on a full disk")
        for i in range(20):  # new metric label sets on a full disk
            assert r.post("/", json={"x": X}, params={"model": f"m{i}"}).status_code in (200, 404)
        ok_before = load.ok
        wait_for(lambda: load.ok > ok_before + 10, timeout=20, message="load still served")
    assert load.refused == [] and load.failed == [], (load.refused, load.failed[:5])
    assert load.retried <= 2 * 2, "only requests in flight on a killed worker may need a retry"
    assert r.get("/metrics").status_code == 200
    assert "SIGBUS" not in r.log() and "Worker failed to boot" not in r.log()
    assert r.proc.poll() is None
    (small_fs / "filler").unlink()


def test_worker_respawn_backoff():
    from workers.gunicorn_conf import MAX_RESPAWN_DELAY, respawn_delay

    delays = [respawn_delay(n) for n in range(0, 12)]
    assert delays[0] == 0.0 and delays[1] > 0
    assert delays == sorted(delays) and max(delays) == MAX_RESPAWN_DELAY


# -- SIGTERM during a download ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_during_a_large_download_exits_within_the_drain_timeout_holding_the_lock(s3, s3_client, bucket,
                                                                                           tmp_path, replica):
    """200 MB downloading from an S3 server that then stalls mid-transfer: SIGTERM still ends the replica within
    the drain timeout plus a few seconds, and the state directory stays locked until the process is gone."""
    from filelock import FileLock, Timeout

    big = tmp_path / "model.bin"
    with open(big, "wb") as f:
        f.truncate(200 << 20)
    s3_client.upload_file(str(big), bucket, "models/big/1/model.bin")
    big.unlink()
    spec = write_api(tmp_path / "api", PREDICTOR, type="python", name="big",
                     models={"paths": [{"name": "big", "model_path": f"s3://{bucket}/models/big/"}]})
    state = tmp_path / "state"
    drain = 3
    r = replica(spec, env=s3.env, state_dir=state, wait=False, extra_args=("--drain-timeout", str(drain)))

    def downloading() -> bool:
        return any(p.is_file() and p.stat().st_size > (1 << 20) for p in (state / "tmp").rglob("*"))

    wait_for(downloading, timeout=60, interval=0.02, message="the download under way")
    weed = psutil.Process(s3.proc.pid)
    weed.suspend()  # the upstream stalls mid-transfer
    try:
        started = time.monotonic()
        r.proc.send_signal(signal.SIGTERM)
        lock = FileLock(str(state / "replica.lock"))
        while r.proc.poll() is None:
            with pytest.raises(Timeout):
                lock.acquire(timeout=0)  # nobody else may take the state directory while it runs
            assert time.monotonic() - started < drain + 5, "still running past the drain timeout + 5 s"
            time.sleep(0.05)
        elapsed = time.monotonic() - started
    finally:
        weed.resume()
    assert r.proc.returncode == 0, r.log()[-2000:]
    assert elapsed < drain + 5
    print(f"\n[SIGTERM mid-download] exited {elapsed:.2f}s after SIGTERM (drain timeout {drain}s)")
    lock.acquire(timeout=0)
    lock.release()
    assert "replica stopped" in r.log()


@pytest.mark.slow
def test_healthz_stays_up_through_a_slow_download(s3, s3_client, bucket, tmp_path, replica):
    """An S3 server that sends a large file slowly (paused most of the time): the watcher loop goes on while
    the download runs on its own thread, so the heartbeat stays fresh and /healthz says alive for longer than
    its timeout."""
    big = tmp_path / "model.bin"
    with open(big, "wb") as f:
        f.truncate(200 << 20)
    s3_client.upload_file(str(big), bucket, "models/big/1/model.bin")
    big.unlink()
    write_python_linear(tmp_path / "api" / "models" / "iris" / "1", IRIS_WEIGHTS, IRIS_BIAS)
    spec = write_api(tmp_path / "api", PREDICTOR, type="python", name="big", models={"paths": [
        {"name": "iris", "model_path": "models/iris"},
        {"name": "big", "model_path": f"s3://{bucket}/models/big/"}]})
    state = tmp_path / "state"
    r = replica(spec, env=s3.env, state_dir=state, wait=False, extra_args=("--heartbeat-timeout", "3"))
    wait_for(lambda: any(p.is_file() and p.stat().st_size > 0 for p in (state / "tmp").rglob("*")), timeout=60,
             interval=0.02, message="the download under way")
    weed = psutil.Process(s3.proc.pid)
    statuses = []
    started = time.monotonic()
    try:
        while not (state / "models" / "big" / "1").exists() and time.monotonic() - started < 10:
            weed.suspend()  # sending about 3% of the time
            time.sleep(0.9)
            weed.resume()
            time.sleep(0.03)
            statuses.append(r.get("/healthz", timeout=5).status_code)
    finally:
        weed.resume()
    assert time.monotonic() - started > 6, "the download must outlast the heartbeat timeout (3 s) for this test"
    assert set(statuses) == {200}, statuses


# -- a hung worker ---------------------------------------------------------------------------------------------------

def test_a_hung_worker_is_reported_by_healthz_then_replaced_after_the_worker_timeout(tmp_path, replica):
    r = replica(iris_spec(tmp_path, processes_per_replica=2), extra_args=("--worker-timeout", "12"))
    assert r.get("/healthz").status_code == 200
    victim = psutil.Process(r.worker_pids()[0])
    hung_at = time.monotonic()
    victim.suspend()  # hung: its main loop no longer runs
    try:
        # /healthz, answered by the other worker, says so (after 5 s of silence) before the master's 12 s are up.
        unhealthy = wait_for(lambda: (x := r.get("/healthz")).status_code == 503 and [x], timeout=11,
                             message="/healthz reporting the hung worker")[0]
        assert f"{victim.pid} for " in unhealthy.json()["error"] and "--worker-timeout 12s" in unhealthy.json()["error"]
        assert time.monotonic() - hung_at >= 4.5  # its last beat came up to a beat interval before the pause
        wait_for(lambda: not victim.is_running() or victim.status() == psutil.STATUS_ZOMBIE, timeout=20,
                 message="the hung worker killed")
        wait_for(lambda: len(r.worker_pids()) == 2 and victim.pid not in r.worker_pids(), timeout=15,
                 message="a replacement")
        wait_for(lambda: r.get("/readyz").status_code == 200, timeout=30, message="ready again")
    finally:
        if victim.is_running():
            victim.kill()
    assert f"WORKER TIMEOUT (pid:{victim.pid})" in r.log()
    assert r.get("/healthz").status_code == 200
    assert r.post("/", json={"x": X}).status_code == 200


# -- upstream problems are visible; the local upstream stays inside its root -------------------------------------

def test_a_missing_bucket_shows_in_readyz_models_and_once_in_the_log(s3, tmp_path, replica):
    spec = write_api(tmp_path, PREDICTOR, type="python", name="iris",
                     models={"paths": [{"name": "iris", "model_path": "s3://no-such-bucket-7c1d/models/iris/"}]})
    r = replica(spec, env=s3.env, wait=False, poll_interval=0.2)
    resp = wait_for(lambda: (x := r.get("/readyz")).status_code == 503 and "NoSuchBucket" in x.text and [x],
                    timeout=30, message="/readyz naming the error")[0]
    assert s3.endpoint_url not in resp.text and "environment variables" in resp.json()["error"]  # the log has it
    errors = r.get("/v1/models").json()["upstream_errors"]
    assert list(errors) == ["s3://no-such-bucket-7c1d/models/iris/"] and "NoSuchBucket" in errors[list(errors)[0]]
    wait_for(lambda: r.log().count("NoSuchBucket") >= 1, timeout=10, message="the log line")
    time.sleep(1.0)  # several polls more: the error is still logged once
    assert r.log().count("NoSuchBucket") == 1, r.log()
    assert "keeping the previous state" not in r.log()


def test_local_upstream_follows_no_symlink_out_of_its_root_and_a_loop_stays_in_its_model(tmp_path, replica):
    models = tmp_path / "models"
    write_python_linear(models / "iris" / "1", IRIS_WEIGHTS, IRIS_BIAS)
    (models / "link" / "1").mkdir(parents=True)
    (models / "link" / "1" / "passwd").symlink_to("/etc/passwd")
    (models / "link" / "1" / "model.json").symlink_to(models / "iris" / "1" / "model.json")  # inside: followed
    (models / "loop" / "1").mkdir(parents=True)
    (models / "loop" / "1" / "a").symlink_to(models / "loop" / "1" / "b")
    (models / "loop" / "1" / "b").symlink_to(models / "loop" / "1" / "a")
    (models / "loop" / "1" / "up").symlink_to(models)  # a folder loop
    spec = write_api(tmp_path, PREDICTOR, type="python", name="iris", models={"dir": str(models)})
    state = tmp_path / "state"
    r = replica(spec, state_dir=state)
    assert r.post("/", json={"x": X}).status_code == 200
    copied = [p for p in (state / "models").rglob("*") if p.is_file()]
    assert not [p for p in copied if p.name == "passwd"], copied
    assert (state / "models" / "link" / "1" / "model.json").is_file()
    status = {m["name"]: m for m in r.get("/v1/models").json()["models"]}
    assert set(status) >= {"iris", "link"}
    assert r.get("/v1/models").json()["upstream_errors"] == {}
    log = r.log()
    assert "skipping link/1/passwd: a symlink to /etc/passwd" in log
    assert "skipping loop/1/a" in log and "skipping loop/1/up" in log


def test_a_failing_download_backs_off_per_version(tmp_path):
    from replica.disktree import DiskTree
    from replica.spec import load_spec
    from supervisor.catalogue import Catalogue
    from supervisor.upstream import LocalUpstream, UpstreamError
    from supervisor.watcher import Watcher

    write_python_linear(tmp_path / "models" / "bad" / "1", IRIS_WEIGHTS, IRIS_BIAS)
    write_python_linear(tmp_path / "models" / "good" / "1", IRIS_WEIGHTS, IRIS_BIAS)
    predictor = load_spec(write_api(tmp_path, PREDICTOR, type="python", models={"dir": "models"})).predictor
    fetched = []

    class Failing(LocalUpstream):
        def fetch(self, obj, dest, progress=None):
            fetched.append(obj.key)
            if obj.key.startswith("bad/"):
                raise UpstreamError("network down", "network down")
            return super().fetch(obj, dest, progress)

    upstreams = [(s, Failing(s.url)) for s in predictor.sources]
    w = Watcher(DiskTree(tmp_path / "state"), Catalogue(predictor, upstreams), poll_interval=60)
    w.start()
    for _ in range(3):
        sync(w)
    assert fetched.count("bad/1/model.json") == 1, "not downloaded again on every poll"
    assert "network down" in w.status()["bad"]["versions"]["1"]["error"]
    assert w.status()["good"]["versions"]["1"]["disk"] is True
    (tmp_path / "models" / "bad" / "1" / "model.json").write_text("{}")  # changed upstream: tried at once
    sync(w)
    assert fetched.count("bad/1/model.json") == 2


# -- logs -------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["text", "json"])
def test_one_access_line_per_request_in_both_formats_and_none_with_no_access_log(tmp_path, replica, fmt):
    import json

    r = replica(iris_spec(tmp_path / "on"), extra_args=("--log-format", fmt))
    marker = f"/?marker-{fmt}-8d2e"
    for _ in range(3):
        assert r.post(marker, json={"x": X}).status_code == 200
    wait_for(lambda: r.log().count(marker) >= 3, timeout=10, message="access lines")
    assert r.post("/nope", json={"x": X}).status_code == 404
    wait_for(lambda: "/nope" in r.log(), timeout=10, message="the 404's access line")
    time.sleep(0.5)  # a duplicate would be written at the same moment as the original
    lines = [line for line in r.log().splitlines() if marker in line]
    assert len(lines) == 3, lines
    if fmt == "json":
        records = [json.loads(line) for line in r.log().splitlines() if line.strip()]  # every line is JSON
        access = [rec for rec in records if marker in rec["message"]]
        assert all(rec["process"] == "access" and " 200 " in rec["message"] for rec in access), access
    else:
        assert all("[access " in line and '" 200 ' in line for line in lines), lines

    quiet = replica(iris_spec(tmp_path / "off"), extra_args=("--log-format", fmt, "--no-access-log"))
    assert quiet.post(marker, json={"x": X}).status_code == 200
    time.sleep(0.5)
    assert marker not in quiet.log()


# -- systemd -------------------------------------------------------------------------------------------------------

def test_systemd_notify_ready_watchdog_and_stopping(tmp_path, replica):
    """What a Type=notify unit with WatchdogSec gets, read from a real notify socket."""
    path = tmp_path / "notify.sock"
    received: list[str] = []
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    done = threading.Event()
    listening_at_ready: list[bool] = []

    def listen() -> None:
        while not done.is_set():
            try:
                message = sock.recv(4096).decode()
            except socket.timeout:
                continue
            if "READY=1" in message and not listening_at_ready:
                listening_at_ready.append(not refused(r.port))
            received.append(message)

    r = ReplicaProcess(iris_spec(tmp_path), tmp_path / "state", env={"NOTIFY_SOCKET": str(path),
                                                                      "WATCHDOG_USEC": "1000000"})
    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    r.start()
    try:
        r.wait_ready()
        wait_for(lambda: sum("WATCHDOG=1" in m for m in received) >= 3, timeout=10, message="watchdog pings")
    finally:
        assert r.stop() == 0
        done.set()
        thread.join(5)
        sock.close()
    assert any(m.startswith("READY=1") and f"MAINPID={r.proc.pid}" in m for m in received), received
    assert listening_at_ready == [True], "READY=1 only once the port accepts connections"
    assert received[-1] == "STOPPING=1", received[-3:]


def test_service_unit_is_hardened_and_verifies(tmp_path):
    """`make service-unit` renders the unit (no install); systemd-analyze verifies it and rates its exposure."""
    import re
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    build = tmp_path / "build"
    subprocess.run(["make", "-s", "-C", str(root), "service-unit", f"BUILD={build}", "SERVICE_USER=root",
                    "PREFIX=/opt/replica"], check=True, capture_output=True, text=True, timeout=120)
    unit = (build / "replica.service").read_text()
    assert not re.search(r"@[A-Z]+@", unit), "every placeholder filled in"
    lines = unit.splitlines()
    assert {"Type=notify", "RestartPreventExitStatus=2", "User=root", "RuntimeDirectory=replica"} <= set(lines)
    assert "ExecStart=/opt/replica/.venv/bin/replica serve /opt/replica/examples/onnx/api.yaml" in lines
    watchdog = next(int(x.split("=")[1]) for x in lines if x.startswith("WatchdogSec="))
    stop = next(int(x.split("=")[1]) for x in lines if x.startswith("TimeoutStopSec="))
    assert stop > 30 + 2, "the stop timeout leaves the default drain (30 s) its time"
    assert watchdog > 60, "above the default heartbeat timeout"
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(build / "replica.service")],
                              capture_output=True, text=True, timeout=60)
    level = re.search(r"Overall exposure level for replica.service: ([\d.]+) (\w+)", security.stdout)
    assert level, security.stdout[-500:] + security.stderr
    assert float(level.group(1)) < 5.0 and level.group(2) in ("OK", "SAFE", "PERFECT"), level.group(0)


def test_version_and_the_core_imports_nothing_from_the_supervisor():
    import ast
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run([sys.executable, "-m", "supervisor.cli", "--version"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("replica "), out
    core = Path(__file__).resolve().parent.parent / "replica"
    for module in core.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.split(".")[0] in ("supervisor", "workers")], (module.name, names)


def test_an_invalid_version_is_logged_once_with_its_reason(tmp_path, replica):
    from scripts.model_factory import write_onnx_linear

    models = tmp_path / "models"
    write_onnx_linear(models / "iris" / "1" / "model.onnx", IRIS_WEIGHTS, IRIS_BIAS)
    for name in ("a.onnx", "b.onnx"):
        write_onnx_linear(models / "twice" / "1" / name, IRIS_WEIGHTS, IRIS_BIAS)
    spec = write_api(tmp_path, """
        class ONNXPredictor:
            def __init__(self, onnx_client, config):
                self.client = onnx_client

            def predict(self, payload, query_params):
                return self.client.predict(payload, query_params["model"])[1].tolist()
    """, type="onnx", models={"dir": str(models)})
    r = replica(spec, poll_interval=0.2)
    assert r.post("/", params={"model": "iris"}, json=[X]).status_code == 200
    wait_for(lambda: "model twice version 1 is invalid" in r.log(), timeout=10, message="the invalid version logged")

    def list_calls() -> float:
        line = next(x for x in r.get("/metrics").text.splitlines() if x.startswith("replica_upstream_list_calls_total"))
        return float(line.split()[-1])

    calls = list_calls()
    wait_for(lambda: list_calls() >= calls + 3, timeout=10, message="three more polls")
    assert r.log().count("model twice version 1 is invalid") == 1, "logged once, not on every poll"
    line = next(x for x in r.log().splitlines() if "model twice version 1 is invalid" in x)
    assert ".onnx" in line, line


def test_workers_that_die_as_they_start_are_respawned_with_backoff(tmp_path, replica):
    """A worker that crashes at start (here: its predictor kills its process while a flag file exists) is
    started again with a growing delay, not thousands of times a minute; once the cause is gone it serves."""
    flag = tmp_path / "crash"
    crashing = PREDICTOR.replace('''        self.client = python_client
''', f'''        self.client = python_client
        if os.path.exists({str(flag)!r}):
            os._exit(1)
''')
    write_python_linear(tmp_path / "models" / "iris" / "1", IRIS_WEIGHTS, IRIS_BIAS)
    spec = write_api(tmp_path, crashing, type="python", name="iris", processes_per_replica=2,
                     models={"paths": [{"name": "iris", "model_path": "models/iris"}]})
    r = replica(spec)
    flag.touch()
    os.kill(r.worker_pids()[0], signal.SIGKILL)
    wait_for(lambda: "starting the next in" in r.log(), timeout=30, message="the respawn delay logged")
    started = time.monotonic()
    deaths_before = r.log().count("exited with code 1")
    wait_for(lambda: time.monotonic() - started > 6, timeout=10, interval=0.5)
    deaths = r.log().count("exited with code 1") - deaths_before
    assert deaths < 8, f"{deaths} worker deaths in 6 s"
    assert r.post("/", json={"x": X}).status_code == 200, "the surviving worker keeps serving"
    flag.unlink()
    wait_for(lambda: r.get("/readyz").status_code == 200, timeout=30, message="both workers back")
