"""Reads the signature of an ONNX generator trained elsewhere, and proves it runs (import).

``python -m simulacra_services.training.export.inspect NUM_CLASSES`` reads the file on stdin and
prints one JSON line, ``{"signature": {...}}`` or ``{"mismatch": "why"}``: the server runs it so
(``isolated.inspect_isolated``) and never imports onnx itself.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import onnx
import onnxruntime

from simulacra_services.training.export.isolated import MAX_ONNX_BYTES, FoundSignature, SignatureMismatch


def _dims(value_info) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim]


def inspect_generator(data: bytes, num_classes: int) -> FoundSignature:
    if len(data) > MAX_ONNX_BYTES:
        raise SignatureMismatch(f"the file has {len(data)} bytes, at most {MAX_ONNX_BYTES}")
    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
    except Exception as error:  # onnx raises several unrelated types for a bad file
        raise SignatureMismatch(f"not a valid ONNX model: {str(error)[:200]}") from None
    inputs = {i.name: i for i in model.graph.input}
    initializers = {i.name for i in model.graph.initializer}
    names = [n for n in inputs if n not in initializers]
    if names not in (["z", "labels"], ["z", "labels", "attributes"]):
        raise SignatureMismatch(f"inputs are {names}; expected z, labels and optionally attributes")
    outputs = [o.name for o in model.graph.output]
    if outputs != ["samples"]:
        raise SignatureMismatch(f"outputs are {outputs}; expected samples")
    types = {name: inputs[name].type.tensor_type.elem_type for name in names}
    expected = {"z": onnx.TensorProto.FLOAT, "labels": onnx.TensorProto.INT64, "attributes": onnx.TensorProto.INT64}
    for name in names:
        if types[name] != expected[name]:
            raise SignatureMismatch(f"input {name} has element type {onnx.TensorProto.DataType.Name(types[name])}")
    z = _dims(inputs["z"])
    if len(z) != 2 or not isinstance(z[1], int) or z[1] < 1:
        raise SignatureMismatch(f"z has shape {z}; expected [N, latent_dim]")
    attribute_count = 0
    if "attributes" in names:
        shape = _dims(inputs["attributes"])
        if len(shape) != 2 or not isinstance(shape[1], int):
            raise SignatureMismatch(f"attributes has shape {shape}; expected [N, A]")
        attribute_count = shape[1]
    try:
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        feed = {"z": np.zeros((2, z[1]), np.float32), "labels": np.array([0, max(num_classes - 1, 0)], np.int64)}
        if attribute_count:
            feed["attributes"] = np.zeros((2, attribute_count), np.int64)
        (samples,) = session.run(["samples"], feed)
    except Exception as error:
        raise SignatureMismatch(f"the model does not run on a batch of 2: {str(error)[:200]}") from None
    if samples.ndim != 4 or samples.shape[0] != 2 or samples.dtype != np.float32 or samples.shape[1] not in (1, 3, 4):
        raise SignatureMismatch(f"samples of a batch of 2 have shape {list(samples.shape)} {samples.dtype}; expected float32 [2, C, H, W]")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return FoundSignature(z[1], int(samples.shape[1]), int(samples.shape[2]), int(samples.shape[3]), attribute_count, opset)


def main(argv: list[str]) -> int:
    data = sys.stdin.buffer.read()
    try:
        answer = {"signature": dataclasses.asdict(inspect_generator(data, int(argv[0])))}
    except SignatureMismatch as error:
        answer = {"mismatch": str(error)}
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
