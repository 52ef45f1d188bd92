"""Create small, real models on disk for tests and the bundled examples.

Every model here is the same tiny linear classifier (``scores = x @ W + b``,
``label = argmax(scores)``) exported in each format the replica serves, so a
test can check that ONNX, TensorFlow and Python predictors all agree on one
known answer without shipping binary model files in the repository.

Heavy libraries are imported inside the function that needs them: importing
this module must stay cheap (and must work where TensorFlow is not installed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

__all__ = [
    "IRIS_WEIGHTS",
    "IRIS_BIAS",
    "IRIS_BIAS_V2",
    "IRIS_LABELS",
    "IRIS_SAMPLES",
    "ONNX_OPSET",
    "ONNX_IR_VERSION",
    "write_onnx_linear",
    "write_onnx_mixed",
    "write_tf_linear",
    "write_tf_mixed",
    "write_python_linear",
]

# Features: [sepal_length, sepal_width, petal_length, petal_width]; classes in
# IRIS_LABELS order. W has shape [n_in, n_out] (scores = x @ W + b). Petal size
# separates the species: a short petal favours setosa, a long and wide petal
# favours virginica, versicolor is the zero baseline in between.
IRIS_WEIGHTS: list[list[float]] = [
    [0.0, 0.0, 0.0],  # sepal_length
    [0.5, 0.0, 0.0],  # sepal_width
    [-2.0, 0.0, 2.0],  # petal_length
    [0.0, 0.0, 2.0],  # petal_width
]
IRIS_BIAS: list[float] = [6.0, 0.0, -13.0]
# A second, different bias (used as version 2 of the Python example) that still
# classifies the three IRIS_SAMPLES the same way.
IRIS_BIAS_V2: list[float] = [5.5, 0.5, -12.5]
IRIS_LABELS: list[str] = ["setosa", "versicolor", "virginica"]
# One typical flower per class: (features, expected label).
IRIS_SAMPLES: list[tuple[list[float], str]] = [
    ([5.1, 3.5, 1.4, 0.2], "setosa"),
    ([6.4, 3.2, 4.5, 1.5], "versicolor"),
    ([6.3, 3.3, 6.0, 2.5], "virginica"),
]

# onnx 1.23 writes IR version 14 / opset 28 by default, which is newer than
# some runtimes accept; pin a widely supported pair (opset 17 <-> IR 8).
ONNX_OPSET = 17
ONNX_IR_VERSION = 8


def _shape(weights: Sequence[Sequence[float]], bias: Sequence[float]) -> tuple[int, int]:
    """Validate W ([n_in, n_out]) against b ([n_out]) and return (n_in, n_out)."""
    n_in = len(weights)
    if n_in == 0:
        raise ValueError("weights must have at least one row")
    n_out = len(weights[0])
    if n_out == 0 or any(len(row) != n_out for row in weights):
        raise ValueError("weights must be a non-empty rectangular [n_in, n_out] matrix")
    if len(bias) != n_out:
        raise ValueError(f"bias has {len(bias)} values, weights have {n_out} columns")
    return n_in, n_out


def write_onnx_linear(
    path: Path, weights: Sequence[Sequence[float]], bias: Sequence[float]
) -> Path:
    """Write a linear classifier as one ``.onnx`` file at ``path``.

    Input ``input`` (float32 [batch, n_in]); outputs ``scores`` (float32
    [batch, n_out]) then ``label`` (int64 [batch], ArgMax over axis 1). Built
    with ``onnx.helper`` only, so tests need neither torch nor sklearn.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"ONNX model path must end in .onnx: {path}")
    n_in, n_out = _shape(weights, bias)

    w = numpy_helper.from_array(np.asarray(weights, dtype=np.float32), name="W")
    b = numpy_helper.from_array(np.asarray(bias, dtype=np.float32), name="b")
    nodes = [
        helper.make_node("MatMul", ["input", "W"], ["matmul_out"], name="matmul"),
        helper.make_node("Add", ["matmul_out", "b"], ["scores"], name="add_bias"),
        helper.make_node("ArgMax", ["scores"], ["label"], name="argmax", axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "linear_classifier",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", n_in])],
        outputs=[
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", n_out]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        initializer=[w, b],
    )
    model = helper.make_model(
        graph,
        producer_name="model-replica.model_factory",
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
    )
    model.ir_version = ONNX_IR_VERSION
    onnx.checker.check_model(model, full_check=True)

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def write_onnx_mixed(path: Path, weights: Sequence[Sequence[float]], bias: Sequence[float]) -> Path:
    """Write a model with inputs and outputs of several datatypes, for the protocols' tensor encodings.

    Inputs ``features`` (float32 [batch, n_in]), ``counts`` (int64 [batch]) and ``names`` (string [batch]);
    outputs ``scores`` (float32 [batch, n_out], the linear layer), ``label`` (int64 [batch]), ``doubled``
    (int64 [batch], 2 * counts) and ``names_out`` (string [batch], the names as they came).
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = Path(path)
    n_in, n_out = _shape(weights, bias)
    w = numpy_helper.from_array(np.asarray(weights, dtype=np.float32), name="W")
    b = numpy_helper.from_array(np.asarray(bias, dtype=np.float32), name="b")
    two = numpy_helper.from_array(np.asarray(2, dtype=np.int64), name="two")
    nodes = [
        helper.make_node("MatMul", ["features", "W"], ["matmul_out"]),
        helper.make_node("Add", ["matmul_out", "b"], ["scores"]),
        helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0),
        helper.make_node("Mul", ["counts", "two"], ["doubled"]),
        helper.make_node("Identity", ["names"], ["names_out"]),
    ]
    graph = helper.make_graph(
        nodes, "mixed_types",
        inputs=[helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n_in]),
                helper.make_tensor_value_info("counts", TensorProto.INT64, ["batch"]),
                helper.make_tensor_value_info("names", TensorProto.STRING, ["batch"])],
        outputs=[helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", n_out]),
                 helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
                 helper.make_tensor_value_info("doubled", TensorProto.INT64, ["batch"]),
                 helper.make_tensor_value_info("names_out", TensorProto.STRING, ["batch"])],
        initializer=[w, b, two],
    )
    model = helper.make_model(graph, producer_name="model-replica.model_factory",
                              opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = ONNX_IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def write_tf_linear(
    directory: Path,
    weights: Sequence[Sequence[float]],
    bias: Sequence[float],
    extra_signature: bool = True,
) -> Path:
    """Write a linear classifier as a TensorFlow SavedModel into ``directory``.

    Signature ``serving_default``: input ``x`` (float32 [None, n_in]) ->
    ``{"scores": float32 [None, n_out], "label": int64 [None]}``. With
    ``extra_signature`` also ``double``: ``x`` -> ``{"scores": 2 * scores}``, to
    exercise signature selection. W and b are ``tf.Variable``s so the export
    has a real ``variables/`` directory, like models trained for real.
    The model is loaded back and called before returning.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    directory = Path(directory)
    n_in, n_out = _shape(weights, bias)
    spec = tf.TensorSpec(shape=[None, n_in], dtype=tf.float32, name="x")

    class LinearClassifier(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="linear_classifier")
            self.w = tf.Variable(np.asarray(weights, dtype=np.float32), name="W")
            self.b = tf.Variable(np.asarray(bias, dtype=np.float32), name="b")

        def _scores(self, x: tf.Tensor) -> tf.Tensor:
            return tf.matmul(x, self.w) + self.b

        @tf.function(input_signature=[spec])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            scores = self._scores(x)
            return {"scores": scores, "label": tf.argmax(scores, axis=1, output_type=tf.int64)}

        @tf.function(input_signature=[spec])
        def double(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"scores": 2.0 * self._scores(x)}

    module = LinearClassifier()
    signatures = {"serving_default": module.serve}
    if extra_signature:
        signatures["double"] = module.double

    directory.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(module, str(directory), signatures=signatures)

    # Check the export really is usable: files present, signatures callable.
    if not (directory / "saved_model.pb").is_file() or not (
        directory / "variables" / "variables.index"
    ).is_file():
        raise RuntimeError(f"SavedModel export to {directory} is incomplete")
    loaded = tf.saved_model.load(str(directory))
    probe = tf.zeros([1, n_in], dtype=tf.float32)
    out = loaded.signatures["serving_default"](x=probe)
    if set(out) != {"scores", "label"} or out["label"].dtype != tf.int64:
        raise RuntimeError(f"unexpected serving_default outputs: {out}")
    if extra_signature:
        doubled = loaded.signatures["double"](x=probe)["scores"].numpy()
        if not np.allclose(doubled, 2.0 * out["scores"].numpy()):
            raise RuntimeError("'double' signature does not double the scores")
    return directory


def write_tf_mixed(directory: Path, weights: Sequence[Sequence[float]], bias: Sequence[float]) -> Path:
    """Write a SavedModel with a numeric and a string input, for the protocols' tensor encodings.

    Signature ``serving_default``: ``x`` (float32 [None, n_in]) and ``text`` (string [None]) ->
    ``{"scores": float32 [None, n_out], "label": int64 [None], "text_length": int32 [None],
    "echo_bytes": string [None]}`` (the text as it came; the ``_bytes`` suffix is TF Serving's sign for binary
    output, which its REST API answers as base64).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    directory = Path(directory)
    n_in, _ = _shape(weights, bias)

    class Mixed(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="mixed")
            self.w = tf.Variable(np.asarray(weights, dtype=np.float32), name="W")
            self.b = tf.Variable(np.asarray(bias, dtype=np.float32), name="b")

        @tf.function(input_signature=[tf.TensorSpec([None, n_in], tf.float32, name="x"),
                                      tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, x: tf.Tensor, text: tf.Tensor) -> dict[str, tf.Tensor]:
            scores = tf.matmul(x, self.w) + self.b
            return {"scores": scores, "label": tf.argmax(scores, axis=1, output_type=tf.int64),
                    "text_length": tf.strings.length(text), "echo_bytes": tf.identity(text)}

    module = Mixed()
    directory.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    return directory


def write_python_linear(
    directory: Path, weights: Sequence[Sequence[float]], bias: Sequence[float]
) -> Path:
    """Write ``directory/model.json`` = ``{"weights": W, "bias": b}``.

    This is the model format of the Python example predictor (loaded with
    json + numpy), so Python-predictor tests need no ML framework at all.
    Returns the path of the written file.
    """
    _shape(weights, bias)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.json"
    payload = {
        "weights": [[float(v) for v in row] for row in weights],
        "bias": [float(v) for v in bias],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path
