"""What a download reports: its outcome, its progress callback and its failures.

Shared by the upstreams (supervisor/upstream.py) and the parallel ranged fetch (supervisor/ranged.py), which
must raise the same failures so that the watcher answers each one the same way whichever path fetched the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple


class UpstreamError(Exception):
    """The upstream could not be listed or read (network, credentials, missing bucket).

    `str(e)` is the whole story for the log (URLs, endpoint, local paths); `public` is what a client may be
    told: the reason, without where the replica keeps or gets its files."""

    def __init__(self, message: str, public: str = "the upstream could not be read"):
        super().__init__(message)
        self.public = public


class ChangedDuringDownload(Exception):
    """A file changed upstream between the listing and its download."""


class LocalDiskError(Exception):
    """Writing a download to the state directory failed (full disk, permissions): not the upstream's fault.

    `public` names the reason without the path (see UpstreamError)."""

    def __init__(self, message: str, public: str = "the state directory cannot take the download"):
        super().__init__(message)
        self.public = public


def disk_error(dest: Path, e: OSError) -> LocalDiskError:
    return LocalDiskError(f"cannot write {dest} on the state directory's disk: {e.strerror}",
                          f"the state directory's disk refused the download ({e.strerror})")


class Stopped(Exception):
    """The replica is stopping: a download ends between two chunks instead of running to its end."""


Progress = Callable[[int], None]  # called with each chunk's size; raises Stopped when the replica stops


class Written(NamedTuple):
    """A downloaded file: its size and the sha256 of its bytes, taken while it downloads (a local copy hashes
    each chunk it writes; a ranged S3 fetch hashes the file's completed prefix back from the page cache as its
    parts land), so no read of the disk copy follows the download. The digest is of the whole file, what the
    disk copy is checked against later: S3's ETag is an MD5 only for single-part uploads, and a local file's
    tag is its modification time."""

    size: int
    sha256: str
