"""Small stand-ins for the TensorFlow models of Cortex's v0.22 examples, with the same signatures.

Cortex's examples load pretrained SavedModels from its public bucket; these are tiny models with the same
signature keys, input names, dtypes and shapes, and output names, dtypes and ranks, so the examples' predictor
code runs against them unchanged, offline:

- `write_iris`: `examples/tensorflow/iris-classifier` (a DNNClassifier exported with one float64 `[None]`
  placeholder per feature): signature `predict`, outputs `class_ids` int64 [None, 1], `classes` string
  [None, 1], `probabilities` and `logits` float32 [None, 3], `all_class_ids` int32 [None, 3], `all_classes`
  string [None, 3]. The classifier is model_factory's linear iris model, so the examples' samples get their
  known species.
- `write_vision`: the image models (resnet50's `input` -> `output` class scores; yolov3's grids, whose
  predictor reshapes each flat output to (size, size, 3 * (5 + classes))): signature `serving_default`,
  input `input` float32 [None, 4, 4, 3], outputs `output` float32 [None, 10] with the score of class k equal
  to `VISION_SCORE_ORDER[k] + mean(image)`, and `conv_81` float32 [None, 2, 2, 18] and `conv_93` float32
  [None, 4, 4, 18] holding `1000 * row + 100 * column + channel + mean(image)`.
- `write_yolov3`: `examples/tensorflow/license-plate-reader`'s yolov3 (signature `serving_default`, input
  `input_1` float32 [None, 416, 416, 3], outputs `conv_81`, `conv_93`, `conv_105` float32 [None, S, S, 18]
  for S = 13, 26, 52), all zeros: no box reaches the example's objectness threshold.
- `write_gpt2` and `write_gpt2_encoder`: `examples/tensorflow/text-generator`: signature `predict`, input
  `context` int32 [None, None] -> output `sample` int32 [None, None], here the context itself (GPT-2 appends
  its continuation to it); and an encoder in GPT-2's format (`encoder.json`, `vocab.bpe`) with one token per
  byte and no merges, so the example's encoder turns any text into tokens and back.

And for the other frameworks' examples, all of them model_factory's linear iris classifier or a linear
regression (`MPG_WEIGHTS`, `MPG_BIAS`) so each sample has a known answer:

- `write_onnx_iris`: `onnx/iris-classifier` and traffic-splitter's ONNX API (an XGBoost classifier converted
  with onnxmltools): `model.onnx` with input `input` float32 [None, 4], outputs `label` int64 [None] first
  (the predictor reads `prediction[0][0]`), then `probabilities` float32 [None, 3].
- `write_sklearn_iris`: `sklearn/iris-classifier`'s `model.pkl`, a pickled scikit-learn LogisticRegression.
- `write_pytorch_iris`: `pytorch/iris-classifier`'s `weights.pth`, a state dict for the example's own `IrisNet`
  (`fc1` 4->100, ReLU, `fc2` 100->100, `fc3` 100->3, softmax) that computes the linear classifier (identity
  layers in front: iris measurements are positive, so the ReLU passes them).
- `write_mpg`: the MLflow scikit-learn model `sklearn/mpg-estimator/linreg/` (versions 1, 2, 3, as in Cortex's
  bucket), a LinearRegression over (cylinders, displacement, horsepower, weight, acceleration) whose bias
  grows by one per version (`mpg_bias`), so an answer tells which version gave it.

TensorFlow is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from scripts.model_factory import IRIS_BIAS, IRIS_WEIGHTS

MPG_WEIGHTS = [[0.0], [-0.01], [-0.05], [-0.005], [0.1]]
MPG_BIAS = [45.0]  # version 0; version v adds v
MPG_VERSIONS = (1, 2, 3)
IRIS_FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
VISION_SCORE_ORDER = (0, 7, 4, 1, 8, 5, 2, 9, 6, 3)  # a permutation: class k scores this much above the mean
VISION_GRIDS = {"conv_81": 2, "conv_93": 4}  # output name -> grid size
VISION_FILTERS = 18  # 3 anchors x (5 + 1 class), as the license-plate yolov3 has


def _save_tf(module, directory: Path, signatures: dict) -> Path:
    """Save a tf.Module as a SavedModel in `directory` (made if missing) with the given signatures."""
    import tensorflow as tf

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(module, str(directory), signatures=signatures)
    return directory


def write_iris(directory: Path) -> Path:
    """The iris-classifier stand-in (signature `predict`) as a SavedModel in `directory`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    specs = [tf.TensorSpec([None], tf.float64, name=n) for n in IRIS_FEATURES]

    class Iris(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="iris")
            self.w = tf.Variable(IRIS_WEIGHTS, dtype=tf.float32, name="W")
            self.b = tf.Variable(IRIS_BIAS, dtype=tf.float32, name="b")

        @tf.function(input_signature=specs)
        def predict(self, sepal_length, sepal_width, petal_length, petal_width):
            x = tf.cast(tf.stack([sepal_length, sepal_width, petal_length, petal_width], axis=1), tf.float32)
            logits = tf.matmul(x, self.w) + self.b
            class_ids = tf.argmax(logits, axis=1, output_type=tf.int64)[:, tf.newaxis]
            all_ids = tf.tile(tf.range(3, dtype=tf.int32)[tf.newaxis, :], [tf.shape(x)[0], 1])
            return {
                "class_ids": class_ids,
                "classes": tf.strings.as_string(class_ids),
                "logits": logits,
                "probabilities": tf.nn.softmax(logits),
                "all_class_ids": all_ids,
                "all_classes": tf.strings.as_string(all_ids),
            }

    module = Iris()
    return _save_tf(module, directory, {"predict": module.predict})


