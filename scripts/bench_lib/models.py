"""Models and predictors the benchmark serves: the iris ONNX classifier of the examples, a heavier ONNX model
with the same inputs and outputs (for reloads that cost something), and the TensorFlow SavedModel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scripts import model_factory as mf

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = (ROOT / "examples" / "onnx" / "sample.json").read_text().strip()

# The examples' ONNX predictor, reading the model name from ?model= (None: the only model).
ONNX_PREDICTOR = """
import numpy as np

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
LABELS = ("setosa", "versicolor", "virginica")


class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client

    def predict(self, payload, query_params):
        row = np.array([[float(payload[name]) for name in FEATURES]], dtype=np.float32)
        _scores, label = self.client.predict(row, query_params.get("model"))
        return LABELS[int(label[0])]
"""


def iris_onnx(path: Path) -> Path:
    return mf.write_onnx_linear(path, mf.IRIS_WEIGHTS, mf.IRIS_BIAS)


def heavy_onnx(path: Path, hidden: int = 2048, seed: int = 0) -> Path:
    """input [batch, 4] -> MatMul [4, hidden] -> MatMul [hidden, hidden] -> MatMul [hidden, 3] -> scores, label:
    the iris model's signature with about hidden^2 * 4 bytes of weights (16 MiB at 2048), so that loading a new
    version costs real CPU and I/O. `seed` makes each version's bytes differ."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.01, name=n)
               for n, shape in (("W1", (4, hidden)), ("W2", (hidden, hidden)), ("W3", (hidden, 3)))]
    nodes = [helper.make_node("MatMul", ["input", "W1"], ["h1"]), helper.make_node("MatMul", ["h1", "W2"], ["h2"]),
             helper.make_node("MatMul", ["h2", "W3"], ["scores"]),
             helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0)]
    graph = helper.make_graph(
        nodes, "heavy", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"])], initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", mf.ONNX_OPSET)])
    model.ir_version = mf.ONNX_IR_VERSION
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def tensorflow_iris(directory: Path) -> Path:
    """The examples' TensorFlow SavedModel, written by a subprocess (TensorFlow stays out of this process)."""
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); from scripts import model_factory as mf;"
            "mf.write_tf_linear(Path(sys.argv[2]), mf.IRIS_WEIGHTS, mf.IRIS_BIAS, extra_signature=False)")
    subprocess.run([sys.executable, "-c", code, str(ROOT), str(directory)], check=True, capture_output=True)
    return directory


def session_timings_ms(model_file: Path, repeat: int = 20) -> tuple[float, float]:
    """Median (creation, release) times of an `onnxruntime.InferenceSession(model_file)` that ran once, in a
    fresh process: the raw cost of a load, and of dropping a session as an eviction does."""
    code = """
import statistics, sys, time
import numpy as np
import onnxruntime as ort
create, release = [], []
for _ in range(int(sys.argv[2]) + 2):
    t = time.perf_counter()
    s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    create.append(time.perf_counter() - t)
    s.run(None, {s.get_inputs()[0].name: np.ones((1, 4), np.float32)})
    t = time.perf_counter()
    del s
    release.append(time.perf_counter() - t)
print(statistics.median(create[2:]) * 1000, statistics.median(release[2:]) * 1000)
"""
    out = subprocess.run([sys.executable, "-c", code, str(model_file), str(repeat)], check=True,
                         capture_output=True, text=True)
    create, release = out.stdout.strip().splitlines()[-1].split()
    return float(create), float(release)


def session_rotation_cpu_us(model_file: Path, seconds: float = 1.5) -> dict[str, float]:
    """CPU microseconds per `session.run` (process CPU time, so idle spinning threads count) when runs go to one
    session or rotate over three, with onnxruntime's default intra-op spinning and with it off."""
    code = """
import sys, time
import numpy as np
import onnxruntime as ort
x = np.ones((1, 4), np.float32)
def cpu_per_run(n_sessions, spin):
    opts = ort.SessionOptions()
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    ss = [ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"]) for _ in range(n_sessions)]
    n, c0, t0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < float(sys.argv[2]):
        ss[n % n_sessions].run(None, {"input": x})
        time.sleep(0.0003)  # requests arrive apart, as over HTTP
        n += 1
    return (time.process_time() - c0) / n * 1e6
print(cpu_per_run(1, True), cpu_per_run(3, True), cpu_per_run(1, False), cpu_per_run(3, False))
"""
    out = subprocess.run([sys.executable, "-c", code, str(model_file), str(seconds)], check=True,
                         capture_output=True, text=True)
    a, b, c, d = map(float, out.stdout.split())
    return {"1 session": a, "3 sessions": b, "1 session, no spinning": c, "3 sessions, no spinning": d}
