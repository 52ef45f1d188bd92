"""Python predictors the tests write as user files, over models that are one `model.json` each.

The class is the same everywhere a test needs one: `__init__` keeps the client, `load_model` parses the file.
What differs is how the parsed file becomes the model (`load`) and what `predict` does with it, so a test
states only those.
"""

from __future__ import annotations

import textwrap

# load_model's last lines; `spec` is the parsed model.json
AS_IS = "return spec"
LINEAR = 'return {"weights": np.asarray(spec["weights"]), "bias": np.asarray(spec["bias"])}'

_CLASS = '''import json
import os
import time

import numpy as np


class PythonPredictor:
    def __init__(self, config, python_client):
        self.client = python_client

    def load_model(self, model_path):
        with open(os.path.join(model_path, "model.json")) as f:
            spec = json.load(f)
{load}

{methods}'''


def json_predictor(methods: str, load: str = AS_IS) -> str:
    """The predictor's source: `load` ends `load_model` (it sees `spec`), `methods` are the class's other methods
    (`predict`, hooks), both written without the class's indentation."""
    return _CLASS.format(load=textwrap.indent(textwrap.dedent(load).strip(), " " * 8),
                         methods=textwrap.indent(textwrap.dedent(methods).strip(), " " * 4) + "\n")
