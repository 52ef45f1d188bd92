"""Cortex's own TensorFlow examples (cortexlabs/cortex, tag v0.22.1, `examples/`) served by a real replica, with
stand-in models of the same signatures (scripts/cortex_standins.py).

- tensorflow/iris-classifier: its spec (the same keys and the same `s3://cortex-examples/...` model path, here
  on the test's own S3 server), a predictor that does what the example's does (`int(prediction["class_ids"][0])`
  on the client's answer) and its sample.json, whose four scalars feed four `[None]` inputs: "setosa".
- A project in the style of the image examples (resnet50, yolov3 of license-plate-reader) and of the docs'
  project-file example: outputs indexed and reshaped as flat lists, a project file opened by relative path
  and a variable read from `.env`, with `replica serve` started from another folder and `log_level: debug`.
"""

from __future__ import annotations

import base64
import json
import textwrap

import pytest

from scripts.model_factory import IRIS_LABELS, IRIS_SAMPLES
from tests.helpers import serving, write_spec
from tests.s3server import delete_bucket, upload_dir

pytestmark = pytest.mark.tensorflow

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
IRIS_SAMPLE_JSON = {"sepal_length": 5.2, "sepal_width": 3.6, "petal_length": 1.4, "petal_width": 0.3}  # sample.json

# What examples/tensorflow/iris-classifier/predictor.py does (traffic-splitter's tensorflow_predictor.py is the
# same): the client's answer for the payload as it came, the first class id turned into an int.
IRIS_PREDICTOR = """
labels = ["setosa", "versicolor", "virginica"]


class TensorFlowPredictor:
    def __init__(self, tensorflow_client, config):
        self.client = tensorflow_client

    def predict(self, payload):
        prediction = self.client.predict(payload)
        return labels[int(prediction["class_ids"][0])]
"""

IRIS_SPEC = """
- name: iris-classifier
  kind: RealtimeAPI
  predictor:
    type: tensorflow
    path: predictor.py
    model_path: s3://cortex-examples/tensorflow/iris-classifier/nn/
  monitoring:
    model_type: classification
"""


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    from scripts.cortex_standins import write_iris, write_vision

    root = tmp_path_factory.mktemp("cortex-standins")
    return {"iris": write_iris(root / "iris"), "vision": write_vision(root / "vision")}


@pytest.fixture(scope="module")
def iris_example(s3, standins, tmp_path_factory):
    client = s3.client()
    client.create_bucket(Bucket="cortex-examples")
    # Cortex's export folder is versioned by its export timestamp.
    upload_dir(client, "cortex-examples", standins["iris"], "tensorflow/iris-classifier/nn/1560263597")
    folder = tmp_path_factory.mktemp("iris-classifier")
    (folder / "predictor.py").write_text(textwrap.dedent(IRIS_PREDICTOR).lstrip())
    spec = write_spec(folder, IRIS_SPEC, "cortex.yaml")
    try:
        with serving(spec, folder / "state", env=s3.env) as r:
            yield r
    finally:
        delete_bucket(client, "cortex-examples")


def test_iris_classifier_example_answers_its_sample(iris_example):
    resp = iris_example.post("/", json=IRIS_SAMPLE_JSON)
    assert resp.status_code == 200, resp.text
    assert resp.text == "setosa"


@pytest.mark.parametrize("features, label", IRIS_SAMPLES, ids=[label for _, label in IRIS_SAMPLES])
def test_iris_classifier_example_each_species(iris_example, features, label):
    resp = iris_example.post("/predict", json=dict(zip(FEATURES, features)))
    assert resp.status_code == 200, resp.text
    assert resp.text == label


# -- a project in the style of the image examples ------------------------------------------------------------

PROJECT_PREDICTOR = """
import json
import logging
import math
import os

import numpy as np

log = logging.getLogger("standin-predictor")

with open("labels.json") as f:  # a project file, by relative path, when the module is imported
    LABELS = json.load(f)


class TensorFlowPredictor:
    def __init__(self, tensorflow_client, config):
        self.client = tensorflow_client
        with open(config["model_config"]) as f:  # as yolov3's predictor reads config.json
            self.filters = json.load(f)["filters"]
        self.greeting = os.environ["GREETING"]  # from .env
        log.debug("standin predictor ready with %d labels", len(LABELS))

    def predict(self, payload, query_params):
        op = query_params["op"]
        if op == "iris":  # multi-model-classifier's iris branch
            prediction = self.client.predict(payload["input"], "iris")
            return {"label": LABELS[int(prediction["class_ids"][0])]}
        if op == "raw":
            return self.client.predict(payload, "iris")
        if op == "top5":  # resnet50: argsort of the flat score list, the last five, best first
            img = np.full((4, 4, 3), payload["fill"], dtype=np.uint8)
            results = self.client.predict({"input": img[np.newaxis, ...]}, "vision")["output"]
            results = np.argsort(results)
            return [int(i) for i in results[-5:]][::-1]
        if op == "grids":  # yolov3: each flat output reshaped to (size, size, filters)
            batch_input = np.zeros((1, 4, 4, 3))
            batch_input[0] = payload["fill"]
            output = self.client.predict({"input": batch_input}, "vision")
            grids = {}
            for name in ("conv_81", "conv_93"):
                length = len(output[name])
                box_size = int(math.sqrt(length / self.filters))
                grid = np.array(output[name]).reshape((box_size, box_size, self.filters))
                grids[name] = {"shape": list(grid.shape), "cell": float(grid[1, 0, 5])}
            return grids
        return {"cwd": os.getcwd(), "greeting": self.greeting, "override": os.environ["OVERRIDE"]}
"""

