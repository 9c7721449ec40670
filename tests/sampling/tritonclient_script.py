"""Run by tests/sampling/test_inference.py with the python of a separate virtual environment that
holds a stock tritonclient[grpc] (it needs protobuf < 7; the suite uses 7). Not a test module.

argv: server address, a work directory holding z.npy and labels.npy; writes results.json and
*.npy there. Every call is tritonclient's own, unchanged.
"""

import json
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

address, work = sys.argv[1], Path(sys.argv[2])
client = tg.InferenceServerClient(url=address)
out = {}
out["live"] = client.is_server_live()
out["ready"] = client.is_server_ready()
out["server"] = client.get_server_metadata(as_json=True)
out["ready_before_load"] = client.is_model_ready("digits")
client.load_model("digits")
out["ready_after_load"] = client.is_model_ready("digits")
out["metadata"] = client.get_model_metadata("digits", as_json=True)
out["config"] = client.get_model_config("digits", as_json=True)
out["index"] = client.get_model_repository_index(as_json=True)

z, labels = np.load(work / "z.npy"), np.load(work / "labels.npy")
inputs = [tg.InferInput("z", list(z.shape), "FP32"), tg.InferInput("labels", list(labels.shape), "INT64")]
inputs[0].set_data_from_numpy(z)
inputs[1].set_data_from_numpy(labels)
raw = client.infer("digits", inputs, model_version="1", outputs=[tg.InferRequestedOutput("samples")])
np.save(work / "raw.npy", raw.as_numpy("samples"))
out["raw_version"] = raw.get_response(as_json=True)["model_version"]

seeded = client.infer("digits", [], parameters={"seed": 11, "start_index": 100, "count": 6, "format": "uint8"})
np.save(work / "seeded_samples.npy", seeded.as_numpy("samples"))
np.save(work / "seeded_labels.npy", seeded.as_numpy("labels"))
np.save(work / "seeded_indices.npy", seeded.as_numpy("indices"))
pngs = client.infer("digits", [], parameters={"seed": 11, "start_index": 100, "count": 2, "format": "png"})
for i, image in enumerate(pngs.as_numpy("images")):
    (work / f"image{i}.png").write_bytes(bytes(image))

results = []
client.start_stream(callback=lambda result, error: results.append((result, error)))
for i in range(8):
    client.async_stream_infer("digits", [], parameters={"seed": 11, "start_index": 100 + i, "count": 1, "format": "uint8"}, request_id=str(i))
client.stop_stream()
streamed = {}
for result, error in results:
    assert error is None, error
    streamed[int(result.get_response().id)] = result.as_numpy("samples")[0]
np.save(work / "streamed.npy", np.stack([streamed[i] for i in range(8)]))

out["statistics"] = client.get_inference_statistics("digits", as_json=True)
try:
    client.infer("no-such-model", inputs)
except InferenceServerException as error:
    out["unknown_model"] = [error.status(), error.message()]
bad = [tg.InferInput("z", [2, 3], "FP32"), tg.InferInput("labels", [2], "INT64")]
bad[0].set_data_from_numpy(np.zeros((2, 3), np.float32))
bad[1].set_data_from_numpy(np.zeros(2, np.int64))
try:
    client.infer("digits", bad)
except InferenceServerException as error:
    out["bad_shape"] = [error.status(), error.message()]
client.unload_model("digits")
out["ready_after_unload"] = client.is_model_ready("digits")
(work / "results.json").write_text(json.dumps(out, default=str))
