"""Python predictor for a NumPy array (model.npy): the weights of a linear model with the bias as last row.

`load_model` returns the array (`np.load`, pickles refused).
"""

import os

import numpy as np

from iris_payload import DEFAULT_LABELS, answer, payload_to_rows  # examples/iris_payload.py


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
