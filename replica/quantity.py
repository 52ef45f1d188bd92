"""Memory quantities as Kubernetes writes them: `512Mi`, `4Gi`, `1.5G`, `300M`, or a number of bytes."""

from __future__ import annotations

import re

_UNITS = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([kKMGT]i?)?\s*$")


def parse_quantity(value: object) -> int:
    """Bytes in `value`; ValueError naming the accepted forms when it is not a positive quantity."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a memory quantity")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        m = _QUANTITY.match(str(value))
        if m is None or (m.group(2) or "") not in _UNITS:
            raise ValueError(f"{value!r} is not a memory quantity; write bytes or a number with Ki, Mi, Gi, Ti "
                             "(or k, M, G, T), e.g. 512Mi or 4Gi")
        number, unit = float(m.group(1)), m.group(2) or ""
    size = int(number * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"{value!r} must be more than 0 bytes")
    return size


def format_bytes(n: float) -> str:
    """A size for people: `312 MiB`, `1.5 GiB`."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(n)} B"
