"""Import the user's predictor file, check its class, and call its methods with the arguments they declare."""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys

from replica.interface import CLASS_NAMES, check_methods
from replica.project import enter_project
from replica.spec import ApiSpec


class PredictorError(Exception):
    """The predictor file or class cannot be used; the message names the problem."""


def load_predictor_class(api: ApiSpec) -> type:
    """The predictor's class, imported the way Cortex ran it: from the project folder, in its environment."""
    pred = api.predictor
    enter_project(api)
    for extra in (pred.python_path, pred.path.parent):
        if extra is not None and str(extra) not in sys.path:
            sys.path.insert(0, str(extra))
    # The project's own packages (requirements.txt, supervisor/dependencies.py) come after the replica's site
    # packages, so a package the replica pins is always the one imported.
    project_packages = os.environ.get("REPLICA_PROJECT_PACKAGES")
    if project_packages and project_packages not in sys.path:
        sys.path.append(project_packages)
    module_name = f"replica_user_predictor_{api.name.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(module_name, pred.path)
    if spec is None or spec.loader is None:
        raise PredictorError(f"cannot import the predictor file {pred.path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)  # errors here carry the user's own traceback
    cls_name = CLASS_NAMES[pred.type]
    cls = getattr(module, cls_name, None)
    if not inspect.isclass(cls):
        raise PredictorError(f"{pred.path.name} defines no class {cls_name} (the {pred.type} predictor's class)")
    methods = {
        name: list(inspect.signature(fn).parameters)[1:]
        for name, fn in inspect.getmembers(cls, inspect.isfunction)
        if name in ("__init__", "predict", "post_predict", "load_model")
    }
    problems = check_methods(pred.type, methods, bool(pred.sources))
    if problems:
        raise PredictorError("; ".join(problems))
    return cls
