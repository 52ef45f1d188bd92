"""ONNX predictor for the iris example: payload of four measurements -> label string."""

import numpy as np

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
DEFAULT_LABELS = ("setosa", "versicolor", "virginica")


def payload_to_features(payload):
    """Turn {"sepal_length": ..., ...} into a float32 batch of one row, in model order."""
    if not isinstance(payload, dict):
        raise ValueError("payload must be a JSON object with keys " + ", ".join(FEATURES))
    missing = [name for name in FEATURES if name not in payload]
    if missing:
        raise ValueError("payload is missing " + ", ".join(missing))
    return np.array([[float(payload[name]) for name in FEATURES]], dtype=np.float32)


class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client
        self.labels = list((config or {}).get("labels") or DEFAULT_LABELS)

    def predict(self, payload):
        # Single-input model: the raw array is fed to "input".
        # Outputs come back in graph order: [scores, label].
        scores, label = self.client.predict(payload_to_features(payload))
        return self.labels[int(np.asarray(label).reshape(-1)[0])]
