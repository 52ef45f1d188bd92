"""The runtime folder (replica/private_dir.py): made fresh and private, a planted one refused at start-up."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from replica.disktree import DiskTree, runtime_dir
from replica.private_dir import UnsafeDirectory, make_private_dir
from tests.helpers import write_api
from tests.replica_proc import free_port

OTHER_UID = 54321  # no such user is needed: root can give a folder to any uid
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make folders of another user")


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_fresh_runtime_folder_is_private_whatever_the_umask(tmp_path):
    old = os.umask(0o277)  # a umask that would take the owner's write and search bits
    try:
        made = make_private_dir(tmp_path / "run")
    finally:
        os.umask(old)
    assert made == tmp_path / "run" and _mode(made) == 0o700 and os.lstat(made).st_uid == os.geteuid()


def test_our_own_leftover_is_adopted_with_its_contents(tmp_path):
    tree = DiskTree(tmp_path / "state", runtime=tmp_path / "run")
    tree.prepare()
    (tree.run / "heartbeat").write_text("x")
    DiskTree(tmp_path / "state", runtime=tmp_path / "run").prepare()  # a restart after a crash
    assert (tree.run / "heartbeat").read_text() == "x" and _mode(tree.run) == 0o700


@root_only
def test_a_folder_of_another_user_is_refused(tmp_path):
    planted = tmp_path / "run"
    planted.mkdir(mode=0o700)
    os.chown(planted, OTHER_UID, OTHER_UID)
    with pytest.raises(UnsafeDirectory, match=f"{planted} belongs to uid {OTHER_UID}"):
        DiskTree(tmp_path / "state", runtime=planted).prepare()


def test_a_symlink_is_refused_even_to_a_private_folder_of_ours(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (tmp_path / "run").symlink_to(target)
    with pytest.raises(UnsafeDirectory, match="is a symlink"):
        make_private_dir(tmp_path / "run")


def test_a_folder_of_ours_with_a_looser_mode_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    os.chmod(tmp_path / "run", 0o755)
    with pytest.raises(UnsafeDirectory, match="mode 0755"):
        make_private_dir(tmp_path / "run")


def test_a_file_in_its_place_is_refused(tmp_path):
    (tmp_path / "run").write_text("")
    with pytest.raises(UnsafeDirectory, match="not a folder"):
        make_private_dir(tmp_path / "run")


def test_a_parent_others_can_write_is_refused_unless_sticky(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    os.chmod(base, 0o777)
    with pytest.raises(UnsafeDirectory, match="writable by other users and not sticky"):
        make_private_dir(base / "run")
    assert not (base / "run").exists()
    os.chmod(base, 0o1777)  # as /dev/shm and /tmp: others cannot rename or remove what is ours
    assert _mode(make_private_dir(base / "run")) == 0o700


@root_only
def test_a_parent_of_another_user_is_refused(tmp_path):
    base = tmp_path / "base"
    base.mkdir(mode=0o755)
    os.chown(base, OTHER_UID, OTHER_UID)
    with pytest.raises(UnsafeDirectory, match=f"{base} belongs to uid {OTHER_UID}"):
        make_private_dir(base / "run")


def test_systemds_runtime_directory_is_used(tmp_path, monkeypatch):
    base = tmp_path / "systemd-run"
    base.mkdir(mode=0o700)  # RuntimeDirectory=replica, RuntimeDirectoryMode=0700, owned by the service user
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(base))
    tree = DiskTree(tmp_path / "state")
    tree.prepare()
    assert tree.run.parent == base and _mode(tree.run) == 0o700


# -- a real replica on a shared host ------------------------------------------------------------------------------

@pytest.fixture
def other_user():
    """A throw-away local user, removed afterwards."""
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("runuser"):
        pytest.skip("needs root, useradd and runuser")
    name = f"rt{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)


def test_a_replica_refuses_a_runtime_folder_another_user_planted(tmp_path, other_user):
    """Without RUNTIME_DIRECTORY or XDG_RUNTIME_DIR the folder's name in /dev/shm is predictable: a user who
    makes it first must not get to write the spec the workers run, so start-up stops (exit status 2)."""
    spec = write_api(tmp_path / "project", "class PythonPredictor:\n    def __init__(self, config):\n"
                     "        pass\n\n    def predict(self, payload):\n        return payload\n",
                     type="python", name="echo")
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k not in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                      env.get("PYTHONPATH")]))
    saved = {k: os.environ.pop(k) for k in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR") if k in os.environ}
    try:
        planted = runtime_dir(state)
    finally:
        os.environ.update(saved)
    assert not planted.exists()
    subprocess.run(["runuser", "-u", other_user, "--", "mkdir", "-m", "0777", str(planted)], check=True)
    try:
        proc = subprocess.run([sys.executable, "-m", "supervisor.cli", "serve", str(spec), "--port",
                               str(free_port()), "--state-dir", str(state)], env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and str(planted) in lines[0] and "belongs to uid" in lines[0], proc.stderr
        assert not (planted / "spec.json").exists() and not list(planted.iterdir())
    finally:
        shutil.rmtree(planted, ignore_errors=True)


# -- modes of what the replica writes under the state directory ----------------------------------------------------

ECHO_WEIGHTS = """
import json, os

class PythonPredictor:
    def __init__(self, config, python_client):
        self.client = python_client

    def load_model(self, model_path):
        return json.load(open(os.path.join(model_path, "weights.json")))

    def predict(self, payload):
        return self.client.get_model("m")
"""


def test_a_download_leaves_0750_folders_and_0640_files_whatever_the_umask(tmp_path, replica):
    models = tmp_path / "upstream"
    (models / "m" / "1" / "sub").mkdir(parents=True)
    (models / "m" / "1" / "weights.json").write_text('{"w": 1}')
    (models / "m" / "1" / "sub" / "extra.bin").write_bytes(b"x")
    os.chmod(models / "m" / "1" / "weights.json", 0o644)
    spec = write_api(tmp_path / "project", ECHO_WEIGHTS, type="python", name="modes", models={"dir": str(models)})
    state = tmp_path / "state"
    old = os.umask(0o022)  # a login shell's umask, inherited by the replica
    try:
        r = replica(spec, state_dir=state)
    finally:
        os.umask(old)
    assert r.post("/", json={}).json() == {"w": 1}
    modes = {str(p.relative_to(state)): _mode(p) for p in [state, *state.rglob("*")]}
    assert "models/m/1/sub/extra.bin" in modes and "models/m/1.manifest.json" in modes
    # Lock files may be stricter (filelock makes its databases 0600); nothing is more open than 0750 / 0640.
    wrong = {p: f"{m:04o}" for p, m in modes.items()
             if m != (0o750 if (state / p).is_dir() else 0o600 if p.startswith("locks/") else 0o640)}
    assert not wrong, wrong
