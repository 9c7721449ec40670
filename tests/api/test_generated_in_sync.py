"""The generated code checked in under simulacra_client.api is what protos/ produces.

Regenerating into a temporary directory and comparing byte for byte catches a
.proto edited without running `python protos/generate.py`, a hand-edited
generated file, and a change of the pinned grpcio-tools / mypy-protobuf.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "clients" / "python" / "simulacra_client" / "api"


def _files(tree: Path) -> dict[str, bytes]:
    return {
        p.relative_to(tree).as_posix(): p.read_bytes()
        for p in sorted(tree.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_checked_in_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    fresh_dir = tmp_path / "api"
    result = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(fresh_dir)],
        capture_output=True,
        text=True,
        check=False,
        # protoc finds the mypy-protobuf plugins (protoc-gen-mypy) on PATH: use this interpreter's.
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    assert result.returncode == 0, f"protos/generate.py failed:\n{result.stdout}\n{result.stderr}"
    fresh, checked_in = _files(fresh_dir), _files(CHECKED_IN)
    missing = sorted(set(fresh) - set(checked_in))
    stale = sorted(set(checked_in) - set(fresh))
    differing = sorted(name for name in set(fresh) & set(checked_in) if fresh[name] != checked_in[name])
    problems = [f"missing: {n}" for n in missing] + [f"not generated: {n}" for n in stale]
    problems += [f"differs: {n}" for n in differing]
    assert not problems, (
        "clients/python/simulacra_client/api is out of date; run `python protos/generate.py`:\n" + "\n".join(problems)
    )


def _generated_modules() -> list[str]:
    return sorted(
        "simulacra_client.api." + ".".join(p.relative_to(CHECKED_IN).with_suffix("").parts)
        for p in CHECKED_IN.rglob("*_pb2*.py")
    )


def test_every_generated_module_imports() -> None:
    modules = _generated_modules()
    assert len(modules) >= 2 * 12, modules  # a _pb2 and a _pb2_grpc per contract file
    for name in modules:
        importlib.import_module(name)


def test_service_stubs_and_servicers_are_generated() -> None:
    expected = {
        "annotation.v1.annotation_service_pb2_grpc": "AnnotationService",
        "augmentation.v1.augmentation_service_pb2_grpc": "AugmentationService",
        "training.v1.training_service_pb2_grpc": "TrainingService",
        "training.v1.model_registry_service_pb2_grpc": "ModelRegistryService",
        "sampling.v1.sampling_service_pb2_grpc": "SamplingService",
    }
    for module_name, service in expected.items():
        module = importlib.import_module(f"simulacra_client.api.{module_name}")
        for attribute in (f"{service}Stub", f"{service}Servicer", f"add_{service}Servicer_to_server"):
            assert hasattr(module, attribute), f"{module_name} lacks {attribute}"


def test_a_sample_batch_round_trips_with_its_tensor_bytes() -> None:
    from simulacra_client.api.common.v1 import common_pb2
    from simulacra_client.api.sampling.v1 import generator_pb2, sampling_service_pb2

    samples = np.linspace(-1.0, 1.0, num=2 * 1 * 4 * 4, dtype="<f4").reshape(2, 1, 4, 4)
    sent = sampling_service_pb2.StreamSamplesResponse(
        samples=common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_FLOAT32, shape=samples.shape, data=samples.tobytes()),
        labels=[3, 7],
        start_index=41,
        generator="models/digits/versions/2",
    )
    received = sampling_service_pb2.StreamSamplesResponse.FromString(sent.SerializeToString())

    assert received == sent
    decoded = np.frombuffer(received.samples.data, dtype="<f4").reshape(tuple(received.samples.shape))
    np.testing.assert_array_equal(decoded, samples)
    assert list(received.labels) == [3, 7]
    assert received.start_index + len(received.labels) == 43  # the next call resumes here
    request = sampling_service_pb2.SampleRequest(
        format=generator_pb2.SAMPLE_FORMAT_UINT8, truncation=0.7, class_mix=generator_pb2.ClassMix(weights={0: 1.0, 2: 3.0})
    )
    again = sampling_service_pb2.SampleRequest.FromString(request.SerializeToString())
    assert again.HasField("truncation") and again.truncation == np.float32(0.7)
    assert dict(again.class_mix.weights) == {0: 1.0, 2: 3.0}


def test_an_augmentation_request_carries_annotations_of_the_annotation_contract() -> None:
    from simulacra_client.api.annotation.v1 import annotation_pb2
    from simulacra_client.api.augmentation.v1 import augmentation_service_pb2, pipeline_pb2

    spec = pipeline_pb2.PipelineSpec(
        ops=[
            pipeline_pb2.Op(probability=0.5, horizontal_flip=pipeline_pb2.HorizontalFlipOp()),
            pipeline_pb2.Op(fog=pipeline_pb2.FogOp(density=pipeline_pb2.FloatRange(min=0.2, max=0.6))),
        ],
        seed_policy=pipeline_pb2.SEED_POLICY_ITEM_KEY,
    )
    request = augmentation_service_pb2.AugmentBatchRequest(
        pipeline=augmentation_service_pb2.PipelineSource(pipeline_spec=spec),
        seed=7,
        items=[
            augmentation_service_pb2.AugmentItem(
                key="datasets/cars/items/a1",
                annotations=[annotation_pb2.Annotation(category_id=2, box=annotation_pb2.Box(x=1, y=2, w=3, h=4))],
            )
        ],
    )
    again = augmentation_service_pb2.AugmentBatchRequest.FromString(request.SerializeToString())

    assert again == request
    assert again.pipeline.WhichOneof("source") == "pipeline_spec"
    assert [op.WhichOneof("kind") for op in again.pipeline.pipeline_spec.ops] == ["horizontal_flip", "fog"]
    assert again.pipeline.pipeline_spec.ops[0].HasField("probability")
    assert not again.pipeline.pipeline_spec.ops[1].HasField("probability")  # unset means always
    assert again.items[0].annotations[0].box.w == 3
    # The digest that lineage records is stable for equal specs.
    assert spec.SerializeToString(deterministic=True) == again.pipeline.pipeline_spec.SerializeToString(deterministic=True)
