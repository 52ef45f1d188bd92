"""Python predictor that runs an ONNX model (model.onnx) with onnxruntime itself, instead of the onnx predictor
type: useful when `load_model` needs more than a session (pre- or post-processing of its own, several files).

`load_model` returns the `onnxruntime.InferenceSession`. Its execution providers come from `config.device`:
"auto" (the default) or "cuda" put CUDAExecutionProvider first when onnxruntime has it (the onnxruntime-gpu
package), "cpu" never does. The log says which providers each session really uses.
"""

import glob
import logging
import os

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

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



def choose_providers(config):
    wanted = str((config or {}).get("device", "auto")).lower()
    if wanted not in ("auto", "cpu", "cuda", "gpu"):
        raise ValueError(f"config.device must be auto, cpu or cuda, got {wanted!r}")
    available = ort.get_available_providers()
    if wanted != "cpu" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if wanted in ("cuda", "gpu"):
        log.warning("config.device is %s but onnxruntime has no CUDAExecutionProvider: using the CPU", wanted)
    return ["CPUExecutionProvider"]


class PythonPredictor:
    def __init__(self, config, python_client):
        self.client = python_client
        self.labels = list((config or {}).get("labels") or DEFAULT_LABELS)
        self.providers = choose_providers(config)
        log.info("onnxruntime %s: sessions use %s (config.device: %s)", ort.__version__, ", ".join(self.providers),
                 (config or {}).get("device", "auto"))

    def load_model(self, model_path):
        """One version's folder -> an InferenceSession on its only .onnx file."""
        files = glob.glob(os.path.join(model_path, "*.onnx"))
        if len(files) != 1:
            raise ValueError(f"expected one .onnx file in {model_path}, found {len(files)}")
        session = ort.InferenceSession(files[0], providers=self.providers)
        log.info("session for %s runs on %s", model_path, ", ".join(session.get_providers()))
        return session

    def predict(self, payload, query_params):
        query_params = query_params or {}
        session = self.client.get_model(query_params.get("model") or "iris", query_params.get("version") or "latest")
        x = np.asarray(payload_to_rows(payload), dtype=np.float32)
        scores = session.run(["scores"], {session.get_inputs()[0].name: x})[0]
        return answer(payload, scores, self.labels)
