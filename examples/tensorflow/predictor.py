"""TensorFlow predictor for the iris example: two models, chosen by ?model=<name>."""

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


class TensorFlowPredictor:
    def __init__(self, tensorflow_client, config):
        config = config or {}
        self.client = tensorflow_client
        self.default_model = config.get("default_model", "iris")
        self.labels = list(config.get("labels") or DEFAULT_LABELS)

    def predict(self, payload, query_params):
        model_name = (query_params or {}).get("model") or self.default_model
        # As Cortex's client did: each output a flat list, int64 values as decimal strings.
        outputs = self.client.predict({"x": payload_to_features(payload)}, model_name)
        scores = outputs["scores"]
        # The "double" signature returns scores only; argmax is unchanged by doubling.
        index = int(outputs["label"][0]) if "label" in outputs else int(np.argmax(scores))
        return {"label": self.labels[index], "scores": scores}
