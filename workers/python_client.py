"""The client a PythonPredictor receives: models are whatever the predictor's own `load_model` returns."""

from __future__ import annotations

from typing import Any

from workers.registry import ModelRegistry


class PythonClient:
    def __init__(self, registry: ModelRegistry):
        self._registry = registry

    def get_model(self, model_name: str | None = None, model_version: Any = "latest") -> Any:
        """The model for a name and version ("latest", None, an int or a digit string)."""
        return self._registry.get(model_name, model_version).model
