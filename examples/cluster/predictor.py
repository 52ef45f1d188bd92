"""ONNX predictor for the cluster example: the model named by ?model= classifies one flower (or a list)."""

import numpy as np
from iris_payload import DEFAULT_LABELS, answer, payload_to_rows


class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client
        self.labels = list((config or {}).get("labels") or DEFAULT_LABELS)

    def predict(self, payload, query_params):
        name = query_params.get("model")
        scores, _ = self.client.predict(np.asarray(payload_to_rows(payload), dtype=np.float32), name)
        result = answer(payload, scores, self.labels)
        return {"model": name, **result} if isinstance(result, dict) else result
