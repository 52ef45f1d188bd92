"""Small MLServer custom runtimes for the benchmarks and the V2 differential test: the same ONNX models as the
replica, called the same way.

MLServer loads them (`runtime.ONNXIrisRuntime`, `runtime.ONNXTensorRuntime`) from the model folder a benchmark
or a test writes (this file is copied next to model-settings.json). The iris runtime decodes the V2 inference
request's FP32 [1, 4] input, runs the onnxruntime session and answers the label as a BYTES output: the work the
replica's ONNX example does. The tensor runtime is what the replica's own V2 infer route does for an ONNX model.
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse, RequestInput, ResponseOutput
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
    """Any ONNX model: every input of the V2 request by name, decoded with its own datatype (NumpyCodec; BYTES
    through StringCodec, as the strings onnxruntime takes), one `session.run`, and the request's `outputs` (every
    output of the model when it names none) encoded back with the datatype onnxruntime gave them. Rows map to
    rows, so MLServer's adaptive batching (max_batch_size, max_batch_time in model-settings.json) can stack
    requests along the first axis and split the outputs back."""

    async def load(self) -> bool:
        uri = await get_model_uri(self._settings)
        self._session = ort.InferenceSession(uri, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: _decode(i) for i in payload.inputs}
        names = [o.name for o in payload.outputs] if payload.outputs else self._outputs
        unknown = sorted(set(names) - set(self._outputs))
        if unknown:
            raise InferenceError(f"unknown outputs {unknown}; the model has {self._outputs}")
        values = self._session.run(names, feeds)
        return InferenceResponse(model_name=self.name, outputs=[_encode(n, v) for n, v in zip(names, values)])


def _decode(tensor: RequestInput) -> np.ndarray:
    if tensor.datatype == "BYTES":
        return np.array(StringCodec.decode_input(tensor), dtype=object).reshape(tensor.shape)
    return NumpyCodec.decode_input(tensor)


def _encode(name: str, value: np.ndarray) -> ResponseOutput:
    """NumpyCodec's encoding with the tensor's own shape: the codec reports a 1-D tensor [N] as [N, 1]
    (its batch-dimension convention), which is not the shape the model gave and not what V2 clients read."""
    out = NumpyCodec.encode_output(name, value)
    out.shape = list(value.shape)
    return out