def write_vision(directory: Path) -> Path:
    """The image-model stand-in (signature `serving_default`) as a SavedModel in `directory`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    class Vision(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="vision")
            self.order = tf.Variable(VISION_SCORE_ORDER, dtype=tf.float32, name="order")

        @tf.function(input_signature=[tf.TensorSpec([None, 4, 4, 3], tf.float32, name="input")])
        def serve(self, image):
            mean = tf.reduce_mean(image, axis=[1, 2, 3])[:, tf.newaxis]  # [batch, 1]
            out = {"output": mean + self.order[tf.newaxis, :]}
            for name, size in VISION_GRIDS.items():
                i = tf.range(size, dtype=tf.float32)
                c = tf.range(VISION_FILTERS, dtype=tf.float32)
                grid = 1000.0 * i[:, None, None] + 100.0 * i[None, :, None] + c[None, None, :]
                out[name] = grid[tf.newaxis] + mean[:, :, tf.newaxis, tf.newaxis]
            return out

    module = Vision()
    return _save_tf(module, directory, {"serving_default": module.serve})


def write_gpt2(directory: Path) -> Path:
    """The text-generator stand-in (signature `predict`): `sample` echoes `context`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    class Gpt2(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="context")])
        def predict(self, context):
            return {"sample": tf.identity(context)}

    module = Gpt2()
    return _save_tf(module, directory, {"predict": module.predict})


def write_gpt2_encoder(directory: Path) -> Path:
    """`encoder.json` and `vocab.bpe` in GPT-2's format: a token for each byte (in GPT-2's byte-to-unicode
    mapping), and a merge list with only its version line."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "encoder.json").write_text(json.dumps({chars[b]: b for b in range(256)}))
    (directory / "vocab.bpe").write_text("#version: 0.2\n")
    return directory


YOLOV3_GRIDS = {"conv_81": 13, "conv_93": 26, "conv_105": 52}


def write_yolov3(directory: Path) -> Path:
    """The license-plate-reader yolov3 stand-in (signature `serving_default`): three all-zero grids."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    class Yolov3(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 416, 416, 3], tf.float32, name="input_1")])
        def serve(self, image):
            batch = tf.shape(image)[0]
            return {name: tf.zeros([batch, size, size, VISION_FILTERS]) for name, size in YOLOV3_GRIDS.items()}

    module = Yolov3()
    return _save_tf(module, directory, {"serving_default": module.serve})


def write_onnx_iris(directory: Path) -> Path:
    """`model.onnx` of the ONNX iris stand-in (outputs `label`, then `probabilities`) in `directory`."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.asarray(IRIS_WEIGHTS, dtype=np.float32), name="W")
    b = numpy_helper.from_array(np.asarray(IRIS_BIAS, dtype=np.float32), name="b")
    nodes = [
        helper.make_node("MatMul", ["input", "W"], ["scores_raw"]),
        helper.make_node("Add", ["scores_raw", "b"], ["scores"]),
        helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0),
        helper.make_node("Softmax", ["scores"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "iris",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
        outputs=[
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3]),
        ],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(directory / "model.onnx"))
    return directory


def write_sklearn_iris(directory: Path) -> Path:
    """`model.pkl`: a pickled LogisticRegression whose decision function is the linear iris classifier."""
    import pickle

    import numpy as np
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression()
    model.classes_ = np.arange(3)
    model.coef_ = np.asarray(IRIS_WEIGHTS, dtype=np.float64).T
    model.intercept_ = np.asarray(IRIS_BIAS, dtype=np.float64)
    model.n_features_in_ = 4
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.pkl").write_bytes(pickle.dumps(model))
    return directory


def write_pytorch_iris(directory: Path) -> Path:
    """`weights.pth`: a state dict for `examples/pytorch/iris-classifier/model.py`'s `IrisNet`."""
    import torch

    hidden = 100
    fc1 = torch.zeros(hidden, 4)
    fc1[:4, :4] = torch.eye(4)
    fc3 = torch.zeros(3, hidden)
    fc3[:, :4] = torch.tensor(IRIS_WEIGHTS, dtype=torch.float32).T
    state = {
        "fc1.weight": fc1,
        "fc1.bias": torch.zeros(hidden),
        "fc2.weight": torch.eye(hidden),
        "fc2.bias": torch.zeros(hidden),
        "fc3.weight": fc3,
        "fc3.bias": torch.tensor(IRIS_BIAS, dtype=torch.float32),
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / "weights.pth")
    return directory


def write_mpg(directory: Path) -> Path:
    """The MLflow mpg-estimator stand-in, versions 1, 2 and 3, in `directory`."""
    import logging

    import mlflow

    from scripts.framework_models import write_mlflow

    logging.getLogger(mlflow.__name__).setLevel(logging.ERROR)  # its advice on pickle formats, once per version
    directory = Path(directory)
    for version in MPG_VERSIONS:
        write_mlflow(directory / str(version), MPG_WEIGHTS, mpg_bias(version))
    return directory


def mpg_bias(version: int) -> list[float]:
    """The bias of the mpg stand-in's `version`."""
    return [MPG_BIAS[0] + version]
