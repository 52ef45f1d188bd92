"""Small MLServer custom runtimes for the benchmarks: the same ONNX models as the replica, called the same way.

MLServer loads them (`runtime.ONNXIrisRuntime`, `runtime.ONNXTensorRuntime`) from the model folder a benchmark
writes (this file is copied next to model-settings.json). The iris runtime decodes the V2 inference request's
FP32 [1, 4] input, runs the onnxruntime session and answers the label as a BYTES output: the work the replica's
ONNX example does.
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

LABELS = ("setosa", "versicolor", "virginica")


class ONNXIrisRuntime(MLModel):
    async def load(self) -> bool:
        uri = await get_model_uri(self._settings)
        self._session = ort.InferenceSession(uri, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        row = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        _scores, label = self._session.run(None, {self._input: row})
        return InferenceResponse(model_name=self.name,
                                 outputs=[StringCodec.encode_output("label", [LABELS[int(label[0])]])])


class ONNXTensorRuntime(MLModel):
    """Any single-input ONNX model: the V2 request's tensor in, every output back as a tensor. Rows map to rows,
    so MLServer's adaptive batching (max_batch_size, max_batch_time in model-settings.json) can stack requests
    along the first axis and split the outputs back."""

    async def load(self) -> bool:
        uri = await get_model_uri(self._settings)
        self._session = ort.InferenceSession(uri, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        values = self._session.run(None, {self._input: x})
        return InferenceResponse(model_name=self.name,
                                 outputs=[NumpyCodec.encode_output(n, v) for n, v in zip(self._outputs, values)])
