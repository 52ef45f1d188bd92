"""Shared pytest fixtures. Keep each concern in its own section."""
import uuid

import pytest

from tests.s3server import SeaweedS3, delete_bucket


# ==========================================================================
# pytest configuration (markers)
# ==========================================================================

def pytest_configure(config):
    config.addinivalue_line("markers", "slow: test takes more than ~15 s; left out of `make test`")
    config.addinivalue_line("markers", "tensorflow: imports TensorFlow (slow to import); runs by default")
    config.addinivalue_line("markers", "frameworks: needs the `frameworks` extra (PyTorch, MLflow, scikit-learn, "
                                       "pandas); runs by default")


# ==========================================================================
# S3 (SeaweedFS `weed mini` on 127.0.0.1) -- helpers live in tests/s3server.py
# ==========================================================================

@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A running SeaweedS3 for the whole session (bucket "models" pre-made).

    Tests may call s3.restart() / s3.stop()+s3.start()+s3.wait_ready() to
    simulate an outage; the fixture must be left running afterwards."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"), buckets=["models"])
    server.start()
    try:
        server.wait_ready(timeout=60)
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_client(s3):
    """A boto3 S3 client for the `s3` server."""
    return s3.client()


@pytest.fixture
def bucket(s3, s3_client):
    """A fresh, empty, uniquely named bucket; emptied and deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    yield name
    try:
        if not s3.running:  # a test left the server stopped: bring it back
            s3.start()
            s3.wait_ready()
        delete_bucket(s3_client, name)
    except Exception:
        pass


# ==========================================================================
# Replica processes (supervisor + gunicorn) -- helpers in tests/replica_proc.py
# ==========================================================================

@pytest.fixture
def replica(tmp_path):
    """A factory: replica(spec_path, **kw) starts a real replica and waits for /readyz.

    Every replica started is stopped by PID at the end of the test."""
    from tests.replica_proc import ReplicaProcess

    started = []

    def start(spec, *, wait=True, state_dir=None, **kw):
        r = ReplicaProcess(spec, state_dir or tmp_path / f"state-{len(started)}", **kw)
        started.append(r)
        r.start()
        if wait:
            r.wait_ready()
        return r

    yield start
    for r in started:
        r.stop()


@pytest.fixture
def small_fs(tmp_path):
    """A 16 MiB tmpfs (a state disk that fills up), unmounted at the end."""
    import os

    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.system(f"mount -t tmpfs -o size=16m tmpfs {mnt} 2>/dev/null") != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    os.system(f"umount -l {mnt}")


@pytest.fixture(scope="session", autouse=True)
def runtime_dir(tmp_path_factory):
    """Runtime folders (heartbeat, readiness markers, metrics) of the replicas the tests start, in one place that
    pytest cleans up, instead of /dev/shm."""
    import os

    folder = tmp_path_factory.mktemp("runtime")
    before = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("XDG_RUNTIME_DIR", None)
    else:
        os.environ["XDG_RUNTIME_DIR"] = before


@pytest.fixture
def memory_cgroup():
    """A factory: memory_cgroup(limit_bytes) makes a memory cgroup (v2 `memory.max` or v1
    `memory.limit_in_bytes`) with that limit and returns its folder; removed at the end. Skips where the
    machine has no memory controller this user can make groups in."""
    import os
    import uuid
    from pathlib import Path

    made = []

    def make(limit: int) -> Path:
        v2 = Path("/sys/fs/cgroup/cgroup.subtree_control")
        if v2.exists() and "memory" in v2.read_text().split():
            root, limit_file = v2.parent, "memory.max"
        elif Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists():
            root, limit_file = Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"
        else:
            pytest.skip("no memory cgroup controller on this machine (neither v2 memory.max nor v1 memory)")
        group = root / f"replica-test-{uuid.uuid4().hex[:8]}"
        try:
            group.mkdir()
            (group / limit_file).write_text(str(limit))
        except OSError as e:
            pytest.skip(f"cannot make a memory cgroup under {root}: {e}")
        made.append(group)
        return group

    yield make
    for group in made:
        for pid in (group / "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                import time

                time.sleep(0.1)
