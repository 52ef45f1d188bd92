"""The iris model behind Triton Inference Server through PyTriton (the tritonserver binary its wheel ships):

    python triton_app.py HTTP_PORT GRPC_PORT METRICS_PORT WORKSPACE [label|tensors]

Clients speak Triton's own REST API (KServe v2: POST /v2/models/iris/infer with an FP32 [1, 4] input named
"input", as JSON or with the binary tensor extension); Triton's C++ HTTP front decodes the request and encodes
the answer. What it answers: `label` (the default, the hot path's) a BYTES [1] output "label", the work every
limit stack does; `tensors` the session's own outputs, "scores" (FP32 [1, 3]) and "label" (INT64 [1]), what a
V2 server that runs the ONNX model itself answers (the V2 figure's).
Two model instances (`infer_func` a list of two callables, each with its own session): Triton runs a Python
backend stub process per instance, and PyTriton calls each instance's function in a thread of this process.
No dynamic batching, as in every other target: one request, one `session.run`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

import iris

INSTANCES = 2
OUTPUTS = {"label": [Tensor(name="label", dtype=bytes, shape=(1,))],
           "tensors": [Tensor(name="scores", dtype=np.float32, shape=(1, 3)),
                       Tensor(name="label", dtype=np.int64, shape=(1,))]}


def instance(answer: str) -> Callable[[list], list[dict]]:
    """One model instance: its own InferenceSession, one `session.run` per request."""
    session = ort.InferenceSession(os.environ["BENCH_ONNX_MODEL"], providers=["CPUExecutionProvider"])

    def infer(requests: list) -> list[dict]:
        out = []
        for request in requests:
            row = np.asarray(request["input"], dtype=np.float32).reshape(1, 4)
            scores, label = session.run(None, {"input": row})
            if answer == "tensors":
                out.append({"scores": scores, "label": label})
            else:
                out.append({"label": np.array([iris.LABELS[int(label[0])].encode()], dtype=np.object_)})
        return out

    return infer


def main(http_port: int, grpc_port: int, metrics_port: int, workspace: str, answer: str = "label") -> None:
    config = TritonConfig(http_address="127.0.0.1", http_port=http_port, grpc_address="127.0.0.1",
                          grpc_port=grpc_port, metrics_port=metrics_port, metrics_address="127.0.0.1",
                          allow_gpu_metrics=False, log_verbose=0, exit_timeout_secs=5)
    with Triton(config=config, workspace=workspace) as triton:
        triton.bind(model_name="iris", infer_func=[instance(answer) for _ in range(INSTANCES)],
                    inputs=[Tensor(name="input", dtype=np.float32, shape=(1, 4))],
                    outputs=OUTPUTS[answer], config=ModelConfig(batching=False), strict=False)
        triton.serve()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]), *sys.argv[4:6])