PROJECT_SPEC = """
- name: standins
  kind: RealtimeAPI
  predictor:
    type: tensorflow
    path: predictor.py
    models:
      paths:
        - name: iris
          model_path: models/iris
        - name: vision
          model_path: models/vision
    config:
      model_config: config.json
    env:
      OVERRIDE: from-spec
    log_level: debug
"""


@pytest.fixture(scope="module")
def project(standins, tmp_path_factory):
    import shutil

    folder = tmp_path_factory.mktemp("project")
    for name, path in standins.items():
        shutil.copytree(path, folder / "models" / name / "1")
    (folder / "predictor.py").write_text(textwrap.dedent(PROJECT_PREDICTOR).lstrip())
    (folder / "labels.json").write_text(json.dumps(IRIS_LABELS))
    (folder / "config.json").write_text(json.dumps({"filters": 18}))
    (folder / ".env").write_text('GREETING="hello from .env"\nOVERRIDE=from-dotenv\n')
    spec = write_spec(folder, PROJECT_SPEC)
    elsewhere = tmp_path_factory.mktemp("elsewhere")  # `replica serve` is started from here
    with serving(spec, folder / "state", cwd=elsewhere) as r:
        r.folder = folder
        yield r


def test_predictor_runs_in_the_project_folder_with_dotenv_then_predictor_env(project):
    resp = project.post("/?op=env", json={})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"cwd": str(project.folder.resolve()), "greeting": "hello from .env",
                           "override": "from-spec"}


def test_log_level_debug_reaches_the_log(project):
    log = project.log()
    assert "DEBUG" in log and "standin predictor ready with 3 labels" in log, log[-3000:]
    assert "entered the project folder" in log


def test_outputs_are_flat_lists_with_protobuf_json_types(project):
    resp = project.post("/?op=raw", json=IRIS_SAMPLE_JSON)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["class_ids"] == ["0"]  # int64 [1, 1]: decimal strings
    assert out["classes"] == [base64.b64encode(b"0").decode()]  # string [1, 1]: base64
    assert out["all_class_ids"] == [0, 1, 2]  # int32 [1, 3]: numbers
    assert out["all_classes"] == [base64.b64encode(c).decode() for c in (b"0", b"1", b"2")]
    assert out["logits"] == pytest.approx([5.0, 0.0, -9.6], abs=1e-5)
    assert len(out["probabilities"]) == 3 and sum(out["probabilities"]) == pytest.approx(1, abs=1e-6)


def test_a_batch_comes_back_flat(project):
    batch = {name: [features[i] for features, _ in IRIS_SAMPLES] for i, name in enumerate(FEATURES)}
    resp = project.post("/?op=raw", json=batch)
    assert resp.status_code == 200, resp.text
    assert resp.json()["class_ids"] == ["0", "1", "2"]  # [3, 1], shape dropped
    assert len(resp.json()["logits"]) == 9


def test_multi_model_classifier_iris_branch(project):
    resp = project.post("/?op=iris", json={"input": IRIS_SAMPLE_JSON})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"label": "setosa"}


def test_resnet50_style_top5_of_a_flat_score_list(project):
    resp = project.post("/?op=top5", json={"fill": 2})
    assert resp.status_code == 200, resp.text
    # VISION_SCORE_ORDER ranks classes 7, 4, 1, 8, 5 highest.
    assert resp.json() == [7, 4, 1, 8, 5]


def test_yolov3_style_reshape_of_flat_grids(project):
    resp = project.post("/?op=grids", json={"fill": 2})
    assert resp.status_code == 200, resp.text
    # cell [1, 0, 5] = 1000 * row + 100 * column + channel + mean(image)
    assert resp.json() == {"conv_81": {"shape": [2, 2, 18], "cell": 1007.0},
                           "conv_93": {"shape": [4, 4, 18], "cell": 1007.0}}


@pytest.mark.parametrize("change, fragments", [
    ({"sepal_length": "5.2"}, ["input 'sepal_length' expects float64 of shape [None]"]),
    ({"sepal_length": [[5.2]]}, ["input 'sepal_length' expects shape [None], got [1, 1]"]),
    ({"sepal_length": None}, ["input 'sepal_length' expects float64"]),
], ids=["string", "rank-2", "null"])
def test_bad_input_is_400_naming_the_input_and_its_shape(project, change, fragments):
    resp = project.post("/?op=raw", json={**IRIS_SAMPLE_JSON, **change})
    assert resp.status_code == 400, resp.text
    for f in fragments:
        assert f in resp.json()["error"], resp.json()
