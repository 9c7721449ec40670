"""An MLServer 1.7 runtime that serves one ONNX generator with ONNX Runtime (bench/sampling.py).

MLServer has no ONNX runtime of its own; this is the smallest fair one: the same session options
as the sampling service's defaults, inputs decoded with MLServer's NumpyCodec, one session.run.
Copied into the model folder and named by model-settings.json ("implementation").
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxGenerator(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(self.settings.parameters.uri, sess_options=options, providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {request_input.name: NumpyCodec.decode_input(request_input) for request_input in payload.inputs}
        feeds["labels"] = feeds["labels"].astype(np.int64).reshape(-1)
        (samples,) = self._session.run(["samples"], feeds)
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("samples", samples)])
