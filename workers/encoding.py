"""JSON that understands numpy, so a predictor can return arrays and numpy scalars as they come."""

from __future__ import annotations

import json
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
    return json.dumps(obj, default=_default, allow_nan=True)
