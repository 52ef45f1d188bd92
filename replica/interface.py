"""The predictor class interface, checked the same way before serving (from source) and in workers (live).

The supervisor checks the user's file from its syntax tree, so a wrong signature stops start-up with the
argument named, without importing the file (which may import TensorFlow) in the supervisor.
"""

from __future__ import annotations

import ast
from pathlib import Path

CLASS_NAMES = {"python": "PythonPredictor", "tensorflow": "TensorFlowPredictor", "onnx": "ONNXPredictor"}
CLIENT_ARG = {"python": "python_client", "tensorflow": "tensorflow_client", "onnx": "onnx_client"}
PREDICT_ARGS = ("payload", "query_params", "headers")
POST_PREDICT_ARGS = ("response", "payload", "query_params", "headers")


def check_methods(predictor_type: str, methods: dict[str, list[str]], has_models: bool) -> list[str]:
    """Problems with a predictor class, given each method's argument names (without `self`)."""
    cls = CLASS_NAMES[predictor_type]
    client = CLIENT_ARG[predictor_type]
    problems = []
    init = methods.get("__init__")
    if init is None:
        problems.append(f"{cls}.__init__ is missing; define __init__(self, {'config, ' + client if predictor_type == 'python' else client + ', config'})")
    else:
        allowed = {"config", client}
        for arg in init:
            if arg not in allowed:
                problems.append(f"{cls}.__init__ has an unexpected argument '{arg}'; allowed: {', '.join(sorted(allowed))}")
        if "config" not in init:
            problems.append(f"{cls}.__init__ must take a 'config' argument")
        needs_client = predictor_type != "python" or has_models
        if needs_client and client not in init:
            problems.append(f"{cls}.__init__ must take a '{client}' argument (the client that serves your models)")
    if predictor_type == "python" and has_models:
        load = methods.get("load_model")
        if load is None:
            problems.append(f"{cls}.load_model is missing; a python predictor with models defines load_model(self, model_path)")
        elif load != ["model_path"]:
            problems.append(f"{cls}.load_model must be load_model(self, model_path), got ({', '.join(['self'] + load)})")
    predict = methods.get("predict")
    if predict is None:
        problems.append(f"{cls}.predict is missing; define predict(self, payload)")
    else:
        problems += [
            f"{cls}.predict has an unexpected argument '{a}'; allowed: {', '.join(PREDICT_ARGS)}"
            for a in predict if a not in PREDICT_ARGS
        ]
    post = methods.get("post_predict")
    if post is not None:
        problems += [
            f"{cls}.post_predict has an unexpected argument '{a}'; allowed: {', '.join(POST_PREDICT_ARGS)}"
            for a in post if a not in POST_PREDICT_ARGS
        ]
    return problems


def check_source(path: Path, predictor_type: str, has_models: bool) -> list[str]:
    """Check a predictor file from its source without running it."""
    cls_name = CLASS_NAMES[predictor_type]
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))  # bytes: Python's own rules for the encoding
    except SyntaxError as e:
        return [f"{path.name}:{e.lineno}: syntax error: {e.msg}"]
    except ValueError as e:  # null bytes, on Pythons that do not call them a syntax error
        return [f"{path.name}: not Python source: {e}"]
    except OSError as e:
        return [f"cannot read the predictor file {path}: {e}"]
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name]
    if not classes:
        return [f"{path.name} defines no class {cls_name} (the {predictor_type} predictor's class)"]
    methods = {}
    for node in classes[-1].body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs][1:]
            methods[node.name] = args
    return check_methods(predictor_type, methods, has_models)
