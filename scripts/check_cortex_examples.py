"""Run every Cortex v0.22.1 example that needs no internet access unchanged against a real replica.

    git clone --branch v0.22.1 https://github.com/cortexlabs/cortex /tmp/cortex
    pip install -e '.[tensorflow,examples,frameworks,cortex-examples]'   # what the examples import
    python scripts/check_cortex_examples.py /tmp/cortex [--only NAME ...]

Each example's spec, predictor and sample file are used as they are in the checkout. The stand-in models
(scripts/cortex_standins.py) are uploaded to a local S3 server (SeaweedFS, as the tests start it) under the
bucket and keys the specs and predictors name (`s3://cortex-examples/...`; predictors that call boto3
themselves reach it through `AWS_ENDPOINT_URL`), and `replica serve` runs the spec from the example's folder.
Prints one line per example of the checkout's `examples/`: `ok`, `not runnable offline: why`, `not applicable:
why`, or `FAILED: why`; exits 1 if any runnable one failed. `--only` keeps the examples whose name contains
one of the given strings.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from scripts.cortex_standins import (  # noqa: E402
    MPG_VERSIONS,
    MPG_WEIGHTS,
    mpg_bias,
    write_gpt2,
    write_gpt2_encoder,
    write_iris,
    write_mpg,
    write_onnx_iris,
    write_pytorch_iris,
    write_sklearn_iris,
    write_yolov3,
)
from scripts.framework_models import linear_scores  # noqa: E402
from scripts.model_factory import IRIS_BIAS, IRIS_LABELS, IRIS_WEIGHTS  # noqa: E402
from tests.replica_proc import ReplicaProcess  # noqa: E402
from tests.s3server import SeaweedS3, delete_bucket, upload_dir  # noqa: E402

# Where the specs and predictors look in Cortex's bucket. TensorFlow exports are versioned folders.
UPLOADS = {
    "tensorflow/iris-classifier/nn/1560263597": write_iris,
    "tensorflow/text-generator/gpt-2/124M/1": write_gpt2,
    "tensorflow/text-generator/gpt-2": write_gpt2_encoder,  # encoder.json and vocab.bpe, read in __init__
    "tensorflow/license-plate-reader/yolov3_tf/1": write_yolov3,
    "onnx/iris-classifier": write_onnx_iris,
    "sklearn/iris-classifier": write_sklearn_iris,
    "pytorch/iris-classifier": write_pytorch_iris,
    "sklearn/mpg-estimator/linreg": write_mpg,
}


def iris_answer(sample: str) -> str:
    """The species the stand-in iris classifiers give for an example's sample file."""
    row = [json.loads(sample)[k] for k in ("sepal_length", "sepal_width", "petal_length", "petal_width")]
    return IRIS_LABELS[int(linear_scores([row], IRIS_WEIGHTS, IRIS_BIAS)[0].argmax())]


def mpg_answer(sample: str, version: int) -> float:
    """What the stand-in mpg estimator's `version` answers for an example's sample file."""
    row = [json.loads(sample)[k] for k in ("cylinders", "displacement", "horsepower", "weight", "acceleration")]
    return float(linear_scores([row], MPG_WEIGHTS, mpg_bias(version))[0][0])


@dataclass(frozen=True)
class Example:
    """One API of an example, the requests made with its sample file, and the answers the stand-ins give."""

    folder: str  # under the checkout
    models: tuple[str, ...]  # the UPLOADS it reads
    expected: Callable[[str | None, str], Any]  # (the sample's text, the query) -> the expected answer
    spec: str = "cortex.yaml"
    api: str | None = None  # --api, where the spec has several
    sample: str | None = "sample.json"  # None: a JPEG {"img": base64} (the example ships none)
    queries: tuple[str, ...] = ("",)  # one request each, to the same replica
    # (text in the error, why): a failure from the example's own code on today's libraries, not the replica's
    outdated: tuple[str, str] | None = None

    @property
    def name(self) -> str:
        return f"{self.folder} ({self.api or self.spec})"


def mpg_reply(sample: str, query: str) -> dict:
    params = dict(p.split("=") for p in query.split("&") if p)
    model = {"name": params["model"]} if "model" in params else {}
    # No version asked: the highest, as Cortex chose.
    served = int(params.get("version") or max(MPG_VERSIONS))
    return {"prediction": mpg_answer(sample, served), "model": {**model, "version": params.get("version")}}


IRIS_TF, MPG = "tensorflow/iris-classifier/nn/1560263597", "sklearn/mpg-estimator/linreg"

