"""A worker's own memory: what a load added, and giving freed memory back to the system.

A version's size is measured as the larger of two deltas across its `load_model`: the process's resident set
(what the kernel, and a memory cgroup, count) and glibc's heap in use (`mallinfo2`: bytes handed out by
malloc, mapped chunks included). The heap delta is right even where the load reuses memory an unload freed
without giving it back (the resident set then barely grows); the resident delta sees what malloc does not
(a framework's own mappings). Weights mapped from the version's files count in full (`mapped_from`): they are
resident once runs touch them, not at the load. Loads measured at once would blur each other, so the caller
measures under one lock.

glibc keeps freed memory in its arenas; `malloc_trim(0)` returns what it can, so an eviction lowers the resident
set instead of leaving it at its high-water mark.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from typing import Iterator

_PAGE = os.sysconf("SC_PAGE_SIZE")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None, None, None
    info = getattr(libc, "mallinfo2", None)  # glibc 2.33 and later
    if info is not None:
        info.restype = _Mallinfo2
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is not None:
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return info, trim, mallopt


_MALLINFO2, _MALLOC_TRIM, _MALLOPT = _libc()
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20  # blocks this large or larger are mapped on their own, and unmapped when freed


def map_large_blocks() -> None:
    """Have glibc map every block of MMAP_THRESHOLD or more on its own, and unmap it when it is freed.

    glibc raises its mmap threshold each time a mapped block is freed, up to 32 MiB, so after the first
    eviction a model's arrays of a few MiB come from the heap's arenas instead; freed there, between blocks
    still in use, much of that memory never goes back to the system (malloc_trim returns only whole free pages
    at the arenas' tops and holes). Fixing the threshold keeps a model's weights in mappings of their own."""
    if _MALLOPT is not None:
        _MALLOPT(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def rss() -> int:
    """This process's resident set in bytes (read from /proc/self each time: right after a fork too)."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def heap_in_use() -> int | None:
    """Bytes malloc has handed out and not had back (glibc), or None where that cannot be read."""
    if _MALLINFO2 is None:
        return None
    info = _MALLINFO2()
    return info.uordblks + info.hblkhd


def give_back() -> None:
    """Return the heap's free memory to the system where the C library can (glibc's malloc_trim)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class Measured:
    bytes: int = 0


def mapped_from(folder: str | os.PathLike) -> int:
    """Bytes this process maps from files under `folder` (weights a loader maps instead of reading: ONNX
    external data, `np.load(mmap_mode="r")`). They count as the model's memory although they become resident
    only as runs touch them; a file replaced since (`(deleted)`) is an older copy's, not this one's."""
    prefix = os.path.realpath(folder).rstrip("/") + "/"
    total = 0
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split(None, 5)
                if len(parts) == 6 and parts[5].startswith(prefix) and not parts[5].rstrip().endswith("(deleted)"):
                    start, end = parts[0].split("-")
                    total += int(end, 16) - int(start, 16)
    except OSError:
        return 0
    return total


@contextlib.contextmanager
def measuring(folder: str | os.PathLike | None = None) -> Iterator[Measured]:
    """What the block added to this process's memory (see the module's doc), in `.bytes` once it has run; at
    least what it mapped from the files under `folder` (the version being loaded)."""
    out = Measured()
    rss_before, heap_before = rss(), heap_in_use()
    yield out
    grown = rss() - rss_before
    heap_after = heap_in_use()
    if heap_before is not None and heap_after is not None:
        grown = max(grown, heap_after - heap_before)
    if folder is not None:
        grown = max(grown, mapped_from(folder))
    out.bytes = max(grown, 0)
