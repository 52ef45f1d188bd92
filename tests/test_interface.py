"""The predictor class interface (DESIGN.md section 3), checked from source without importing it."""
from __future__ import annotations

import textwrap

import pytest

from replica.interface import check_methods, check_source


@pytest.fixture
def src(tmp_path):
    def _write(code: str):
        path = tmp_path / "predictor.py"
        path.write_text(textwrap.dedent(code))
        return path

    return _write


# -- good Cortex predictors -------------------------------------------------------------------------------

PYTHON_WITH_MODELS = """
    import json  # imports are never run by the check
    import tensorflow_that_does_not_exist

    class PythonPredictor:
        def __init__(self, config, python_client):
            self.client = python_client

        def load_model(self, model_path):
            return open(model_path).read()

        def predict(self, payload, query_params, headers):
            return self.client.get_model()

        def post_predict(self, response, payload, query_params, headers):
            pass
"""

PYTHON_NO_MODELS = """
    class PythonPredictor:
        def __init__(self, config):
            self.config = config

        def predict(self, payload):
            return payload
"""

TENSORFLOW = """
    class TensorFlowPredictor:
        def __init__(self, tensorflow_client, config):
            self.client = tensorflow_client

        def predict(self, payload, query_params):
            return self.client.predict(payload, query_params.get("model"))
"""

ONNX = """
    class ONNXPredictor:
        def __init__(self, onnx_client, config):
            self.client = onnx_client

        def predict(self, payload, headers):
            return self.client.predict(payload)
"""


@pytest.mark.parametrize("code, ptype, has_models", [
    (PYTHON_WITH_MODELS, "python", True),
    (PYTHON_NO_MODELS, "python", False),
    (TENSORFLOW, "tensorflow", True),
    (ONNX, "onnx", True),
])
def test_good_cortex_predictors_pass(src, code, ptype, has_models):
    assert check_source(src(code), ptype, has_models) == []


def test_python_without_models_may_still_take_the_client(src):
    assert check_source(src(PYTHON_WITH_MODELS), "python", False) == []


def test_argument_order_and_defaults_do_not_matter(src):
    code = """
        class ONNXPredictor:
            def __init__(self, config, onnx_client=None):
                pass
            def predict(self, headers, payload=None, *, query_params=None):
                pass
    """
    assert check_source(src(code), "onnx", True) == []


def test_predict_with_no_arguments_is_fine(src):
    code = """
        class PythonPredictor:
            def __init__(self, config):
                pass
            def predict(self):
                return "ok"
    """
    assert check_source(src(code), "python", False) == []


def test_last_definition_of_the_class_wins(src):
    good = textwrap.dedent(PYTHON_NO_MODELS)
    code = good.replace("def predict(self, payload)", "def predict(self, bogus)") + good
    assert check_source(src(code), "python", False) == []


def test_other_classes_are_ignored(src):
    code = "class Helper:\n    def __init__(self, anything):\n        pass\n" + textwrap.dedent(PYTHON_NO_MODELS)
    assert check_source(src(code), "python", False) == []


# -- wrong signatures, each naming the offender --------------------------------------------------------------

def only(problems: list[str], *fragments: str) -> str:
    assert len(problems) == 1, problems
    for f in fragments:
        assert f in problems[0], (f, problems[0])
    return problems[0]


def test_wrong_init_argument_is_named(src):
    code = TENSORFLOW.replace("def __init__(self, tensorflow_client, config)",
                              "def __init__(self, tensorflow_client, config, job_spec)")
    only(check_source(src(code), "tensorflow", True), "TensorFlowPredictor.__init__", "'job_spec'",
         "allowed: config, tensorflow_client")


def test_wrong_client_name_for_type(src):
    code = ONNX.replace("onnx_client", "tensorflow_client")
    problems = check_source(src(code), "onnx", True)
    assert any("unexpected argument 'tensorflow_client'" in p for p in problems), problems
    assert any("must take a 'onnx_client' argument" in p for p in problems), problems


def test_init_without_config(src):
    code = ONNX.replace("def __init__(self, onnx_client, config)", "def __init__(self, onnx_client)")
    only(check_source(src(code), "onnx", True), "ONNXPredictor.__init__", "'config'")