RUNNABLE = [
    Example("examples/tensorflow/iris-classifier", (IRIS_TF,), lambda s, q: iris_answer(s)),
    Example("examples/traffic-splitter", (IRIS_TF,), lambda s, q: iris_answer(s), api="iris-classifier-tf"),
    Example("examples/traffic-splitter", ("onnx/iris-classifier",), lambda s, q: iris_answer(s),
            api="iris-classifier-onnx"),
    # The stand-in GPT-2 echoes its context, so the generated text is the prompt.
    Example("examples/tensorflow/text-generator",
            ("tensorflow/text-generator/gpt-2/124M/1", "tensorflow/text-generator/gpt-2"),
            lambda s, q: json.loads(s)["text"]),
    # No box reaches the objectness threshold with the all-zero stand-in.
    Example("examples/tensorflow/license-plate-reader", ("tensorflow/license-plate-reader/yolov3_tf/1",),
            lambda s, q: {"boxes": []}, spec="cortex_full.yaml", api="yolov3", sample=None),
    Example("examples/onnx/iris-classifier", ("onnx/iris-classifier",), lambda s, q: iris_answer(s)),
    Example("examples/sklearn/iris-classifier", ("sklearn/iris-classifier",), lambda s, q: iris_answer(s)),
    # Its __init__ downloads every file under the prefix into one folder: the last listed version's files win.
    Example("examples/sklearn/mpg-estimator", (MPG,), lambda s, q: mpg_answer(s, max(MPG_VERSIONS)),
            outdated=("has no attribute 'asscalar'", "its `predict` calls `np.asscalar`, removed in NumPy 1.23 "
                      "(the example pins scikit-learn 0.21.3, which has no build for today's Python)")),
    Example("examples/pytorch/iris-classifier", ("pytorch/iris-classifier",), lambda s, q: iris_answer(s)),
    Example("examples/live-reloading/python/mpg-estimator", (MPG,), mpg_reply, queries=("", "version=2")),
    # cache_size 1, disk_cache_size 2: each request evicts the version before it, as the example's README walks.
    Example("examples/model-caching/python/mpg-estimator", (MPG,), mpg_reply,
            queries=tuple(f"model=mpg-estimator&version={v}" for v in ("1", "2", "3", "1"))),
]

_URL_IMAGE = "`predict` downloads the image at the sample's URL"
_IMAGENET = "`__init__` downloads the ImageNet class list from a URL, and " + _URL_IMAGE
_HF_HUB = "`__init__` downloads pretrained weights from the Hugging Face hub"
_BATCH = ("not applicable: `kind: BatchAPI` is a cluster job kind (jobs submitted to an operator, split into "
          "batches on a queue, results written to S3); the replica serves RealtimeAPI only")

# Example folder (or folder and spec/API) -> why it is not run here. "not applicable" where no RealtimeAPI
# is there to run; every other reason is an internet access the example makes.
NOT_RUN = {
    "examples/batch/image-classifier": _BATCH,
    "examples/batch/onnx": _BATCH,
    "examples/batch/tensorflow": _BATCH,
    "examples/keras/document-denoiser": _URL_IMAGE,
    "examples/live-reloading/onnx": "not applicable: a README only (every ONNX API live-reloads; run above)",
    "examples/live-reloading/tensorflow": "not applicable: a README only (every TensorFlow API live-reloads)",
    "examples/model-caching/onnx/multi-model-classifier": _IMAGENET,
    "examples/model-caching/tensorflow/multi-model-classifier": _IMAGENET,
    "examples/onnx/multi-model-classifier": _IMAGENET,
    "examples/onnx/yolov5-youtube": "`predict` downloads a YouTube video (the sample's URL)",
    "examples/pytorch/answer-generator": "`__init__` downloads DialoGPT weights from a URL and GPT-2's tokenizer "
                                         "from the Hugging Face hub",
    "examples/pytorch/image-classifier-alexnet": "`__init__` downloads torchvision's pretrained AlexNet and the "
                                                 "ImageNet labels from URLs; " + _URL_IMAGE,
    "examples/pytorch/image-classifier-resnet50": _IMAGENET,
    "examples/pytorch/language-identifier": "`__init__` downloads the fastText model from a URL",
    "examples/pytorch/multi-model-text-analyzer": _HF_HUB,
    "examples/pytorch/object-detector": "`__init__` downloads torchvision's pretrained Faster R-CNN; "
                                        + _URL_IMAGE,
    "examples/pytorch/question-generator": "`__init__` runs `spacy download` and " + _HF_HUB[11:],
    "examples/pytorch/reading-comprehender": "`__init__` downloads the AllenNLP BiDAF model from a URL",
    "examples/pytorch/search-completer": "`__init__` downloads RoBERTa through `torch.hub`",
    "examples/pytorch/sentiment-analyzer": _HF_HUB,
    "examples/pytorch/text-generator": _HF_HUB,
    "examples/pytorch/text-summarizer": _HF_HUB,
    "examples/spacy/entity-recognizer": "`__init__` runs `python -m spacy download en_core_web_md`",
    "examples/tensorflow/image-classifier-inception": _IMAGENET.replace("class list", "labels"),
    "examples/tensorflow/image-classifier-resnet50": _IMAGENET,
    "examples/tensorflow/license-plate-reader (crnn)": "`__init__` downloads keras-ocr's pretrained weights",
    "examples/tensorflow/license-plate-reader (cortex_lite.yaml)": "`__init__` downloads keras-ocr's "
                                                                   "pretrained weights",
    "examples/tensorflow/multi-model-classifier": _IMAGENET,
    "examples/tensorflow/sentiment-analyzer": "`__init__` downloads BERT from TF Hub",
    "examples/traffic-splitter (iris-classifier)": "not applicable: `kind: TrafficSplitter` is a cluster object "
                                                   "(a weighted route between APIs, each run above)",
    "examples/utils": "not applicable: a load-test client (`throughput_test.py`), no API",
}


