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

from iris_payload import DEFAULT_LABELS, answer, payload_to_rows  # examples/iris_payload.py

log = logging.getLogger(__name__)


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
