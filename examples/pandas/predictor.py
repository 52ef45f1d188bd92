"""Python predictor for a pandas table (model.parquet, or model.csv): one row per feature plus a "bias" row,
one column per class.

`load_model` returns the DataFrame, indexed by term.
"""

import os

import numpy as np
import pandas as pd

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
        """One version's folder -> its table as a DataFrame indexed by "term"."""
        parquet, csv = os.path.join(model_path, "model.parquet"), os.path.join(model_path, "model.csv")
        table = pd.read_parquet(parquet) if os.path.exists(parquet) else pd.read_csv(csv, index_col="term")
        missing = [name for name in (*FEATURES, "bias") if name not in table.index]
        if missing:
            raise ValueError("the table has no row for " + ", ".join(missing))
        return table

    def predict(self, payload, query_params):
        query_params = query_params or {}
        model = self.client.get_model(query_params.get("model") or "iris", query_params.get("version") or "latest")
        return answer(payload, np.asarray(payload_to_rows(payload)) @ model.loc[list(FEATURES)].to_numpy() + model.loc["bias"].to_numpy(), self.labels)
