"""ONNX export: the fixed signature, dynamic N, onnx checker, parity with torch."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from simulacra_services.training.export.onnx_export import PARITY_TOLERANCE, export_generator
from tests.training.tiny import tiny_config, tiny_run


@pytest.mark.parametrize(
    ("kind", "attribute_sizes"), [("vae", ()), ("gan", (2, 3)), ("enhanced_gan", ())]
)
def test_trained_generator_exports_with_the_fixed_signature_and_parity(kind, attribute_sizes):
    run = tiny_run(kind, attribute_sizes=attribute_sizes)
    run.run()
    result = export_generator(
        run.trainer.sampler(), latent_dim=8, num_classes=3, attribute_sizes=attribute_sizes
    )
    assert result.parity_max_abs_diff < PARITY_TOLERANCE and result.parity_samples == 64
    model = onnx.load_from_string(result.onnx_bytes)
    assert model.opset_import[0].version == 17
    inputs = {i.name: i for i in model.graph.input}
    expected = ["z", "labels", "attributes"] if attribute_sizes else ["z", "labels"]
    assert list(inputs) == expected
    assert inputs["z"].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert inputs["labels"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [o.name for o in model.graph.output] == ["samples"]

    session = onnxruntime.InferenceSession(result.onnx_bytes, providers=["CPUExecutionProvider"])
    for n in (1, 5):  # N is dynamic
        feed = {"z": np.random.default_rng(n).standard_normal((n, 8)).astype(np.float32),
                "labels": np.arange(n, dtype=np.int64) % 3}
        if attribute_sizes:
            feed["attributes"] = np.zeros((n, len(attribute_sizes)), dtype=np.int64)
        (samples,) = session.run(["samples"], feed)
        assert samples.shape == (n, 1, 28, 28) and samples.dtype == np.float32
        assert samples.min() >= -1 and samples.max() <= 1


def test_unconditional_rgb_generator_keeps_the_labels_input():
    from simulacra_services.training.models import ConditionalGenerator

    generator = ConditionalGenerator(tiny_config(num_classes=0, channels=3, size=32)).eval()
    result = export_generator(generator, latent_dim=8, num_classes=0)
    session = onnxruntime.InferenceSession(result.onnx_bytes, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["z", "labels"]
    z = np.ones((2, 8), dtype=np.float32)
    a = session.run(None, {"z": z, "labels": np.zeros(2, dtype=np.int64)})[0]
    b = session.run(None, {"z": z, "labels": np.array([5, 9], dtype=np.int64)})[0]
    assert a.shape == (2, 3, 32, 32) and np.array_equal(a, b)  # labels ignored


def test_parity_failure_is_reported():
    from simulacra_services.training.export.onnx_export import ParityError
    from simulacra_services.training.export import onnx_export

    class Drifting(torch.nn.Module):
        """Differs between the traced graph and later eager calls."""

        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, z, labels, attributes=None):
            self.calls += 1
            return torch.tanh(z[:, :4].reshape(-1, 1, 2, 2) + self.calls + labels.view(-1, 1, 1, 1))

    with pytest.raises(ParityError, match="differs from torch"):
        onnx_export.export_generator(Drifting(), latent_dim=8, num_classes=0)

    class IgnoresLabels(torch.nn.Module):
        def forward(self, z, labels, attributes=None):
            return torch.tanh(z[:, :4].reshape(-1, 1, 2, 2))

    with pytest.raises(ParityError, match="fixed signature"):
        onnx_export.export_generator(IgnoresLabels(), latent_dim=8, num_classes=0)
