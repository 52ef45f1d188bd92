"""Parallel ranged downloads: one object fetched in parts, several parts at once, and every part of every
download the supervisor runs through one process-wide bound.

One GET stream carries what one connection gets, a fraction of what S3 and the network can, and a cold
start waits for whole models. So a file larger than PART_SIZE is fetched as ranged GETs of PART_SIZE bytes,
each written with pwrite at its offset into a staging file preallocated to the object's size; a file of one
part stays one plain GET. Every part, a plain GET included, runs on the process-wide pool `PARTS`, so
however many versions and files download at once, at most PARTS_IN_FLIGHT requests are in flight.

The digest is still the sha256 of the whole file, the one every later check recomputes from the disk copy
(`DiskTree.damaged`): the calling thread hashes the file's contiguous prefix as its parts complete, reading
it back from the staging file it was just written to (the page cache), so parts may end in any order while
one read buffer is all that is held in memory, and the hash runs beside the parts still downloading.

Consistency is the caller's `read`: it pins each part to the listed version of the object (S3: If-Match on
the listing's ETag) and raises ChangedDuringDownload otherwise; a part of another length than asked for is an
UpstreamError. The first failure of any part (the upstream's,
the disk's, Stopped from `progress`) ends the other parts at their next chunk, parts not started yet never
start, and it is raised once every started part has ended, so nothing writes to the file after `fetch`
returns.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import threading
from pathlib import Path
from typing import Callable, Generator

from replica.disktree import FILE_MODE
from supervisor.download_pool import DownloadPool
from supervisor.download_types import Progress, UpstreamError, disk_error

# AWS's guidance for ranged GETs is 8-16 MB a request. The high end: each request also costs botocore CPU
# (building, signing and parsing it), which shows on a small machine, and halving the requests halves it, while
# a file of 256 MiB still spreads over every part in flight, the last parts of a file end close together, and
# a change seen mid-download wastes at most 16 MiB a connection.
PART_SIZE = 16 << 20
# Requests in flight across every download. AWS's performance guidelines: one concurrent request for each
# 85-90 MB/s wanted, so 16 fill about a 10 Gbit/s link to S3; and below the download client's pool of 32
# connections (supervisor/s3_client.py), so every part reuses a kept-alive connection instead of opening one it
# then has to throw away. Each part holds one socket read (64 KiB) of memory, so memory is not the bound.
PARTS_IN_FLIGHT = 16
PARTS = DownloadPool(PARTS_IN_FLIGHT, "part")

HASH_READ = 1 << 20  # the read buffer that hashes the staging file's completed prefix

# (start, end) -> the object's bytes [start, end) as chunks; end None: the whole object, one plain GET. A
# generator, closed when its part ends early, so that its response is released then.
ReadRange = Callable[[int, int | None], Generator[bytes, None, None]]


class _Ended(Exception):
    """Another part failed first: this one stops at its chunk (the first failure is the one raised)."""


def fetch(key: str, size: int, dest: Path, read: ReadRange, progress: Progress | None = None) -> str:
    """Download the `size` bytes of `key` into `dest` through `read`, in parts of PART_SIZE; the sha256.

    Raises what `read` raises (ChangedDuringDownload, the upstream's errors), LocalDiskError when the state
    directory refuses the file, or what `progress` raises (Stopped)."""
    fd = _open_preallocated(dest, size)
    try:
        return _Parts(key, fd, dest, size, read, progress).run()
    finally:
        os.close(fd)


class _Parts:
    """The parts of one file: which have ended, how many run, and the first failure."""

    def __init__(self, key: str, fd: int, dest: Path, size: int, read: ReadRange, progress: Progress | None):
        self.key, self.fd, self.dest, self.read, self.progress = key, fd, dest, read, progress
        self.ranges = [(start, min(start + PART_SIZE, size)) for start in range(0, size, PART_SIZE)] or [(0, 0)]
        self.whole = len(self.ranges) == 1
        self.cond = threading.Condition()
        self.done = [False] * len(self.ranges)
        self.running = 0
        self.error: BaseException | None = None

    def run(self) -> str:
        try:
            for index in range(len(self.ranges)):
                PARTS.submit(functools.partial(self._part, index))
            return self._digest()
        except BaseException as e:
            with self.cond:  # no part starts from here on; the running ones end at their next chunk
                if self.error is None:
                    self.error = e
                while self.running:
                    self.cond.wait()
            raise

    def _digest(self) -> str:
        """Hash the file's completed prefix as it grows, until every part has ended; raise the first failure."""
        digest = hashlib.sha256()
        view = memoryview(bytearray(HASH_READ))
        hashed = 0  # parts hashed so far
        while hashed < len(self.ranges):
            with self.cond:
                while self.error is None and not self.done[hashed]:
                    self.cond.wait()
                if self.error is not None:
                    raise self.error
                upto = hashed
                while upto < len(self.ranges) and self.done[upto]:
                    upto += 1
            try:
                self._hash(digest, view, self.ranges[hashed][0], self.ranges[upto - 1][1])
            except OSError as e:
                raise disk_error(self.dest, e) from e
            hashed = upto
        return digest.hexdigest()

    def _hash(self, digest, view: memoryview, start: int, end: int) -> None:
        while start < end:
            n = os.preadv(self.fd, [view[:min(len(view), end - start)]], start)
            if n == 0:
                raise OSError(errno.EIO, "the staging file is shorter than what was written to it")
            digest.update(view[:n])
            start += n

    def _part(self, index: int) -> None:
        """One part, on the pool: nothing when another part already failed, else fetch it and record the end."""
        with self.cond:
            if self.error is not None:
                return
            self.running += 1
        failure = None
        try:
            self._fetch(*self.ranges[index])
        except BaseException as e:  # handed to the calling thread, which raises it
            failure = e
        with self.cond:
            self.running -= 1
            if failure is None:
                self.done[index] = True
            elif self.error is None:
                self.error = failure
            self.cond.notify_all()

    def _fetch(self, start: int, end: int) -> None:
        self._check(0)  # a failed part or a stopping replica: no request at all
        offset = start
        with contextlib.closing(self.read(start, None if self.whole else end)) as chunks:
            for chunk in chunks:
                if offset + len(chunk) > end:
                    raise self._other_length(start, end)
                self._write(chunk, offset)
                offset += len(chunk)
                self._check(len(chunk))
        if offset != end:
            raise self._other_length(start, end)

    def _other_length(self, start: int, end: int) -> UpstreamError:
        """`read` answered for the listed version (its tag checked), so another length is the transport's fault
        or the store's: retried with the version's backoff, not at once as a change would be."""
        return UpstreamError(f"{self.key}: bytes {start}-{end - 1} came back as another length",
                             "the upstream sent another length than listed")

    def _write(self, chunk: bytes, offset: int) -> None:
        view = memoryview(chunk)
        try:
            while view:
                n = os.pwrite(self.fd, view, offset)
                view, offset = view[n:], offset + n
        except OSError as e:
            raise disk_error(self.dest, e) from e

    def _check(self, nbytes: int) -> None:
        if self.error is not None:
            raise _Ended()
        if self.progress is not None:
            self.progress(nbytes)


def _open_preallocated(dest: Path, size: int) -> int:
    """The staging file, open for writing parts and reading them back, with its blocks reserved."""
    try:
        fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
    except OSError as e:
        raise disk_error(dest, e) from e
    try:
        if size:
            _preallocate(fd, size)
    except OSError as e:
        os.close(fd)
        raise disk_error(dest, e) from e
    return fd


def _preallocate(fd: int, size: int) -> None:
    """Reserve the file's blocks before the first part: a full disk fails the download before a byte is
    fetched, and parts written out of order land in place instead of growing a sparse file. A filesystem
    without fallocate gets the size alone (sparse: a full disk then shows at the write that meets it)."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        os.ftruncate(fd, size)
