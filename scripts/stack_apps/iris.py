"""The work every limit stack does per request, in one place so that each does exactly the same: decode the
JSON body of `examples/onnx/sample.json`, build the float32 [1, 4] row, `session.run` the iris ONNX model and
answer its label, the bytes the replica and the floor answer (`setosa`, text/plain).

Imported by the raw WSGI and ASGI apps and the LitServe app, each in its own virtualenv with only numpy and
onnxruntime besides its server (no project code: the peers must not pay for the replica's imports). The
session is created lazily, in each worker process after fork, as the replica and the floor do.
"""

from __future__ import annotations

import json
import os

import numpy as np

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
LABELS = ("setosa", "versicolor", "virginica")
_session = None


def session():
    """This process's InferenceSession of $BENCH_ONNX_MODEL (created on first use)."""
    global _session
    if _session is None:
        import onnxruntime as ort

        _session = ort.InferenceSession(os.environ["BENCH_ONNX_MODEL"], providers=["CPUExecutionProvider"])
    return _session


def label(payload: dict) -> str:
    """The model's label for one decoded request."""
    row = np.array([[float(payload[name]) for name in FEATURES]], dtype=np.float32)
    _scores, out = session().run(None, {"input": row})
    return LABELS[int(out[0])]


def predict(body: bytes) -> bytes:
    """JSON body in, the label's bytes out."""
    return label(json.loads(body)).encode()
