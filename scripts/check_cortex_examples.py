"""Run Cortex's own TensorFlow examples unchanged against a real replica, with stand-in models.

    git clone --branch v0.22.1 https://github.com/cortexlabs/cortex /tmp/cortex
    pip install -e '.[cortex-examples]'     # what the examples import beyond the replica (regex, opencv, scipy)
    python scripts/check_cortex_examples.py /tmp/cortex

Each example's spec, predictor and sample file are used as they are in the checkout. The stand-in models
(scripts/cortex_standins.py) are uploaded to a local S3 server (SeaweedFS, as the tests start it) under the
bucket and keys the specs name (`s3://cortex-examples/...`), and `replica serve` runs the spec from the
example's folder. Prints one line per example and exits 1 if any answer is wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from scripts.cortex_standins import write_gpt2, write_gpt2_encoder, write_iris, write_yolov3  # noqa: E402
from tests.replica_proc import ReplicaProcess  # noqa: E402
from tests.s3server import SeaweedS3, delete_bucket, upload_dir  # noqa: E402

# Where the specs and predictors look in Cortex's bucket. Exports are versioned folders (timestamp, 1).
UPLOADS = {
    "tensorflow/iris-classifier/nn/1560263597": write_iris,
    "tensorflow/text-generator/gpt-2/124M/1": write_gpt2,
    "tensorflow/text-generator/gpt-2": write_gpt2_encoder,  # encoder.json and vocab.bpe, read in __init__
    "tensorflow/license-plate-reader/yolov3_tf/1": write_yolov3,
}

# (example folder, spec file, --api, sample file, expected answer); a sample of None is a JPEG {"img": base64}
# (the example ships none), whose answer has no box with the stand-in model.
EXAMPLES = [
    ("examples/tensorflow/iris-classifier", "cortex.yaml", None, "sample.json", "setosa"),
    ("examples/traffic-splitter", "cortex.yaml", "iris-classifier-tf", "sample.json", "setosa"),
    # The stand-in GPT-2 echoes its context, so the generated text is the prompt.
    ("examples/tensorflow/text-generator", "cortex.yaml", None, "sample.json", "machine learning is"),
    ("examples/tensorflow/license-plate-reader", "cortex_full.yaml", "yolov3", None, '{"boxes": []}'),
]


def jpeg_payload() -> dict:
    import base64

    import cv2
    import numpy as np

    ok, jpeg = cv2.imencode(".jpg", np.full((120, 200, 3), 128, dtype=np.uint8))
    assert ok
    return {"img": base64.b64encode(jpeg.tobytes()).decode()}


def check(cortex: Path, work: Path, s3: SeaweedS3) -> list[tuple[str, bool, str]]:
    results = []
    for folder, spec, api, sample, expected in EXAMPLES:
        example = cortex / folder
        replica = ReplicaProcess(example / spec, work / f"state-{len(results)}", api=api, env=s3.env)
        try:
            replica.start().wait_ready(timeout=180)
            body = json.loads((example / sample).read_text()) if sample else jpeg_payload()
            resp = replica.post("/", json=body)
            answer = f"{resp.status_code} {resp.text.strip()}"
            results.append((f"{folder} ({api or spec})", resp.status_code == 200 and resp.text == expected, answer))
        except (RuntimeError, TimeoutError) as e:
            results.append((f"{folder} ({api or spec})", False, str(e).splitlines()[0]))
        finally:
            replica.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cortex", type=Path, help="a checkout of cortexlabs/cortex at tag v0.22.1")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cortex-examples-") as tmp:
        work = Path(tmp)
        s3 = SeaweedS3(work / "s3")
        s3.start()
        try:
            s3.wait_ready(timeout=60)
            client = s3.client()
            client.create_bucket(Bucket="cortex-examples")
            for i, (prefix, write) in enumerate(UPLOADS.items()):
                upload_dir(client, "cortex-examples", write(work / "models" / str(i)), prefix)
            results = check(args.cortex.resolve(), work, s3)
            delete_bucket(client, "cortex-examples")
        finally:
            s3.stop()
    for name, ok, answer in results:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {answer}")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
