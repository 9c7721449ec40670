"""Protobuf <-> domain for the sampling service (the only place, with the servicers, that knows protobuf)."""

from __future__ import annotations

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from simulacra_client.api.common.v1 import common_pb2
from simulacra_client.api.sampling.v1 import generator_pb2 as gen_pb
from simulacra_client.api.sampling.v1 import sampling_service_pb2 as api
from simulacra_services.core import errors
from simulacra_services.sampling.runtime.encode import Format, Layout
from simulacra_services.sampling.serving.pool import GeneratorView, LoadRequest
from simulacra_services.sampling.serving.sampler import SampleBatch
from simulacra_services.sampling.serving.spec import SampleSpec

_DTYPES = {
    np.dtype(np.float32): common_pb2.DATA_TYPE_FLOAT32,
    np.dtype(np.uint8): common_pb2.DATA_TYPE_UINT8,
    np.dtype(np.int64): common_pb2.DATA_TYPE_INT64,
}
_FORMATS = {
    gen_pb.SAMPLE_FORMAT_UNSPECIFIED: Format.FLOAT32,
    gen_pb.SAMPLE_FORMAT_FLOAT32: Format.FLOAT32,
    gen_pb.SAMPLE_FORMAT_UINT8: Format.UINT8,
    gen_pb.SAMPLE_FORMAT_PNG: Format.PNG,
}
_LAYOUTS = {
    gen_pb.SAMPLE_LAYOUT_UNSPECIFIED: Layout.NCHW,
    gen_pb.SAMPLE_LAYOUT_NCHW: Layout.NCHW,
    gen_pb.SAMPLE_LAYOUT_NHWC: Layout.NHWC,
}


def tensor(array: np.ndarray) -> common_pb2.Tensor:
    array = np.ascontiguousarray(array)
    return common_pb2.Tensor(dtype=_DTYPES[array.dtype], shape=list(array.shape), data=array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())


def spec_of(request: api.SampleRequest | api.StreamSamplesRequest) -> SampleSpec:
    if request.format not in _FORMATS:
        raise errors.InvalidArgument("INVALID_FORMAT", f"unknown sample format {request.format}", {"format": request.format})
    if request.layout not in _LAYOUTS:
        raise errors.InvalidArgument("INVALID_LAYOUT", f"unknown sample layout {request.layout}", {"layout": request.layout})
    if request.class_mix.balance_against and request.class_mix.weights:
        raise errors.InvalidArgument(
            "CLASS_MIX_CONFLICT", "give class_mix weights or balance_against, not both", {"balance_against": request.class_mix.balance_against[:120]}
        )
    names = [m.name for m in request.attribute_mix]
    if len(set(names)) != len(names):
        raise errors.InvalidArgument("DUPLICATE_ATTRIBUTE", "an attribute appears twice in attribute_mix", {})
    return SampleSpec(
        seed=request.seed,
        class_mix=dict(request.class_mix.weights),
        attribute_mix={m.name: dict(m.weights) for m in request.attribute_mix},
        truncation=request.truncation if request.HasField("truncation") else None,
        format=_FORMATS[request.format],
        layout=_LAYOUTS[request.layout],
    )


def load_request(options: gen_pb.LoadOptions) -> LoadRequest:
    return LoadRequest(
        provider=options.provider,
        warmup_batch_size=options.warmup_batch_size if options.HasField("warmup_batch_size") else None,
        pin=options.pin,
    )


def _lineage(batch: SampleBatch) -> dict[str, object]:
    fields: dict[str, object] = {"generator": batch.generator, "labels": batch.labels.tolist()}
    if batch.samples is not None:
        fields["samples"] = tensor(batch.samples)
    if batch.images is not None:
        fields["images"] = batch.images
    if batch.attributes is not None:
        fields["attributes"] = tensor(batch.attributes)
    return fields


def sample_response(batch: SampleBatch, spec: SampleSpec) -> api.SampleResponse:
    response = api.SampleResponse(indices=batch.indices.tolist(), seed=spec.seed, **_lineage(batch))  # type: ignore[arg-type]
    if spec.truncation is not None:
        response.truncation = spec.truncation
    return response


def stream_response(batch: SampleBatch, spec: SampleSpec) -> api.StreamSamplesResponse:
    response = api.StreamSamplesResponse(
        start_index=int(batch.indices[0]), indices=batch.indices.tolist(), seed=spec.seed, **_lineage(batch)  # type: ignore[arg-type]
    )
    if spec.truncation is not None:
        response.truncation = spec.truncation
    return response


def generator(view: GeneratorView, max_sample_count: int) -> gen_pb.Generator:
    record, sig, loaded = view.record, view.record.signature, view.loaded
    out = gen_pb.Generator(
        name=record.name,
        model=f"models/{record.model}",
        version=record.version,
        aliases=list(view.aliases),
        latent_dim=sig.latent_dim,
        output_shape=list(sig.sample_shape),
        output_dtype=common_pb2.DATA_TYPE_FLOAT32,
        num_classes=sig.num_classes,
        class_names=list(sig.class_names),
        category_ids=list(sig.category_ids),
        onnx_sha256=record.onnx_sha256,
        max_sample_count=max_sample_count,
        attributes=[gen_pb.GeneratorAttribute(name=a.name, values=list(a.values)) for a in sig.attributes],
        model_kind=record.model_kind,
    )
    if loaded is not None:
        out.state = gen_pb.GENERATOR_STATE_LOADED
        out.device = loaded.provider
        out.pinned = loaded.pinned
        ts = Timestamp()
        ts.FromDatetime(loaded.load_time)
        out.load_time.CopyFrom(ts)
        policy = loaded.batcher.policy
        out.batching.CopyFrom(
            gen_pb.BatchingConfig(
                enabled=policy.enabled,
                max_batch_size=policy.max_batch_size,
                max_queue_delay_microseconds=policy.max_queue_delay_us,
                preferred_batch_sizes=list(policy.preferred_batch_sizes),
                instance_count=policy.instances,
            )
        )
    elif view.failure is not None:
        out.state = gen_pb.GENERATOR_STATE_FAILED
        out.load_error.CopyFrom(
            common_pb2.JobError(
                code=grpc.StatusCode[view.failure.code.value].value[0],
                reason=view.failure.reason,
                message=view.failure.message,
                metadata=view.failure.metadata,
            )
        )
    else:
        out.state = gen_pb.GENERATOR_STATE_UNLOADED
    return out
