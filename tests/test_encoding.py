"""How predictions become JSON: numpy values as they come, and strict JSON that any client can parse."""

import json

import numpy as np
import pytest

from workers.encoding import dumps


def test_numpy_arrays_and_scalars_are_plain_json():
    out = dumps({"scores": np.array([[1.5, 2.0]], dtype=np.float32), "label": np.int64(2), "ids": (1, 2)})
    assert json.loads(out) == {"scores": [[1.5, 2.0]], "label": 2, "ids": [1, 2]}


def test_nan_and_infinities_become_null_so_strict_parsers_accept_the_answer():
    out = dumps({"a": float("nan"), "b": [1.0, float("inf"), -float("inf")], "c": np.array([np.nan, 2.0])})
    assert "NaN" not in out and "Infinity" not in out
    assert json.loads(out, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}")) == \
        {"a": None, "b": [1.0, None, None], "c": [None, 2.0]}


def test_unserializable_objects_name_their_type():
    with pytest.raises(TypeError, match="holds a object"):
        dumps({"x": object()})
