"""The disk tree vanishing under a running replica: the state directory, its lock file, the runtime folder.

Every test runs a real replica (supervisor + gunicorn) on a local model folder and removes folders from under
it with `shutil.rmtree`, as an operator's `rm -rf` would. Conditions are awaited with bounded polls.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import psutil
import requests

from replica.disktree import DiskTree
from scripts.model_factory import IRIS_BIAS, IRIS_WEIGHTS, write_python_linear
from tests.helpers import BackgroundLoad, write_api
from tests.predictors import LINEAR, json_predictor
from tests.replica_proc import ReplicaProcess, wait_for
from tests.test_process_model import X, iris_spec

def answers(r: ReplicaProcess) -> bool:
    try:
        return r.post("/", json={"x": X}, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def readyz(r: ReplicaProcess) -> tuple[int, str]:
    try:
        resp = r.get("/readyz", timeout=5)
    except requests.RequestException as e:
        return 0, str(e)
    return resp.status_code, resp.text


class Load(BackgroundLoad):
    """Predictions in a loop; counts the answers by status (0: no answer)."""

    def __init__(self, r: ReplicaProcess, clients: int = 2):
        super().__init__(clients)
        self.r = r
        self.codes: dict[int, int] = {}
        self._lock = threading.Lock()

    def client(self, index: int) -> None:
        with requests.Session() as s:
            while not self.stop_event.is_set():
                try:
                    code = s.post(self.r.base + "/", json={"x": X}, timeout=10).status_code
                except requests.RequestException:
                    code = 0
                with self._lock:
                    self.codes[code] = self.codes.get(code, 0) + 1
                time.sleep(0.02)


def no_traceback(r: ReplicaProcess) -> None:
    log = r.log()
    assert "Traceback" not in log, log[-4000:]


def test_removed_state_dir_is_noticed_remade_and_served_from_again(tmp_path, replica):
    """rm -rf of the state directory under traffic: /readyz says so (503 naming it), the folder and the
    model are back within a few polls, /readyz is 200 again, and a worker started afterwards serves."""
    spec = iris_spec(tmp_path / "api", processes_per_replica=2)
    state = tmp_path / "state"
    r = replica(spec, state_dir=state)
    assert answers(r)
    with Load(r) as load:
        shutil.rmtree(state)
        code, body = wait_for(lambda: (lambda c: c if c[0] == 503 and "state directory" in c[1] else None)(readyz(r)),
                              timeout=10, interval=0.1, message="/readyz 503 naming the state directory")
        assert str(state) in body
        wait_for(lambda: readyz(r)[0] == 200, timeout=20, interval=0.2, message="/readyz 200 again")
        assert (state / "models" / "iris" / "1" / "model.json").is_file(), "the model was not fetched again"
        assert (state / "replica.lock").is_file()
    assert load.codes.get(200), load.codes
    assert answers(r)

    old = r.worker_pids()
    os.kill(old[0], signal.SIGKILL)
    wait_for(lambda: len(set(r.worker_pids()) - set(old)) == 1, timeout=20, message="a new worker")
    wait_for(lambda: readyz(r)[0] == 200, timeout=20, message="/readyz 200 after the worker kill")
    results = [answers(r) for _ in range(30)]
    assert all(results), f"{results.count(False)} of {len(results)} requests failed after the worker restart"
    assert r.proc.poll() is None
    no_traceback(r)


def removed(path) -> bool:
    """One try at `rm -rf path` under a replica that keeps writing into it (a file made while the tree is
    removed leaves its folder not empty: the next try takes it)."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def test_second_replica_refused_after_the_state_dir_went(tmp_path, replica):
    """The lock file went with the folder, yet a second supervisor on the same state directory exits 2 ("in
    use") while the first lives, and its exit leaves the first one's runtime folder in place."""
    spec = iris_spec(tmp_path / "api")
    state = tmp_path / "state"
    first = replica(spec, state_dir=state)
    wait_for(lambda: removed(state), timeout=10, interval=0.05, message="the state directory removed")
    second = ReplicaProcess(spec, state).start()
    try:
        assert second.wait_exit(30) == 2, second.log()[-3000:]
    finally:
        second.stop()
    assert "in use" in second.log(), second.log()[-3000:]
    assert "Traceback" not in second.log()
    run = DiskTree(state).run
    assert (run / "heartbeat").exists(), "the second replica removed the first one's runtime folder"
    wait_for(lambda: readyz(first)[0] == 200, timeout=20, message="the first replica ready again")
    assert answers(first)
    # and once the first one has re-taken the lock in the re-made folder, that one refuses too
    third = ReplicaProcess(spec, state).start()
    try:
        assert third.wait_exit(30) == 2, third.log()[-3000:]
    finally:
        third.stop()
    assert first.proc.poll() is None
    assert answers(first)