def jpeg_payload() -> dict:
    import base64

    import cv2
    import numpy as np

    ok, jpeg = cv2.imencode(".jpg", np.full((120, 200, 3), 128, dtype=np.uint8))
    assert ok
    return {"img": base64.b64encode(jpeg.tobytes()).decode()}


def same(actual: Any, expected: Any) -> bool:
    """Equal JSON values, floats to within rounding (the stand-ins compute in float32 or float64)."""
    if isinstance(expected, float):
        return isinstance(actual, (int, float)) and math.isclose(actual, expected, rel_tol=1e-5)
    if isinstance(expected, dict):
        return isinstance(actual, dict) and actual.keys() == expected.keys() and all(
            same(actual[k], v) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(actual) == len(expected) and all(map(same, actual, expected))
    return actual == expected


def run_one(example: Example, cortex: Path, state: Path, s3: SeaweedS3) -> tuple[str, str]:
    """("ok" | "FAILED" | "outdated", what happened) for one example."""
    folder = cortex / example.folder
    sample = (folder / example.sample).read_text() if example.sample else None
    replica = ReplicaProcess(folder / example.spec, state, api=example.api, env=s3.env)
    answers = []
    try:
        replica.start().wait_ready(timeout=180)
        body = json.loads(sample) if sample else jpeg_payload()
        for query in example.queries:
            resp = replica.post("/" + (f"?{query}" if query else ""), json=body)
            try:
                answer = resp.json()
            except ValueError:
                answer = resp.text
            expected = example.expected(sample, query)
            said = f"{'?' + query + ' ' if query else ''}{resp.status_code} {resp.text.strip()[:200]}"
            if resp.status_code != 200 or not same(answer, expected):
                if example.outdated and example.outdated[0] in resp.text:
                    return "outdated", f"{example.outdated[1]}: {said}"
                return "FAILED", f"{said} (expected {expected!r})"
            answers.append(said)
        return "ok", "; ".join(answers)
    except (RuntimeError, TimeoutError) as e:
        return "FAILED", str(e).splitlines()[0]
    finally:
        replica.stop()


def not_run(cortex: Path) -> dict[str, str]:
    """NOT_RUN, and any example folder of the checkout that this script does not know (reported as FAILED)."""
    covered = {e.folder for e in RUNNABLE} | {k.split(" (")[0] for k in NOT_RUN}
    result = dict(NOT_RUN)
    for spec in sorted((cortex / "examples").rglob("*.yaml")) + sorted((cortex / "examples").rglob("README.md")):
        folder = spec.parent.relative_to(cortex).as_posix()
        if folder != "examples" and not any(folder == c or folder.startswith(c + "/") for c in covered):
            result.setdefault(folder, "FAILED: unknown to this script")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cortex", type=Path, help="a checkout of cortexlabs/cortex at tag v0.22.1")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only the examples whose name contains NAME")
    args = parser.parse_args()
    cortex = args.cortex.resolve()

    def wanted(name: str) -> bool:
        return not args.only or any(n in name for n in args.only)

    runnable = [e for e in RUNNABLE if wanted(e.name)]
    uploads = {m for e in runnable for m in e.models}
    lines: list[str] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="cortex-examples-") as tmp:
        work = Path(tmp)
        if runnable:
            s3 = SeaweedS3(work / "s3")
            s3.start()
            try:
                s3.wait_ready(timeout=60)
                client = s3.client()
                client.create_bucket(Bucket="cortex-examples")
                for i, (prefix, write) in enumerate(UPLOADS.items()):
                    if prefix in uploads:
                        upload_dir(client, "cortex-examples", write(work / "models" / str(i)), prefix)
                for i, example in enumerate(runnable):
                    result, answer = run_one(example, cortex, work / f"state-{i}", s3)
                    failed |= result == "FAILED"
                    result = "not runnable with today's libraries" if result == "outdated" else result
                    print(f"{example.name}: {result}: {answer}", flush=True)
                delete_bucket(client, "cortex-examples")
            finally:
                s3.stop()
    for name, why in sorted(not_run(cortex).items()):
        if wanted(name):
            failed |= why.startswith("FAILED")
            lines.append(f"{name}: {why if why.startswith(('not applicable', 'FAILED')) else 'not runnable offline: ' + why}")
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
