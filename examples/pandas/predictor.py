"""Python predictor for a pandas table (model.parquet, or model.csv): one row per feature plus a "bias" row,
one column per class.

`load_model` returns the DataFrame, indexed by term.
"""

import os

import numpy as np
import pandas as pd

from iris_payload import DEFAULT_LABELS, FEATURES, answer, payload_to_rows  # examples/iris_payload.py


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
