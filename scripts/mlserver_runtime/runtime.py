"""A small MLServer custom runtime for the hot-path benchmark: the same ONNX model, called the same way.

MLServer loads it as `runtime.ONNXIrisRuntime` from the model folder `scripts/bench.py` writes (this file is
copied next to model-settings.json). It decodes the V2 inference request's FP32 [1, 4] input, runs the
onnxruntime session and answers the label as a BYTES output: the work the replica's ONNX example does.
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
