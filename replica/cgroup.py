"""This process's memory cgroup (v2 or v1): its limit, and the OOM kills the kernel counted in it."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

UNLIMITED = 1 << 60  # v1 writes "no limit" as a page-rounded 2**63 - 1


def _memory_files(v2_name: str, v1_name: str) -> Iterator[Path]:
    """The file of the memory cgroup this process is in: v2 (`0::/path`) and v1 (`N:memory:/path`) names."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            yield Path("/sys/fs/cgroup") / path.lstrip("/") / v2_name
        elif "memory" in controllers.split(","):
            yield Path("/sys/fs/cgroup/memory") / path.lstrip("/") / v1_name


def memory_limit() -> int | None:
    """The memory limit that applies to this process in bytes (v2 `memory.max`, v1 `memory.limit_in_bytes`),
    or None where there is none or none is readable."""
    for path in _memory_files("memory.max", "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        return value if value < UNLIMITED else None
    return None


def oom_kills() -> int | None:
    """The OOM kills the kernel counted in this process's memory cgroup (v2 `memory.events`, v1
    `memory.oom_control`), or None where neither is readable."""
    for path in _memory_files("memory.events", "memory.oom_control"):
        try:
            for row in path.read_text().splitlines():
                field, _, value = row.partition(" ")
                if field == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return None
