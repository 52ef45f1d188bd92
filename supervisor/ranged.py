"""Parallel ranged downloads: one object fetched in parts, several parts at once, and every part of every
download the supervisor runs through one process-wide bound.

One GET stream carries what one connection gets, a fraction of what S3 and the network can, and a cold
start waits for whole models. So a file larger than PART_SIZE is fetched as ranged GETs of PART_SIZE bytes,
each written with pwrite at its offset into a staging file preallocated to the object's size; a file of one
part stays one plain GET. Every part, a plain GET included, runs on the process-wide pool `PARTS`
(supervisor/part_pool.py), so however many versions and files download at once, at most PARTS_IN_FLIGHT
requests are in flight, shared fairly among the files: a ranged part may stop at a socket read to give its
slot to a file that waits, and the rest of its range is fetched later as a part of its own.

A file's parts write one at a time: ext4 takes the file's inode lock for each buffered write, and parts
contending for it in the kernel spin there for the owner's copy, which on a small machine cost more CPU than
the copies themselves; parts waiting on a lock of their own sleep instead, and one copy into the page cache
at a time still runs several times faster than any link.

The digest is still the sha256 of the whole file, the one every later check recomputes from the disk copy
(`DiskTree.damaged`): the calling thread hashes the file's contiguous prefix as its parts land, reading it
back from the staging file it was just written to (the page cache), so parts may end in any order while one
read buffer is all that is held in memory, and the hash runs beside the parts still downloading.

Consistency is the caller's `read`: it pins each part to the listed version of the object (S3: If-Match on
the listing's ETag) and raises ChangedDuringDownload otherwise; a part of another length than asked for is an
UpstreamError. The first failure of any part (the upstream's, the disk's, Stopped from `progress`) ends the
other parts at their next chunk, parts not started yet never start, and it is raised once every started part
has ended, so nothing writes to the file after `fetch` returns.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
from pathlib import Path
from typing import Callable, Generator, NamedTuple

from replica.disktree import FILE_MODE
from supervisor.download_types import Progress, UpstreamError, disk_error
from supervisor.part_pool import PartPool, Parts

# AWS's guidance for ranged GETs is 8-16 MB a request. The high end: each request also costs botocore CPU
# (building, signing and parsing it), which shows on a small machine, and halving the requests halves it, while
# a file of 256 MiB still spreads over every part in flight, the last parts of a file end close together, and
# a change seen mid-download wastes at most 16 MiB a connection.
PART_SIZE = 16 << 20
# Requests in flight across every download. AWS's performance guidelines: one concurrent request for each
# 85-90 MB/s wanted, so 16 fill about a 10 Gbit/s link to S3; and below the download client's pool of 32
# connections (supervisor/s3_client.py), so every part reuses a kept-alive connection instead of opening one it
# then has to throw away. Each part holds one socket read (1 MiB at most) of memory: memory is not the bound.
PARTS_IN_FLIGHT = 16
# The parts' threads take the CPU only when the workers leave it: on a small machine a download's sockets and
# page-cache writes would otherwise take a share of the cores per part thread (the scheduler is fair per
# thread), and the requests being served meanwhile wait behind them.
DOWNLOAD_NICE = 10  # how much nicer than the process
PARTS = PartPool(PARTS_IN_FLIGHT, nice=DOWNLOAD_NICE)

HASH_READ = 1 << 20  # the most read back at once to hash the staging file's written prefix

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
        return _File(PARTS, key, fd, dest, size, read, progress).download()
    finally:
        os.close(fd)


class _Outcome(NamedTuple):
    reached: int  # the part's bytes are on disk up to this offset
    done: bool  # the whole part; else it yielded its slot (or failed)
    error: BaseException | None = None


class _File(Parts):
    """The parts of one file: how far each is written, which are whole, and the first failure. `download` runs
    in the caller's thread; `run` and `ended` are the pool's side."""

    def __init__(self, pool: PartPool, key: str, fd: int, dest: Path, size: int, read: ReadRange,
                 progress: Progress | None):
        self.ranges = [(start, min(start + PART_SIZE, size)) for start in range(0, size, PART_SIZE)] or [(0, 0)]
        super().__init__(pool, len(self.ranges))
        self.key, self.fd, self.dest, self.size, self.read, self.progress = key, fd, dest, size, read, progress
        self.whole = len(self.ranges) == 1  # one plain GET, which cannot resume, so never yields
        self.reached = [start for start, _ in self.ranges]
        self.done = [False] * len(self.ranges)
        self.error: BaseException | None = None
        self.writing = threading.Lock()  # one pwrite into the file at a time (see above)

    def download(self) -> str:
        self.pool.add(self)
        try:
            return self._digest()
        except BaseException as e:
            with self.cond:  # no part starts from here on; the running ones end at their next chunk
                if self.error is None:
                    self.error = e
                self.pool.cancel(self)
                while self.running:
                    self.cond.wait()
            raise

    def _digest(self) -> str:
        """Hash the file's written prefix as it grows, until every part is whole; raise the first failure."""
        digest = hashlib.sha256()
        hashed, head = 0, 0  # bytes hashed; the first part not whole yet
        while head < len(self.ranges):
            with self.cond:
                while True:
                    if self.error is not None:
                        raise self.error
                    while head < len(self.ranges) and self.done[head]:
                        head += 1
                    upto = self.size if head == len(self.ranges) else self.reached[head]
                    if upto > hashed or head == len(self.ranges):
                        break
                    self.cond.wait()
            try:
                self._hash(digest, hashed, upto)
            except OSError as e:
                raise disk_error(self.dest, e) from e
            hashed = upto
        return digest.hexdigest()

    def _hash(self, digest, start: int, end: int) -> None:
        """Add the bytes [start, end) of the staging file, read back through one buffer held only meanwhile:
        a version's files wait for their parts together, and only the ones hashing hold memory for it."""
        view = memoryview(bytearray(min(HASH_READ, end - start)))
        while start < end:
            n = os.preadv(self.fd, [view[:min(len(view), end - start)]], start)
            if n == 0:
                raise OSError(errno.EIO, "the staging file is shorter than what was written to it")
            digest.update(view[:n])
            start += n

    # -- the pool's side: one part in one of its threads, then its outcome under the lock ------------------------
    def run(self, index: int) -> _Outcome:
        offset = self.reached[index]  # past the start when the part yielded before
        try:
            self._check(0)  # a failed part or a stopping replica: no request at all
            end = self.ranges[index][1]
            with contextlib.closing(self.read(offset, None if self.whole else end)) as chunks:
                for chunk in chunks:
                    if offset + len(chunk) > end:
                        raise self._other_length(index)
                    self._write(chunk, offset)
                    offset += len(chunk)
                    self._check(len(chunk))
                    if offset < end and not self.whole and self.pool.should_yield(self):
                        return _Outcome(offset, False)
            if offset != end:
                raise self._other_length(index)
            return _Outcome(offset, True)
        except BaseException as e:  # handed to the calling thread, which raises it
            return _Outcome(offset, False, e)

    def ended(self, index: int, outcome: _Outcome) -> None:
        self.reached[index] = outcome.reached
        if outcome.error is not None:
            if self.error is None:
                self.error = outcome.error
            self.pool.cancel(self)
        elif outcome.done:
            self.done[index] = True
        elif self.error is None:
            self.waiting.appendleft(index)  # the rest of its range, before the parts after it
        self.cond.notify_all()

    def _other_length(self, index: int) -> UpstreamError:
        """`read` answered for the listed version (its tag checked), so another length is the transport's fault
        or the store's: retried with the version's backoff, not at once as a change would be."""
        start, end = self.ranges[index]
        return UpstreamError(f"{self.key}: bytes {start}-{end - 1} came back as another length",
                             "the upstream sent another length than listed")

    def _write(self, chunk: bytes, offset: int) -> None:
        view = memoryview(chunk)
        try:
            with self.writing:
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
