"""One ONNX Runtime session of a generator: provider choice, threads, signature check, warm-up.

``run`` is blocking (call it from a worker thread, never on the event loop); ONNX Runtime allows
concurrent ``run`` calls on one session.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from simulacra_services.core import errors
from simulacra_services.core.registry.records import GeneratorSignature

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
PROVIDER_NAMES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT}
"""Names a client may ask for (LoadGenerator options), ``""`` or ``"auto"`` choosing."""


@dataclass(frozen=True)
class SessionOptions:
    provider: str = "auto"
    """"auto" (CUDA when a GPU is present, else CPU), "cpu", "cuda" or "tensorrt"."""
    intra_op_threads: int = 0
    """Threads of one operator; 0 lets ONNX Runtime pick (one per core)."""
    inter_op_threads: int = 1
    warmup_batch_size: int = 1
    """Samples of the warm-up inference at load (0: none)."""
    spinning: bool = False
    """Let ONNX Runtime's idle operator threads spin. Off by default: in a serving process they
    share the cores with gRPC and Python, and spinning threads steal their cycles (on 2 busy
    cores, batch-64 throughput halves with spinning on)."""


def gpu_present() -> bool:
    """Whether an NVIDIA device is visible (onnxruntime-gpu lists CUDA even where there is none)."""
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


def choose_providers(wanted: str) -> list[str]:
    available = set(ort.get_available_providers())
    wanted = (wanted or "auto").lower()
    if wanted == "auto":
        return [CUDA, CPU] if CUDA in available and gpu_present() else [CPU]
    if wanted not in PROVIDER_NAMES:
        raise errors.InvalidArgument(
            "UNKNOWN_PROVIDER",
            f"provider {wanted!r} is not one of auto, {', '.join(PROVIDER_NAMES)}",
            {"provider": wanted[:40]},
        )
    name = PROVIDER_NAMES[wanted]
    if name != CPU and (name not in available or not gpu_present()):
        raise errors.FailedPrecondition(
            "PROVIDER_UNAVAILABLE",
            f"execution provider {name} is not available on this server (no GPU or no build for it)",
            {"provider": name},
        )
    return [TENSORRT, CUDA, CPU] if name == TENSORRT else ([CUDA, CPU] if name == CUDA else [CPU])


class GeneratorSession:
    """A generator's ONNX Runtime session, checked against its registry signature."""

    def __init__(self, onnx: bytes, signature: GeneratorSignature, options: SessionOptions) -> None:
        self.signature = signature
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = max(0, options.intra_op_threads)
        session_options.inter_op_num_threads = max(1, options.inter_op_threads)
        session_options.log_severity_level = 3
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spinning else "0")
        session_options.add_session_config_entry("session.inter_op.allow_spinning", "1" if options.spinning else "0")
        providers = choose_providers(options.provider)
        try:
            self._session = ort.InferenceSession(onnx, sess_options=session_options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types for a bad model
            raise errors.FailedPrecondition(
                "INVALID_ONNX_MODEL", f"ONNX Runtime cannot load the generator: {str(error)[:300]}", {}
            ) from None
        self.provider = self._session.get_providers()[0]
        self._has_attributes = bool(signature.attributes)
        self._check_signature()
        if options.warmup_batch_size > 0:
            n = options.warmup_batch_size
            attrs = np.zeros((n, len(signature.attributes)), np.int64) if self._has_attributes else None
            self.run(np.zeros((n, signature.latent_dim), np.float32), np.zeros(n, np.int64), attrs)

    def _check_signature(self) -> None:
        sig = self.signature
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name: o for o in self._session.get_outputs()}
        expected_inputs = {"z", "labels", "attributes"} if self._has_attributes else {"z", "labels"}
        problems = []
        if set(inputs) != expected_inputs:
            problems.append(f"inputs {sorted(inputs)} (expected {sorted(expected_inputs)})")
        if "samples" not in outputs:
            problems.append(f"outputs {sorted(outputs)} (expected 'samples')")
        if "z" in inputs and inputs["z"].type != "tensor(float)":
            problems.append(f"z is {inputs['z'].type}")
        if "z" in inputs and _static(inputs["z"].shape, 1) not in (None, sig.latent_dim):
            problems.append(f"z has width {inputs['z'].shape[1]}, the signature says {sig.latent_dim}")
        if "labels" in inputs and inputs["labels"].type != "tensor(int64)":
            problems.append(f"labels is {inputs['labels'].type}")
        if problems:
            raise errors.FailedPrecondition(
                "ONNX_SIGNATURE_MISMATCH",
                "the ONNX file does not match the generator signature: " + "; ".join(problems),
                {"problems": "; ".join(problems)[:500]},
            )

    def run(self, z: np.ndarray, labels: np.ndarray, attributes: np.ndarray | None = None) -> np.ndarray:
        """samples float32 [N, C, H, W] (a fresh array the caller owns)."""
        feeds = {"z": z, "labels": labels}
        if self._has_attributes:
            feeds["attributes"] = attributes if attributes is not None else np.zeros((len(z), len(self.signature.attributes)), np.int64)
        (samples,) = self._session.run(["samples"], feeds)
        return samples


def _static(shape: list, axis: int) -> int | None:
    value = shape[axis] if len(shape) > axis else None
    return value if isinstance(value, int) else None
