"""Python predictor for an MLflow model folder (MLmodel, conda.yaml, model.pkl) of a scikit-learn model.

`load_model` returns what `mlflow.sklearn.load_model` returns: the fitted scikit-learn estimator.
"""

import mlflow.sklearn
import numpy as np

from iris_payload import DEFAULT_LABELS, answer, payload_to_rows  # examples/iris_payload.py


class PythonPredictor:
    def __init__(self, config, python_client):
        self.client = python_client
        self.labels = list((config or {}).get("labels") or DEFAULT_LABELS)

    def load_model(self, model_path):
        """One version's MLflow model folder -> the scikit-learn estimator saved in it."""
        return mlflow.sklearn.load_model(model_path)

    def predict(self, payload, query_params):
        query_params = query_params or {}
        model = self.client.get_model(query_params.get("model") or "iris", query_params.get("version") or "latest")
        return answer(payload, model.predict(np.asarray(payload_to_rows(payload))), self.labels)
