"""An MLServer 1.7 runtime that serves one ONNX generator with ONNX Runtime (bench/sampling.py).

MLServer has no ONNX runtime of its own; this is the smallest fair one: the same session options
as the sampling service's defaults, inputs decoded with MLServer's NumpyCodec, one session.run.
Copied into the model folder and named by model-settings.json ("implementation").

It keeps counters of its inferences (runs, rows, seconds inside session.run) in counters.json
beside the model, written at most every 0.2 s, so that the benchmark can tell how busy the
inference was under a load.
"""

import json
import os
import time

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
        self._counters_path = os.path.join(os.path.dirname(self.settings.parameters.uri), "counters.json")
        self._counters = {"runs": 0, "rows": 0, "run_seconds": 0.0}
        self._next_write = 0.0
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {request_input.name: NumpyCodec.decode_input(request_input) for request_input in payload.inputs}
        feeds["labels"] = feeds["labels"].astype(np.int64).reshape(-1)
        started = time.perf_counter()
        (samples,) = self._session.run(["samples"], feeds)
        done = time.perf_counter()
        c = self._counters
        c["runs"] += 1
        c["rows"] += int(samples.shape[0])
        c["run_seconds"] += done - started
        if done >= self._next_write:
            self._next_write = done + 0.2
            with open(self._counters_path + ".tmp", "w") as f:
                json.dump(c, f)
            os.replace(self._counters_path + ".tmp", self._counters_path)
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("samples", samples)])