@pytest.mark.parametrize("ptype, code, client", [
    ("tensorflow", TENSORFLOW, "tensorflow_client"),
    ("onnx", ONNX, "onnx_client"),
])
def test_tf_and_onnx_init_need_their_client(src, ptype, code, client):
    code = code.replace(f"{client}, config", "config")
    only(check_source(src(code), ptype, True), "__init__", f"'{client}'")


def test_python_with_models_needs_python_client(src):
    code = PYTHON_WITH_MODELS.replace("def __init__(self, config, python_client)", "def __init__(self, config)")
    only(check_source(src(code), "python", True), "PythonPredictor.__init__", "'python_client'")


def test_missing_init(src):
    code = """
        class ONNXPredictor:
            def predict(self, payload):
                pass
    """
    only(check_source(src(code), "onnx", True), "ONNXPredictor.__init__ is missing",
         "__init__(self, onnx_client, config)")


def test_missing_init_python_hint(src):
    code = """
        class PythonPredictor:
            def predict(self, payload):
                pass
    """
    only(check_source(src(code), "python", False), "__init__(self, config, python_client)")


def test_bad_predict_argument_is_named(src):
    code = PYTHON_NO_MODELS.replace("def predict(self, payload)", "def predict(self, payload, request)")
    only(check_source(src(code), "python", False), "PythonPredictor.predict", "'request'",
         "allowed: payload, query_params, headers")


def test_missing_predict(src):
    code = """
        class PythonPredictor:
            def __init__(self, config):
                pass
    """
    only(check_source(src(code), "python", False), "PythonPredictor.predict is missing")


def test_bad_post_predict_argument_is_named(src):
    code = PYTHON_WITH_MODELS.replace("def post_predict(self, response, payload, query_params, headers)",
                                      "def post_predict(self, response, result)")
    only(check_source(src(code), "python", True), "PythonPredictor.post_predict", "'result'")


def test_missing_load_model_for_python_with_models(src):
    only(check_source(src(PYTHON_NO_MODELS.replace("(self, config)", "(self, config, python_client)")),
                      "python", True),
         "PythonPredictor.load_model is missing", "load_model(self, model_path)")


def test_load_model_not_needed_without_models(src):
    assert check_source(src(PYTHON_NO_MODELS), "python", False) == []


def test_load_model_wrong_signature(src):
    code = PYTHON_WITH_MODELS.replace("def load_model(self, model_path)", "def load_model(self, path)")
    only(check_source(src(code), "python", True), "load_model(self, model_path)", "got (self, path)")


def test_missing_class_names_the_class(src):
    only(check_source(src(TENSORFLOW), "onnx", True), "predictor.py", "defines no class ONNXPredictor",
         "onnx predictor")


def test_nested_class_does_not_count(src):
    code = "def f():\n" + textwrap.indent(textwrap.dedent(PYTHON_NO_MODELS), "    ")
    only(check_source(src(code), "python", False), "defines no class PythonPredictor")


def test_syntax_error_names_file_and_line(src):
    code = "class PythonPredictor:\n    def __init__(self, config):\n        pass\n    def predict(self payload):\n"
    p = only(check_source(src(code), "python", False), "predictor.py:4", "syntax error")
    assert p


def test_unreadable_file(tmp_path):
    only(check_source(tmp_path / "missing.py", "python", False), "cannot read the predictor file")


def test_several_problems_reported_together(src):
    code = """
        class PythonPredictor:
            def __init__(self, cfg):
                pass
            def predict(self, body):
                pass
    """
    problems = check_source(src(code), "python", True)
    text = "\n".join(problems)
    for fragment in ["'cfg'", "'config'", "'python_client'", "load_model is missing", "'body'"]:
        assert fragment in text, (fragment, problems)


# -- check_methods directly (what workers run on the live class) ----------------------------------------------

def test_check_methods_good():
    assert check_methods("python", {"__init__": ["config", "python_client"], "load_model": ["model_path"],
                                     "predict": ["payload"]}, True) == []
    assert check_methods("onnx", {"__init__": ["onnx_client", "config"], "predict": []}, True) == []


def test_check_methods_bad():
    problems = check_methods("tensorflow", {"__init__": ["config", "client"], "predict": ["x"]}, True)
    text = "\n".join(problems)
    assert "'client'" in text and "'tensorflow_client'" in text and "'x'" in text
