"""Python predictor for a PyTorch model: the state dict (model.pt) of an nn.Linear(4, 3) iris classifier.

`load_model` returns the `nn.Module`, in eval mode, on the device chosen from `config.device`: "auto" (the
default) or "cuda" use the GPU when `torch.cuda.is_available()`, "cpu" never does. The log says which.
`unload_model` frees the module's tensors as soon as the replica drops a version (eviction from the cache, or
a newer version swapped in) and, on a GPU, hands the cached blocks back with `torch.cuda.empty_cache()`.
"""

import logging
import os

import torch
from torch import nn

from iris_payload import DEFAULT_LABELS, answer, payload_to_rows  # examples/iris_payload.py

log = logging.getLogger(__name__)


def choose_device(config):
    wanted = str((config or {}).get("device", "auto")).lower()
    if wanted not in ("auto", "cpu", "cuda", "gpu"):
        raise ValueError(f"config.device must be auto, cpu or cuda, got {wanted!r}")
    if wanted != "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    if wanted in ("cuda", "gpu"):
        log.warning("config.device is %s but torch sees no CUDA device: using the CPU", wanted)
    return torch.device("cpu")


class PythonPredictor:
    def __init__(self, config, python_client):
        self.client = python_client
        self.labels = list((config or {}).get("labels") or DEFAULT_LABELS)
        self.device = choose_device(config)
        log.info("torch %s: models run on %s (config.device: %s, CUDA available: %s)", torch.__version__,
                 self.device, (config or {}).get("device", "auto"), torch.cuda.is_available())

    def load_model(self, model_path):
        """One version's folder -> an nn.Linear holding the weights of its model.pt."""
        state = torch.load(os.path.join(model_path, "model.pt"), map_location=self.device, weights_only=True)
        n_out, n_in = state["weight"].shape
        model = nn.Linear(n_in, n_out)
        model.load_state_dict(state)
        return model.to(self.device).eval()

    def unload_model(self, model):
        """Release the version's memory now, even if something still refers to the module."""
        device = next(model.parameters()).device
        model.to_empty(device="meta")  # every parameter becomes a tensor without storage
        if device.type == "cuda":
            torch.cuda.empty_cache()
        log.info("released a torch model from %s%s", device, " (CUDA cache emptied)" if device.type == "cuda" else "")

    def predict(self, payload, query_params):
        query_params = query_params or {}
        model = self.client.get_model(query_params.get("model") or "iris", query_params.get("version") or "latest")
        x = torch.tensor(payload_to_rows(payload), dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            scores = model(x).cpu().numpy()
        return answer(payload, scores, self.labels)
