"""A private folder that no other user can have planted: how the replica makes its runtime folder.

The runtime folder's name is predictable (it is derived from the state directory, so that a restarted replica
finds its own), and it often lives in a folder every user can write (/dev/shm, /tmp). It holds the parsed spec
the workers start from, the control socket and the state feed, so a folder another user made first, or a
symlink to one, would let that user feed the workers or hold the disk cache.

The rules:

- Every folder above it must be owned by root or by us, and writable by nobody else unless it is sticky
  (/dev/shm, /tmp): otherwise another user could rename our folder away and put theirs in its place later.
- The folder itself is made with `mkdir(0o700)`, which fails if the name exists. An existing one is adopted
  only when `lstat` shows a real folder (not a symlink), owned by our effective uid, with mode 0700: only our
  uid or root can have made such a folder or given it to us, and nobody else can have written into it since.
  That is what a crash or a restart of this replica leaves. Anything else stops start-up.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

MODE = 0o700


class UnsafeDirectory(Exception):
    """A folder another user made or can replace; the message names it and what to do."""


def make_private_dir(path: Path) -> Path:
    """Create `path` as a fresh 0700 folder of this user, or adopt this user's own leftover; return its real
    path. Raises UnsafeDirectory when the folder or a folder above it could be another user's."""
    parent = Path(os.path.realpath(path.parent))
    path = parent / path.name
    check_ancestors(parent)
    try:
        os.mkdir(path, MODE)
        created = True
    except FileExistsError:
        created = False
    fd = _open_dir(path)
    try:
        if created:
            os.fchmod(fd, MODE)  # the umask may have taken bits we need; the folder is ours and empty
        check_private(path, os.fstat(fd))
    finally:
        os.close(fd)
    return path


def check_private(path: Path, st: os.stat_result) -> None:
    """Refuse a folder that is not ours alone (the caller got `st` without following a symlink)."""
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectory(f"{path} exists and is not a folder; remove it (another user may have created it)")
    if st.st_uid != os.geteuid():
        raise UnsafeDirectory(f"the runtime folder {path} belongs to uid {st.st_uid}, not to this user "
                              f"(uid {os.geteuid()}); remove it (another user may have created it)")
    mode = stat.S_IMODE(st.st_mode)
    if mode != MODE:
        raise UnsafeDirectory(f"the runtime folder {path} has mode {mode:04o}, not {MODE:04o}, so other users may "
                              "have written into it; remove it")


def check_ancestors(folder: Path) -> None:
    """Every folder from `folder` up to / must be root's or ours, and writable by others only if sticky."""
    me = os.geteuid()
    for d in (folder, *folder.parents):
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            raise UnsafeDirectory(f"{d} does not exist; create it, or set RUNTIME_DIRECTORY to an existing "
                                  "private folder") from None
        if st.st_uid not in (0, me):
            raise UnsafeDirectory(f"{d} belongs to uid {st.st_uid}, who could replace the runtime folder inside "
                                  "it; set RUNTIME_DIRECTORY (or XDG_RUNTIME_DIR) to a folder of this user")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            raise UnsafeDirectory(f"{d} is writable by other users and not sticky, so they could replace the "
                                  "runtime folder inside it; set RUNTIME_DIRECTORY (or XDG_RUNTIME_DIR) to a "
                                  "folder of this user")


def _open_dir(path: Path) -> int:
    """An fd of `path` itself, refusing a symlink (checked on the fd, so it cannot change in between)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeDirectory(f"the runtime folder {path} is a symlink; remove it (another user may have "
                                  "created it)") from None
        raise UnsafeDirectory(f"{path} exists and is not a folder ({e.strerror}); remove it") from None
