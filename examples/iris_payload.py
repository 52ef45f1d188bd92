"""Payload helpers shared by the Python-predictor examples: iris measurements in, labels and scores out.

Each example's api.yaml sets `python_path: ..`, which puts this folder on the predictor's import path (the same
mechanism a project uses for its own shared code).
"""

import numpy as np

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
DEFAULT_LABELS = ("setosa", "versicolor", "virginica")


def payload_to_rows(payload):
    """{"sepal_length": ..., ...} (one flower) or a list of them -> float rows in model order."""
    flowers = payload if isinstance(payload, list) else [payload]
    rows = []
    for flower in flowers:
        if not isinstance(flower, dict):
            raise ValueError("payload must be a JSON object (or a list of them) with keys " + ", ".join(FEATURES))
        missing = [name for name in FEATURES if name not in flower]
        if missing:
            raise ValueError("payload is missing " + ", ".join(missing))
        rows.append([float(flower[name]) for name in FEATURES])
    return rows


def answer(payload, scores, labels):
    """One {"label", "scores"} per flower; a single object for a single flower."""
    out = [{"label": labels[int(np.argmax(row))], "scores": [float(s) for s in row]} for row in np.asarray(scores)]
    return out if isinstance(payload, list) else out[0]
