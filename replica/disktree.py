"""The disk tree under the state directory, and the lock protocol between its writer and its readers.

Layout::

    STATE/models/NAME/VERSION/...           the version's files, as upstream has them (the predictor's model_path)
    STATE/models/NAME/VERSION.manifest.json its fingerprint and file list
    STATE/locks/NAME/VERSION.lock            a read-write lock per version (SQLite-backed, cross-process)
    STATE/tmp/                               downloads in progress (same filesystem, so renames are atomic)
    STATE/gunicorn.pid                       the process group a killed supervisor may have left running
    STATE/replica.lock, RUNTIME.lock         the single-owner locks, checked every second (supervisor.tree_guard)
    RUNTIME/                                 heartbeat, worker readiness, metrics, the parsed spec, sockets
    RUNTIME/feed.sqlite                      what the supervisor knows: catalogue, disk state, errors (replica.feed)

RUNTIME is a folder on a memory filesystem (see `runtime_dir`), not on the state filesystem: prometheus-client
memory-maps its files, and a worker whose metrics file cannot grow on a full disk dies of SIGBUS. A full
state disk must never stop workers serving the models they have.

RUNTIME is private to the replica's user: made fresh with mode 0700, or adopted only when it is already this user's
own 0700 folder (replica/private_dir.py), since its name is predictable and its parent often world-writable.

What the replica writes under STATE is 0750 for folders and 0640 for files (FOLDER_MODE, FILE_MODE; the supervisor
also adds 027 to its umask): the weights are the model owner's, not every local user's.

Only the supervisor writes `models/`, `tmp/` and the feed: a version appears with one atomic rename
under its exclusive lock and disappears under the same lock, and workers load it under the shared lock, so a
worker never sees a half-written or half-deleted version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from filelock import ReadWriteLock, Timeout

from replica.private_dir import make_private_dir
from replica.spec import MODEL_NAME_RE

FOLDER_MODE = 0o750  # what the replica makes under the state directory: its group may read, others nothing
FILE_MODE = 0o640


class UnsafeName(ValueError):
    """A model name or key that could escape the state directory."""


def safe_relpath(key: str) -> str:
    """Return `key` if it stays inside the folder it is joined to; raise UnsafeName otherwise."""
    parts = key.split("/")
    if key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key or "\0" in key:
        raise UnsafeName(f"unsafe object key {key!r}")
    return key


def runtime_dir(state_dir: Path) -> Path:
    """The runtime folder of a state directory: under systemd's RuntimeDirectory (/run/replica), else
    $XDG_RUNTIME_DIR, else /dev/shm (tmpfs on Linux), named after the state directory so that two replicas
    never share one and a restarted replica finds its own."""
    base = os.environ.get("RUNTIME_DIRECTORY") or os.environ.get("XDG_RUNTIME_DIR")
    if not base:
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    digest = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:16]
    return Path(base.split(":")[0]) / f"replica-{digest}"


class DiskTree:
    """Paths of the disk tree and the operations on it; the write operations are the supervisor's alone."""

    def __init__(self, root: str | Path, runtime: str | Path | None = None):
        self.root = Path(root).resolve()
        self.models = self.root / "models"
        self.locks = self.root / "locks"
        self.tmp = self.root / "tmp"
        run = Path(runtime) if runtime else runtime_dir(self.root)
        # The real path: every folder above it is checked once (prepare), and no symlink on the way can move later.
        self.run = Path(os.path.realpath(run.parent)) / run.name
        self.feed_file = self.run / "feed.sqlite"
        self.heartbeat_file = self.run / "heartbeat"
        self.workers_dir = self.run / "workers"
        self.metrics_dir = self.run / "metrics"  # prometheus-client's multiprocess files, one set per worker
        self.socket_path = self.run / "supervisor.sock"

    # -- paths --------------------------------------------------------------------------------------------
    def version_dir(self, name: str, version: int) -> Path:
        if not MODEL_NAME_RE.match(name):
            raise UnsafeName(f"unsafe model name {name!r}")
        return self.models / name / str(int(version))

    def model_path(self, name: str, version: int) -> Path:
        """The folder a predictor loads: the version's files, exactly as upstream holds them.

        Like Cortex's, it ends in NAME/VERSION, so predictors that read the version from the path keep working.
        """
        return self.version_dir(name, version)

    def manifest_file(self, name: str, version: int) -> Path:
        """Beside the version folder, never inside it, so the predictor sees only the model's own files."""
        return self.models / name / f"{int(version)}.manifest.json"

    def lock_file(self, name: str, version: int) -> Path:
        if not MODEL_NAME_RE.match(name):
            raise UnsafeName(f"unsafe model name {name!r}")
        return self.locks / name / f"{int(version)}.lock"

    # -- locks --------------------------------------------------------------------------------------------
    def _lock(self, name: str, version: int) -> ReadWriteLock:
        path = self.lock_file(name, version)
        make_dirs(path.parent)
        # One instance per use: an instance coordinates processes, not threads.
        return ReadWriteLock(path, is_singleton=False)

    @contextlib.contextmanager
    def read_lock(self, name: str, version: int) -> Iterator[None]:
        lock = self._lock(name, version)
        try:
            with lock.read_lock():
                yield
        finally:
            lock.close()

    @contextlib.contextmanager
    def write_lock(self, name: str, version: int, while_waiting: Callable[[], None] | None = None) -> Iterator[None]:
        """The exclusive lock; `while_waiting` runs about every second while a reader (a worker loading the
        version) keeps it, so a writer that waits still shows it is alive."""
        lock = self._lock(name, version)
        try:
            while True:
                try:
                    lock.acquire_write(timeout=-1 if while_waiting is None else 1.0)
                    break
                except Timeout:
                    while_waiting()
            try:
                yield
            finally:
                lock.release()
        finally:
            lock.close()

    # -- reading (workers and supervisor) -------------------------------------------------------------------
    def manifest(self, name: str, version: int) -> dict | None:
        """The manifest of an installed version, or None when the version is not on disk."""
        try:
            return json.loads(self.manifest_file(name, version).read_text())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            return None

    def damaged(self, name: str, version: int) -> str | None:
        """Why a disk copy is not what was downloaded (a file missing, resized, or holding other bytes than
        the sha256 its manifest recorded as it was written), or None when it is whole. A copy installed
        without digests is checked by size alone. Read it under the version's shared lock while workers run."""
        manifest = self.manifest(name, version)
        if manifest is None:
            return "its manifest is missing"
        root = self.version_dir(name, version)
        for key, size, *rest in manifest.get("files", []):
            path = root / safe_relpath(key)
            try:
                if path.stat().st_size != size:
                    return f"{key} changed size on disk"
                if len(rest) > 1 and rest[1] and _sha256(path) != rest[1]:
                    return f"{key} holds other bytes than were downloaded"
            except OSError as e:
                return f"{key} cannot be read ({e.strerror})"
        return None

    def installed(self) -> dict[str, dict[int, str]]:
        """Every version on disk with its fingerprint: what a restart can re-use without downloading."""
        found: dict[str, dict[int, str]] = {}
        if not self.models.is_dir():
            return found
        for mdir in self.models.iterdir():
            if not mdir.is_dir() or not MODEL_NAME_RE.match(mdir.name):
                continue
            for vdir in mdir.iterdir():
                if vdir.name.isdigit():
                    m = self.manifest(mdir.name, int(vdir.name))
                    if m is not None:
                        found.setdefault(mdir.name, {})[int(vdir.name)] = m["fingerprint"]
        return found

    # -- writing (supervisor only) ------------------------------------------------------------------------
    def prepare_runtime(self) -> None:
        """Make the runtime folder, private to this user; raise UnsafeDirectory when it could be another user's
        (the parsed spec, the control socket and the feed in it steer every worker)."""
        make_private_dir(self.run)
        self.workers_dir.mkdir(mode=0o700, exist_ok=True)

    def prepare(self) -> None:
        """Make the tree's folders and clear what a crash left in tmp/ and the readiness markers."""
        for d in (self.models, self.locks, self.tmp):
            make_dirs(d)
            _restrict(d)  # a tree from before these modes: others lose the way to the weights
        self.prepare_runtime()
        for leftover in self.tmp.iterdir():  # downloads interrupted by a crash
            shutil.rmtree(leftover, ignore_errors=True)
        for marker in self.workers_dir.iterdir():
            marker.unlink(missing_ok=True)

    def new_staging_dir(self, name: str, version: int) -> Path:
        """A fresh folder for a download; `install` moves it into place."""
        # The prefix only helps a person reading tmp/: cut, so that a long name fits the filesystem's limit.
        staging = Path(tempfile.mkdtemp(prefix=f"{name[:64]}-{str(version)[:20]}-", dir=self.tmp))
        staging.chmod(FOLDER_MODE)
        return staging

    def install(self, staging: Path, name: str, version: int, manifest: dict[str, Any],
                while_waiting: Callable[[], None] | None = None) -> None:
        """Move a downloaded version into place atomically, replacing an older copy of the same version.

        The folder and its manifest change together under the exclusive lock; a crash between the two leaves a
        folder without a manifest, which counts as not installed and is downloaded again.
        """
        target = self.version_dir(name, version)
        trash = None
        with self.write_lock(name, version, while_waiting):
            self.manifest_file(name, version).unlink(missing_ok=True)
            if target.exists():
                trash = Path(tempfile.mkdtemp(prefix="old-", dir=self.tmp))
                os.rename(target, trash / "v")
            _rename_into(staging, target)
            write_json_atomic(self.manifest_file(name, version), manifest)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def remove(self, name: str, version: int, while_waiting: Callable[[], None] | None = None) -> None:
        """Delete a version under its exclusive lock (after the rename, deletion happens outside the tree)."""
        target = self.version_dir(name, version)
        trash = Path(tempfile.mkdtemp(prefix="rm-", dir=self.tmp))
        with self.write_lock(name, version, while_waiting):
            self.manifest_file(name, version).unlink(missing_ok=True)
            if target.exists():
                os.rename(target, trash / "v")
        shutil.rmtree(trash, ignore_errors=True)
        with contextlib.suppress(OSError):
            target.parent.rmdir()  # only succeeds once the model has no version left

    def touch_heartbeat(self) -> None:
        self.heartbeat_file.touch()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _rename_into(src: Path, dest: Path, attempts: int = 5) -> None:
    """Rename `src` to `dest`, creating the model folder `dest` lives in.

    Removing the last version of a model deletes the model's folder once it is empty, under that version's lock
    only: an install of another version of the same model can see its freshly made folder vanish before its
    rename. The folder is then made again; the rename itself is what makes the version appear."""
    for attempt in range(attempts):
        with contextlib.suppress(FileExistsError):  # not exist_ok: pathlib raises if it vanishes as it looks
            make_dirs(dest.parent.parent)
            dest.parent.mkdir(mode=FOLDER_MODE)
        try:
            os.rename(src, dest)
            return
        except FileNotFoundError:
            if attempt == attempts - 1 or not src.exists():
                raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never a part."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes it 0600; the group may read what the tree holds
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def make_dirs(path: Path, mode: int = FOLDER_MODE) -> None:
    """`mkdir -p` with `mode` for every folder it makes (pathlib and os.makedirs give the parents 0777 & ~umask)."""
    missing = []
    p = Path(path)
    while not p.is_dir():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=mode)


def _restrict(folder: Path) -> None:
    """Take away group write and every right of others from a folder of the tree that has them."""
    with contextlib.suppress(OSError):
        mode = stat.S_IMODE(folder.stat().st_mode)
        if mode & 0o027:
            folder.chmod(mode & ~0o027)
