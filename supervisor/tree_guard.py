"""Watching the disk tree: the state directory, its single-owner lock and the runtime folder can vanish.

An operator's `rm -rf`, a cleaner of /dev/shm or a remount can take the folders from under a running replica.
Nothing fails loudly then: the workers keep their models in memory and every path the supervisor holds still
resolves in its head. So the supervisor checks, at every turn of its loop (about once a second, a few
`stat` calls), that each folder is still the one it made, and repairs what it can:

* **The state directory** removed, replaced by another folder (a different inode) or unwritable: the feed
  publishes `state_dir_error`, so `/readyz` answers 503 naming it (a load balancer sends traffic elsewhere;
  the models already in memory keep answering the requests that still come). The folder and its `models/`,
  `locks/` and `tmp/` are made again, the watcher forgets every version that is no longer on disk and is woken
  to fetch them again; the error clears once a pass that started after the repair has finished and the
  downloads in flight have ended.
* **The runtime folder** removed: it is made again at once (heartbeat, readiness markers of the live workers,
  metrics folder, the parsed spec, the feed reopened and republished in full, the control socket bound again),
  before gunicorn could be started into it. Where it cannot be made, the supervisor stops with one log line
  and status 1, which systemd restarts.

**Ownership.** One supervisor per state directory. It holds two locks (`flock`, released by the kernel when the
process dies, so a killed supervisor never leaves a stale lock):

* `STATE/replica.lock`, inside the state directory, as before;
* `RUNTIME_BASE/replica-<digest>.lock`, beside the runtime folder (not in it) and keyed, like it, by the state
  directory's path. It is not inside the state directory, so removing that folder does not remove it.

A lock on a file is a lock on an inode: once its path is unlinked, the next process to open the path makes a new
file and locks it unopposed. So each check compares the inode the path names (`os.stat`) with the inode of the
descriptor this supervisor locked (`os.fstat`); a lock file gone or replaced is made again and locked again.
A supervisor starts only when it gets both locks (the outer one first, so one that fails touches nothing in
the state directory), and keeps the state directory while it holds either: a state directory removed with its
lock file never lets a second supervisor in, because the second cannot take the outer lock, and an outer lock
file removed is covered by the inner one. Only when both are lost to another process does this supervisor stop
(status 1, "another replica took ..."); and a supervisor that does not hold the outer lock never removes the
runtime folder, which is shared by name with every supervisor of the same state directory.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Callable

import psutil

from replica.disktree import DiskTree
from supervisor.watcher import Watcher

log = logging.getLogger(__name__)


class InUse(Exception):
    """Another live supervisor holds the state directory (a start-up error)."""


class LockUnavailable(Exception):
    """The lock beside the runtime folder cannot be made (a start-up error that names the fix)."""


class TreeLost(Exception):
    """The disk tree cannot be repaired or its ownership was lost: the supervisor stops (status 1)."""


def _ident(path: Path) -> tuple[int, int] | None:
    """(device, inode) of what `path` names now, or None when it names nothing."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_dev, st.st_ino


class OwnerLock:
    """An exclusive, non-blocking `flock` on one file, kept open for the life of the process.

    `intact()` says whether the path still names the file that is locked: a lock on an unlinked file protects
    nothing, since the next opener of the path locks a new file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self) -> bool:
        """Lock the file at the path (making it when missing); False when another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        try:  # who holds it, for the message of one that is refused
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        old, self.fd = self.fd, fd
        if old is not None:
            os.close(old)
        return True

    def intact(self) -> bool:
        """Whether this process holds the lock on the file the path names now."""
        if self.fd is None:
            return False
        st = os.fstat(self.fd)
        return st.st_nlink > 0 and _ident(self.path) == (st.st_dev, st.st_ino)

    def holder(self) -> str:
        """The pid written by whoever holds the file's lock, or "?"."""
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"


