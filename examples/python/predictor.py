"""Python predictor for the iris example: a linear model stored as model.json."""

import json
import os

import numpy as np

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
DEFAULT_LABELS = ("setosa", "versicolor", "virginica")


def payload_to_features(payload):
    """Turn {"sepal_length": ..., ...} into a float64 vector, in model order."""
    if not isinstance(payload, dict):
        raise ValueError("payload must be a JSON object with keys " + ", ".join(FEATURES))
    missing = [name for name in FEATURES if name not in payload]
    if missing:
        raise ValueError("payload is missing " + ", ".join(missing))
    return np.array([float(payload[name]) for name in FEATURES])


class PythonPredictor:
    def __init__(self, config, python_client):
        self.client = python_client
        self.labels = list((config or {}).get("labels") or DEFAULT_LABELS)

    def load_model(self, model_path):
        """Load one version's directory (holding model.json) into arrays."""
        with open(os.path.join(model_path, "model.json"), encoding="utf-8") as f:
            spec = json.load(f)
        # A versioned model directory is named after its version (…/iris/2).
        name = os.path.basename(os.path.normpath(model_path))
        return {
            "weights": np.asarray(spec["weights"], dtype=np.float64),
            "bias": np.asarray(spec["bias"], dtype=np.float64),
            "version": name if name.isdigit() else None,
        }

    def predict(self, payload, query_params):
        query_params = query_params or {}
        model_name = query_params.get("model") or "iris"
        version = query_params.get("version") or "latest"
        model = self.client.get_model(model_name, version)
        scores = payload_to_features(payload) @ model["weights"] + model["bias"]
        return {
            "label": self.labels[int(np.argmax(scores))],
            "version": model["version"] or version,
        }
