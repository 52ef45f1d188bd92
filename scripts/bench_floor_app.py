"""The floor for the hot-path benchmark: a bare gunicorn + Flask app that calls onnxruntime directly.

It does what the replica's ONNX example does for one request (parse the JSON body, build the float32 row,
`session.run`, return the label) and nothing else: no registry, no request scope, no status files. Run it
with the same gunicorn flags as the replica (`scripts/bench.py` does):

    BENCH_ONNX_MODEL=examples/onnx/models/iris/1/model.onnx \
    gunicorn --worker-class gthread --threads 1 --workers 2 scripts.bench_floor_app:app

The session is created lazily in each worker, after fork, as the replica does.
"""

from __future__ import annotations

import json
import os

import numpy as np
from flask import Flask, Response, request

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
LABELS = ("setosa", "versicolor", "virginica")

app = Flask("floor")
_session = None


def session():
    global _session
    if _session is None:
        import onnxruntime as ort

        _session = ort.InferenceSession(os.environ["BENCH_ONNX_MODEL"], providers=["CPUExecutionProvider"])
    return _session


@app.route("/", methods=["POST"])
def predict():
    payload = json.loads(request.get_data(cache=False))
    row = np.array([[float(payload[name]) for name in FEATURES]], dtype=np.float32)
    _scores, label = session().run(None, {"input": row})
    return Response(LABELS[int(label[0])], mimetype="text/plain")


@app.route("/readyz")
def readyz():
    session()
    return Response("ready", mimetype="text/plain")
