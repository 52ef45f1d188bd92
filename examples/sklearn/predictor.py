"""Python predictor for a scikit-learn model stored with joblib (model.joblib; a plain pickle works too).

`load_model` returns the fitted estimator. Only load files you trust: unpickling runs code.
"""

import os

import joblib
import numpy as np

from iris_payload import DEFAULT_LABELS, answer, payload_to_rows  # examples/iris_payload.py


class PythonPredictor:
    def __init__(self, config, python_client):
        self.client = python_client
        self.labels = list((config or {}).get("labels") or DEFAULT_LABELS)

    def load_model(self, model_path):
        """One version's folder -> the estimator in its model.joblib (or model.pkl)."""
        for name in ("model.joblib", "model.pkl"):
            path = os.path.join(model_path, name)
            if os.path.exists(path):
                return joblib.load(path)
        raise FileNotFoundError(f"no model.joblib or model.pkl in {model_path}")

    def predict(self, payload, query_params):
        query_params = query_params or {}
        model = self.client.get_model(query_params.get("model") or "iris", query_params.get("version") or "latest")
        return answer(payload, model.predict(np.asarray(payload_to_rows(payload))), self.labels)
