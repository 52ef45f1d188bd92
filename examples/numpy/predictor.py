"""Python predictor for a NumPy array (model.npy): the weights of a linear model with the bias as last row.

`load_model` returns the array (`np.load`, pickles refused).
"""

import os

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


class PythonPredictor:
    def __init__(self, config, python_client):
        self.client = python_client
        self.labels = list((config or {}).get("labels") or DEFAULT_LABELS)

    def load_model(self, model_path):
        """One version's folder -> the float array [n_features + 1, n_classes] in its model.npy."""
        return np.load(os.path.join(model_path, "model.npy"), allow_pickle=False)

    def predict(self, payload, query_params):
        query_params = query_params or {}
        model = self.client.get_model(query_params.get("model") or "iris", query_params.get("version") or "latest")
        return answer(payload, np.asarray(payload_to_rows(payload)) @ model[:-1] + model[-1], self.labels)