def test_removed_runtime_folder_is_remade_and_gunicorn_restarts_into_it(tmp_path, replica):
    """The runtime folder removed (heartbeat, readiness markers, feed, spec): it is made again, a killed worker's
    replacement starts and serves, and a gunicorn restarted while it is gone does not crash the supervisor."""
    spec = iris_spec(tmp_path / "api")
    state = tmp_path / "state"
    r = replica(spec, state_dir=state)
    run = DiskTree(state).run
    shutil.rmtree(run)
    wait_for(lambda: (run / "feed.sqlite").exists() and (run / "spec.json").exists()
             and (run / "heartbeat").exists(), timeout=10, interval=0.1, message="the runtime folder made again")
    wait_for(lambda: readyz(r)[0] == 200, timeout=10, message="/readyz 200 with the re-made folder")
    old = r.worker_pids()
    os.kill(old[0], signal.SIGKILL)
    wait_for(lambda: set(r.worker_pids()) - set(old), timeout=20, message="a new worker")
    wait_for(lambda: readyz(r)[0] == 200 and answers(r), timeout=20, message="serving after the worker kill")

    # gone again, and gunicorn dies before the supervisor's next check: it is started into a re-made folder
    master = psutil.Process(r.proc.pid).children()[0]
    shutil.rmtree(run)
    master.kill()
    wait_for(lambda: readyz(r)[0] == 200 and answers(r), timeout=25, message="serving after gunicorn's restart")
    assert r.proc.poll() is None, r.log()[-3000:]
    assert healthz_ok(r)
    no_traceback(r)


def healthz_ok(r: ReplicaProcess) -> bool:
    try:
        return r.get("/healthz", timeout=5).status_code == 200
    except requests.RequestException:
        return False


# -- the pieces, without a replica ------------------------------------------------------------------------------

def test_owner_lock_notices_its_file_removed_and_a_newcomer_cannot_take_both(tmp_path):
    from supervisor.tree_guard import OwnerLock

    path = tmp_path / "state" / "replica.lock"
    mine, other = OwnerLock(path), OwnerLock(path)
    assert mine.acquire() and mine.intact()
    assert not other.acquire()  # flock is per open file: a second descriptor is refused, even in this process
    path.unlink()
    assert not mine.intact(), "a lock on an unlinked file must not count as held"
    assert other.acquire() and other.intact()  # the newcomer got a new file: what the outer lock is for
    assert not mine.acquire()
    assert other.holder() == str(os.getpid())


def test_guard_reports_an_unwritable_state_dir_and_clears_it(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from supervisor import tree_guard
    from supervisor.versions import VersionTable

    tree = DiskTree(tmp_path / "state", tmp_path / "run")
    tree.prepare()
    (tree.run / "feed.sqlite").touch()
    published = []
    watcher = SimpleNamespace(lock=threading.RLock(), installed={}, versions=VersionTable(), state_dir_error=None,
                              failures=0,
                              last_pass=None, poll_seconds=None, wake=lambda: None, downloads_in_flight=0,
                              publish=lambda: published.append(watcher.state_dir_error), reopen_feed=lambda: None)
    guard = tree_guard.TreeGuard(tree, watcher)
    guard.take()
    guard.started()
    guard.check()
    assert watcher.state_dir_error is None and not published
    monkeypatch.setattr(tree_guard, "_writable", lambda path: False)
    guard.check()
    assert "not writable" in watcher.state_dir_error and str(tree.root) in watcher.state_dir_error
    monkeypatch.setattr(tree_guard, "_writable", lambda path: True)
    guard.check()
    assert watcher.state_dir_error is None
    assert len(published) == 2

    shutil.rmtree(tree.root)  # removed: made again, and the error waits for a pass that started after that
    guard.check()
    assert "was removed" in watcher.state_dir_error and tree.models.is_dir() and guard.inner.intact()
    guard.check()
    assert watcher.state_dir_error is not None
    watcher.last_pass, watcher.poll_seconds = time.time() + 1, 0.5
    guard.check()
    assert watcher.state_dir_error is None


def test_removed_runtime_folder_with_caching_binds_the_control_socket_again(tmp_path, replica):
    """With model caching a miss asks the supervisor over the control socket, which lives in the runtime
    folder: once the folder is made again, a model not yet on disk is fetched and served."""
    folder = tmp_path / "api"
    for name in ("a", "b"):
        write_python_linear(folder / "models" / name / "1", IRIS_WEIGHTS, IRIS_BIAS)
    spec = write_api(folder, json_predictor("""
def predict(self, payload, query_params):
    model = self.client.get_model(query_params["model"])
    return {"scores": (np.asarray(payload["x"]) @ model["weights"] + model["bias"]).tolist()}
""", load=LINEAR), type="python", name="cached", models={
        "paths": [{"name": n, "model_path": f"models/{n}"} for n in ("a", "b")], "cache_size": 1, "disk_cache_size": 1})
    state = tmp_path / "state"
    r = replica(spec, state_dir=state)
    assert r.post("/?model=a", json={"x": X}).status_code == 200
    run = DiskTree(state).run
    shutil.rmtree(run)
    wait_for(lambda: (run / "supervisor.sock").exists() and (run / "feed.sqlite").exists(), timeout=10,
             interval=0.1, message="the runtime folder and its control socket made again")
    wait_for(lambda: r.post("/?model=b", json={"x": X}, timeout=10).status_code == 200, timeout=20,
             message="model b fetched through the control socket")
    assert (state / "models" / "b" / "1" / "model.json").is_file()
    assert r.post("/?model=a", json={"x": X}).status_code == 200
    no_traceback(r)
