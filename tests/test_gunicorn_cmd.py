"""What the supervisor starts gunicorn with: the inherited socket, the replica's worker class, the settings."""

from __future__ import annotations

from pathlib import Path

from replica.disktree import DiskTree
from replica.spec import load_spec
from supervisor.gunicorn_cmd import gunicorn_command, gunicorn_env
from supervisor.settings import Settings
from tests.helpers import write_api


def _api(tmp_path: Path):
    spec = write_api(tmp_path, "class PythonPredictor:\n    def __init__(self, config):\n        pass\n\n"
                               "    def predict(self, payload):\n        return payload\n",
                     type="python", name="echo", processes_per_replica=3, threads_per_process=4,
                     env={"GREETING": "hi"})
    return load_spec(spec)


def test_command_inherits_the_socket_and_sizes_gunicorn_from_the_spec(tmp_path):
    s = Settings(state_dir=tmp_path / "state", worker_timeout=12.4, drain_timeout=7, keep_alive=0)
    cmd = gunicorn_command(_api(tmp_path), s, 9, tmp_path / "run")
    opts = dict(zip(cmd[3:-1:2], cmd[4:-1:2]))
    assert opts["--bind"] == "fd://9"  # never a host:port of its own: no bind gap on a restart
    assert (opts["--workers"], opts["--threads"]) == ("3", "4")
    assert opts["--worker-class"] == "workers.front.FrontWorker"
    assert (opts["--timeout"], opts["--graceful-timeout"], opts["--keep-alive"]) == ("12", "7", "0")
    assert opts["--worker-tmp-dir"] == str(tmp_path / "run")
    assert cmd[-1] == "workers.wsgi:application"


def test_env_carries_settings_and_the_spec_env_but_not_systemds_socket(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    api = _api(tmp_path)
    tree = DiskTree(tmp_path / "state", runtime=tmp_path / "run")
    env = gunicorn_env(api, Settings(state_dir=tree.root, header_timeout=3), tree, tmp_path / "run" / "spec.json")
    assert "NOTIFY_SOCKET" not in env and "WATCHDOG_USEC" not in env  # only the supervisor talks to systemd
    assert env["GREETING"] == "hi"
    assert env["REPLICA_SPEC_FILE"] == str(tmp_path / "run" / "spec.json")
    assert "REPLICA_SPEC_PICKLE" not in env  # the workers are never handed a pickle
    assert env["REPLICA_HEADER_TIMEOUT"] == "3"
    assert env["REPLICA_MAX_REPLICA_CONCURRENCY"] == "1024"
    assert env["PROMETHEUS_MULTIPROC_DIR"] == str(tree.metrics_dir)


def test_env_carries_the_grpc_port_and_the_host_it_binds(tmp_path):
    api = _api(tmp_path)
    tree = DiskTree(tmp_path / "state", runtime=tmp_path / "run")
    spec_file = tmp_path / "run" / "spec.json"
    off = gunicorn_env(api, Settings(state_dir=tree.root), tree, spec_file)
    assert off["REPLICA_GRPC_PORT"] == "0"  # off, whatever the supervisor's own environment said
    on = gunicorn_env(api, Settings(state_dir=tree.root, host="0.0.0.0", grpc_port=8001), tree, spec_file)
    assert (on["REPLICA_HOST"], on["REPLICA_GRPC_PORT"]) == ("0.0.0.0", "8001")
