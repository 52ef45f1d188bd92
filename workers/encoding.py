"""JSON that understands numpy, so a predictor can return arrays and numpy scalars as they come."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", errors="replace")
    raise TypeError(f"the prediction holds a {type(obj).__name__}, which is not JSON serializable")


def dumps(obj: Any) -> str:
    """Strict JSON: NaN and infinities (which JSON lacks, and strict parsers refuse) become null."""
    try:
        return json.dumps(obj, default=_default, allow_nan=False)
    except ValueError:  # rare: only then walk the value to replace the non-finite floats
        return json.dumps(_finite(json.loads(json.dumps(obj, default=_default, allow_nan=True))), allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, list):
        return [_finite(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    return obj
