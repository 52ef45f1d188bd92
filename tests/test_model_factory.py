"""The model factory writes real models that the real runtimes load and agree on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scripts.model_factory import (
    IRIS_BIAS,
    IRIS_BIAS_V2,
    IRIS_LABELS,
    IRIS_SAMPLES,
    IRIS_WEIGHTS,
    write_onnx_linear,
    write_python_linear,
    write_tf_linear,
)

FEATURES = np.array([features for features, _ in IRIS_SAMPLES], dtype=np.float32)
EXPECTED = [label for _, label in IRIS_SAMPLES]


def _labels(indices) -> list[str]:
    return [IRIS_LABELS[int(i)] for i in np.asarray(indices).reshape(-1)]


def test_iris_samples_cover_every_class():
    assert sorted(EXPECTED) == sorted(IRIS_LABELS) == ["setosa", "versicolor", "virginica"]


@pytest.mark.parametrize("bias", [IRIS_BIAS, IRIS_BIAS_V2], ids=["v1", "v2"])
def test_iris_weights_classify_samples(bias):
    scores = FEATURES.astype(np.float64) @ np.asarray(IRIS_WEIGHTS) + np.asarray(bias)
    assert _labels(scores.argmax(axis=1)) == EXPECTED


def test_importing_factory_does_not_import_frameworks():
    import subprocess
    import sys

    code = (
        "import sys, scripts.model_factory; "
        "print(sorted(m for m in ('tensorflow', 'onnx', 'onnxruntime') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_onnx_linear(tmp_path: Path):
    import onnxruntime as ort

    path = write_onnx_linear(tmp_path / "iris" / "1" / "model.onnx", IRIS_WEIGHTS, IRIS_BIAS)
    assert path == tmp_path / "iris" / "1" / "model.onnx" and path.is_file()

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [inp] = session.get_inputs()
    assert (inp.name, inp.type) == ("input", "tensor(float)")
    assert inp.shape == ["batch", 4]
    outputs = session.get_outputs()
    assert [(o.name, o.type) for o in outputs] == [
        ("scores", "tensor(float)"),
        ("label", "tensor(int64)"),
    ]
    assert outputs[0].shape == ["batch", 3] and outputs[1].shape == ["batch"]

    scores, label = session.run(None, {"input": FEATURES})
    expected_scores = FEATURES @ np.asarray(IRIS_WEIGHTS, np.float32) + np.asarray(IRIS_BIAS, np.float32)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-6, atol=1e-6)
    assert label.dtype == np.int64 and label.shape == (3,)
    assert _labels(label) == EXPECTED

    # The batch dimension is symbolic: a single row works too.
    _, one = session.run(None, {"input": FEATURES[:1]})
    assert _labels(one) == ["setosa"]


def test_onnx_rejects_bad_shapes(tmp_path: Path):
    with pytest.raises(ValueError):
        write_onnx_linear(tmp_path / "m.onnx", IRIS_WEIGHTS, [0.0, 1.0])
    with pytest.raises(ValueError):
        write_onnx_linear(tmp_path / "model.bin", IRIS_WEIGHTS, IRIS_BIAS)


@pytest.mark.tensorflow  # slow (imports TensorFlow) but runs by default
def test_tf_linear(tmp_path: Path):
    import tensorflow as tf

    directory = write_tf_linear(tmp_path / "iris" / "1", IRIS_WEIGHTS, IRIS_BIAS)
    assert directory == tmp_path / "iris" / "1"
    assert (directory / "saved_model.pb").is_file()
    assert (directory / "variables" / "variables.index").is_file()
    assert list((directory / "variables").glob("variables.data-*"))

    loaded = tf.saved_model.load(str(directory))
    assert set(loaded.signatures.keys()) == {"serving_default", "double"}
    serve = loaded.signatures["serving_default"]
    _, inputs = serve.structured_input_signature
    assert list(inputs) == ["x"]
    assert inputs["x"].dtype == tf.float32 and inputs["x"].shape.as_list() == [None, 4]

    out = serve(x=tf.constant(FEATURES))
    assert set(out) == {"scores", "label"}
    assert out["label"].dtype == tf.int64 and out["scores"].shape == (3, 3)
    assert _labels(out["label"].numpy()) == EXPECTED

    doubled = loaded.signatures["double"](x=tf.constant(FEATURES))
    assert set(doubled) == {"scores"}
    np.testing.assert_allclose(doubled["scores"].numpy(), 2 * out["scores"].numpy(), rtol=1e-6)

    single = write_tf_linear(tmp_path / "single", IRIS_WEIGHTS, IRIS_BIAS, extra_signature=False)
    assert set(tf.saved_model.load(str(single)).signatures.keys()) == {"serving_default"}


def test_python_linear(tmp_path: Path):
    for version, bias in (("1", IRIS_BIAS), ("2", IRIS_BIAS_V2)):
        path = write_python_linear(tmp_path / "iris" / version, IRIS_WEIGHTS, bias)
        assert path == tmp_path / "iris" / version / "model.json"
        spec = json.loads(path.read_text())
        assert spec == {"weights": IRIS_WEIGHTS, "bias": bias}
        scores = FEATURES @ np.asarray(spec["weights"]) + np.asarray(spec["bias"])
        assert _labels(scores.argmax(axis=1)) == EXPECTED