def outer_lock_path(tree: DiskTree) -> Path:
    """The lock beside the runtime folder: keyed by the state directory's path, outside the state directory."""
    return tree.run.parent / f"{tree.run.name}.lock"


class TreeGuard:
    """Checks the disk tree once per supervisor loop turn and repairs it (see the module docstring).

    `restore_runtime` is the supervisor's part of re-making the runtime folder (the parsed spec, the control
    socket); `restore_state` re-records what it keeps in the state directory (the gunicorn pid file)."""

    def __init__(self, tree: DiskTree, watcher: Watcher, restore_runtime: Callable[[], None] = lambda: None,
                 restore_state: Callable[[], None] = lambda: None):
        self.tree = tree
        self.watcher = watcher
        self.restore_runtime = restore_runtime
        self.restore_state = restore_state
        self.outer = OwnerLock(outer_lock_path(tree))
        self.inner = OwnerLock(tree.root / "replica.lock")
        self._root: tuple[int, int] | None = None
        self._run: tuple[int, int] | None = None
        self._markers: list[str] = []  # the readiness markers last seen, re-written if the folder goes
        self._repaired_at: float | None = None  # a repair waits for a watcher pass that started after it
        self._warned: set[str] = set()

    # -- start ------------------------------------------------------------------------------------------------
    def take(self) -> None:
        """Take both locks, the outer one first (so a refused start touches nothing in the state directory);
        raise InUse when another supervisor holds either, LockUnavailable when the outer one cannot be made,
        OSError when the state directory cannot be made or written."""
        try:
            taken = self.outer.acquire()
        except OSError as e:
            raise LockUnavailable(f"cannot lock {self.outer.path} beside the runtime folder ({e.strerror}); set "
                                  "RUNTIME_DIRECTORY or XDG_RUNTIME_DIR to a folder this user can write") from None
        if not taken:
            raise InUse(f"another replica (pid {self.outer.holder()}) holds it")
        self.tree.root.mkdir(parents=True, exist_ok=True)
        if not self.inner.acquire():
            raise InUse(f"another replica (pid {self.inner.holder()}) holds it")
        self._root = _ident(self.tree.root)

    def started(self) -> None:
        """Remember the runtime folder the supervisor has made (after the watcher's first publish)."""
        self.tree.metrics_dir.mkdir(parents=True, exist_ok=True)
        self._run = _ident(self.tree.run)

    def owns_runtime(self) -> bool:
        """Whether the runtime folder is this supervisor's to remove (it holds the outer lock)."""
        return self.outer.intact()

    # -- every loop turn --------------------------------------------------------------------------------------
    def check(self) -> None:
        """One check of the runtime folder, the state directory and the locks; raises TreeLost to stop."""
        self.check_runtime()
        self._check_state_dir()
        self._check_locks()

    def check_runtime(self) -> None:
        """Re-make the runtime folder when it is gone (also called right before gunicorn starts)."""
        tree = self.tree
        if self._run is not None and _ident(tree.run) == self._run and tree.workers_dir.is_dir() \
                and tree.metrics_dir.is_dir() and tree.feed_file.exists():
            try:
                self._markers = [m.name for m in tree.workers_dir.iterdir()]
            except OSError:
                pass
            return
        if self._run is None:
            return  # not started yet
        log.error("the runtime folder %s (or part of it) was removed; making it again", tree.run)
        try:
            tree.run.mkdir(parents=True, exist_ok=True)
            tree.run.chmod(0o700)  # the parsed spec and the control socket are this user's alone
            tree.workers_dir.mkdir(exist_ok=True)
            tree.metrics_dir.mkdir(exist_ok=True)
            tree.touch_heartbeat()
            for name in self._markers:  # the workers still alive were ready; a new marker says so again
                if name.isdigit() and psutil.pid_exists(int(name)) and not (tree.workers_dir / name).exists():
                    (tree.workers_dir / name).write_text(str(time.time()))
            self.restore_runtime()
            self.watcher.reopen_feed()
            self.watcher.publish()
        except OSError as e:
            raise TreeLost(f"the runtime folder {tree.run} was removed and cannot be made again ({e}); "
                           "stopping, to be started afresh") from None
        self._run = _ident(tree.run)
        log.info("runtime folder %s made again; the workers read a new state feed", tree.run)

    def _check_state_dir(self) -> None:
        tree = self.tree
        root = tree.root
        now = _ident(root)
        if now is None:
            problem = "was removed"
        elif now != self._root:
            problem = "was replaced by another folder"
        elif not all(d.is_dir() for d in (tree.models, tree.locks, tree.tmp)):
            problem = "lost its models/, locks/ or tmp/ folder"
        elif not _writable(root):
            self._set_error(f"the state directory {root} is not writable: no model can be fetched or updated; "
                            "make it writable by this user")
            return
        else:
            self._settle()
            return
        try:
            for d in (tree.models, tree.locks, tree.tmp):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self._set_error(f"the state directory {root} {problem} and cannot be made again ({e.strerror}); "
                            "make its parent writable by this user")
            return
        self._root = _ident(root)
        self._set_error(f"the state directory {root} {problem}; made it again, fetching the models again")
        self._forget_lost_versions()
        self.restore_state()

    def _forget_lost_versions(self) -> None:
        """The watcher's `installed` becomes what is really on disk, so its next pass downloads the rest."""
        w = self.watcher
        on_disk = self.tree.installed()  # outside the lock: reading the manifests of a big tree takes a while
        with w.lock:
            lost = w.versions.reconcile_disk(on_disk)
            w.failures = 0  # no backoff: the upstream was not the problem
        if lost:
            log.warning("%d model version(s) are no longer on disk; fetching them again", lost)
        self._repaired_at = time.time()
        w.wake()

    def _settle(self) -> None:
        """Clear the error once the tree is whole and, after a repair, a full pass has run since and the
        downloads in flight have ended."""
        w = self.watcher
        if w.state_dir_error is None:
            return
        if self._repaired_at is not None:
            last, took = w.last_pass, w.poll_seconds
            if last is None or took is None or last - took < self._repaired_at or w.downloads_in_flight:
                return  # the pass only starts the downloads of what was lost: they must have ended too
            self._repaired_at = None
        log.info("the state directory %s is whole again", self.tree.root)
        self._set_error(None)

    def _set_error(self, error: str | None) -> None:
        if error == self.watcher.state_dir_error:
            return
        if error is not None:
            log.error("%s", error)
        self.watcher.state_dir_error = error
        try:
            self.watcher.publish()
        except Exception:  # the next pass publishes it again
            log.warning("could not publish the state directory's state", exc_info=True)

    def _check_locks(self) -> None:
        """Re-take a lock whose file went; stop only when another process holds both."""
        held = []
        for lock in (self.outer, self.inner):
            if lock.intact():
                held.append(True)
                self._warned.discard(str(lock.path))
                continue
            try:
                ok = lock.acquire()
            except OSError:
                ok = False  # the state directory is not there (yet): the next check tries again
            if ok:
                log.warning("the lock file %s was removed; made it and took it again", lock.path)
                self._warned.discard(str(lock.path))
            elif str(lock.path) not in self._warned:
                self._warned.add(str(lock.path))
                log.warning("the lock file %s was removed and another process (pid %s) locked it; this replica "
                            "keeps the state directory through its other lock", lock.path, lock.holder())
            held.append(ok)
        if not any(held):
            raise TreeLost(f"another replica (pid {self.inner.holder()}) took the state directory "
                           f"{self.tree.root}; stopping this one")


def _writable(path: Path) -> bool:
    """This user can make files in `path`, on a filesystem mounted read-write."""
    try:
        return os.access(path, os.W_OK | os.X_OK) and not os.statvfs(path).f_flag & os.ST_RDONLY
    except OSError:
        return False
