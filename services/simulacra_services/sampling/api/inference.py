"""inference.GRPCInferenceService (Open Inference Protocol / KServe v2 with Triton's extensions).

Model names are registry model ids; ``model_version`` is a version number (an alias works too),
empty means ``SamplingConfig.default_alias``. ModelInfer has two modes:

- raw tensors, exactly the ONNX signature: inputs ``z`` FP32 [N, latent_dim], ``labels`` INT64 [N]
  and, for generators with attributes, ``attributes`` INT64 [N, A]; output ``samples`` FP32;
- seeded sampling, when the request has no ``z``: parameters ``seed``, ``start_index``, ``count``,
  ``format`` ("float32", "uint8" or "png"), ``layout`` ("NCHW"/"NHWC"), ``truncation``,
  ``balance_against`` ("datasets/D/versions/N", as ClassMix.balance_against); optional
  input ``labels``. Outputs ``samples`` (or ``images`` BYTES for png), ``labels`` INT64,
  ``indices`` UINT64 and ``attributes`` INT64 when the generator has some: the same samples
  SamplingService.Sample returns for the same (version, seed, index). The response names the
  resolved ``model_version`` and echoes ``seed`` (and ``truncation`` when used) in its
  parameters: with the outputs, each sample's whole lineage.

Both go through the same dynamic batcher as the native API.
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
from collections.abc import AsyncIterator

import grpc
import numpy as np

from simulacra_client.api.inference import grpc_service_pb2 as pb
from simulacra_client.api.inference import grpc_service_pb2_grpc as pb_grpc
from simulacra_client.api.inference import model_config_pb2 as config_pb
from simulacra_services.core import errors
from simulacra_services.core.registry import check_model_id
from simulacra_services.sampling.api.balance import ClassBalancer
from simulacra_services.sampling.config import SamplingConfig
from simulacra_services.sampling.runtime.encode import Format, Layout
from simulacra_services.sampling.serving.generator import LoadedGenerator
from simulacra_services.sampling.serving.pool import GeneratorPool, LoadRequest
from simulacra_services.sampling.serving.sampler import SampleBatch, produce
from simulacra_services.sampling.serving.spec import SampleSpec, check_count, check_labels, check_spec, shard_indices

SERVICE_NAME = "inference.GRPCInferenceService"
SERVER_NAME = "simulacra-sampling"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["model_repository", "model_configuration", "statistics", "parameters", "binary_tensor_data"]
PLATFORM = "onnxruntime_onnx"

_NUMPY = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8"), "UINT8": np.dtype("u1"), "UINT64": np.dtype("<u8")}
_NATIVE = {name: dtype.newbyteorder("=") for name, dtype in _NUMPY.items()}
"""The same dtypes in this machine's byte order (made once: a dtype per call costs on every request)."""
_TRITON_NAME = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.uint8): "UINT8", np.dtype(np.uint64): "UINT64"}
_FORMATS = {"float32": Format.FLOAT32, "fp32": Format.FLOAT32, "uint8": Format.UINT8, "png": Format.PNG}
_MAX_STREAM_IN_FLIGHT = 64


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, pool: GeneratorPool, config: SamplingConfig, balancer: ClassBalancer) -> None:
        self.pool = pool
        self.config = config
        self.balancer = balancer

    def _name(self, model: str, version: str) -> str:
        check_model_id(model)
        return f"models/{model}/versions/{version or self.config.default_alias}"

    # ---- server -------------------------------------------------------------------
    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)

    # ---- models -------------------------------------------------------------------
    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        check_model_id(request.name)
        ref = request.version or self.config.default_alias
        version = self.pool.served_version(request.name, ref)
        ready = version is not None and any(g.record.model == request.name and g.record.version == version for g in self.pool.loaded())
        return pb.ModelReadyResponse(ready=ready)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        record = await self._record(request.name, request.version)
        versions = await asyncio.to_thread(self.pool.registry.list_versions, request.name, None, 1000)
        sig = record.signature
        inputs = [
            pb.ModelMetadataResponse.TensorMetadata(name="z", datatype="FP32", shape=[-1, sig.latent_dim]),
            pb.ModelMetadataResponse.TensorMetadata(name="labels", datatype="INT64", shape=[-1]),
        ]
        if sig.attributes:
            inputs.append(pb.ModelMetadataResponse.TensorMetadata(name="attributes", datatype="INT64", shape=[-1, len(sig.attributes)]))
        outputs = [pb.ModelMetadataResponse.TensorMetadata(name="samples", datatype="FP32", shape=[-1, *sig.sample_shape])]
        return pb.ModelMetadataResponse(
            name=request.name, versions=[str(v.version) for v in versions], platform=PLATFORM, inputs=inputs, outputs=outputs
        )

    async def _record(self, model: str, version: str):  # noqa: ANN202 - ModelVersionRecord
        check_model_id(model)
        ref = version or self.config.default_alias
        served = self.pool.served_version(model, ref)
        return await self.pool.resolve(model, str(served) if served is not None else ref)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext) -> pb.ModelConfigResponse:
        record = await self._record(request.name, request.version)
        sig = record.signature
        policy = self.config.batching
        loaded = next((g for g in self.pool.loaded() if g.record.model == record.model and g.record.version == record.version), None)
        if loaded is not None:
            policy = loaded.batcher.policy
        inputs = [
            config_pb.ModelInput(name="z", data_type=config_pb.TYPE_FP32, dims=[sig.latent_dim]),
            config_pb.ModelInput(name="labels", data_type=config_pb.TYPE_INT64, dims=[1]),
        ]
        if sig.attributes:
            inputs.append(config_pb.ModelInput(name="attributes", data_type=config_pb.TYPE_INT64, dims=[len(sig.attributes)]))
        gpu = loaded is not None and loaded.provider != "CPUExecutionProvider"
        config = config_pb.ModelConfig(
            name=record.model,
            platform=PLATFORM,
            backend="onnxruntime",
            max_batch_size=policy.max_batch_size,
            input=inputs,
            output=[config_pb.ModelOutput(name="samples", data_type=config_pb.TYPE_FP32, dims=list(sig.sample_shape))],
            instance_group=[
                config_pb.ModelInstanceGroup(
                    count=policy.instances, kind=config_pb.ModelInstanceGroup.KIND_GPU if gpu else config_pb.ModelInstanceGroup.KIND_CPU
                )
            ],
            parameters={
                "simulacra_version": config_pb.ModelParameter(string_value=str(record.version)),
                "simulacra_onnx_sha256": config_pb.ModelParameter(string_value=record.onnx_sha256),
            },
        )
        if policy.enabled:
            config.dynamic_batching.CopyFrom(
                config_pb.ModelDynamicBatching(
                    preferred_batch_size=list(policy.preferred_batch_sizes), max_queue_delay_microseconds=policy.max_queue_delay_us
                )
            )
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext) -> pb.ModelStatisticsResponse:
        if request.name:
            check_model_id(request.name)
        out = []
        for generator in self.pool.loaded():
            record = generator.record
            if request.name and record.model != request.name or request.version and request.version != str(record.version):
                continue
            s = self.pool.metrics.statistics(generator.name)
            out.append(
                pb.ModelStatistics(
                    name=record.model,
                    version=str(record.version),
                    last_inference=s.last_inference_ms,
                    inference_count=s.inference_count,
                    execution_count=s.execution_count,
                    inference_stats=pb.InferStatistics(
                        success=pb.StatisticDuration(count=s.success_count, ns=s.success_ns),
                        fail=pb.StatisticDuration(count=s.fail_count, ns=s.fail_ns),
                        queue=pb.StatisticDuration(count=s.queue_count, ns=s.queue_ns),
                        compute_infer=pb.StatisticDuration(count=s.compute_count, ns=s.compute_ns),
                    ),
                    batch_stats=[
                        pb.InferBatchStatistics(batch_size=size, compute_infer=pb.StatisticDuration(count=c, ns=ns))
                        for size, (c, ns) in sorted((s.batch_sizes or {}).items())
                    ],
                )
            )
        if request.name and not out:
            await self._record(request.name, request.version)  # NOT_FOUND for an unknown model
        return pb.ModelStatisticsResponse(model_stats=out)

    # ---- repository -----------------------------------------------------------------
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext) -> pb.RepositoryIndexResponse:
        loaded = {(g.record.model, g.record.version) for g in self.pool.loaded()}
        if request.ready:
            rows = sorted(loaded)
        else:
            rows = await asyncio.to_thread(self._all_versions)
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=model, version=str(version), state="READY" if (model, version) in loaded else "UNAVAILABLE",
                    reason="" if (model, version) in loaded else "unloaded",
                )
                for model, version in rows
            ]
        )

    def _all_versions(self) -> list[tuple[str, int]]:
        registry = self.pool.registry
        rows: list[tuple[str, int]] = []
        for record in registry.list_models(limit=1000):
            rows.extend((record.model, v.version) for v in registry.list_versions(record.model, limit=1000))
        return rows

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext) -> pb.RepositoryModelLoadResponse:
        params = request.parameters
        version = params["version"].string_param if "version" in params else ""
        provider = params["provider"].string_param if "provider" in params else ""
        await self.pool.load(self._name(request.model_name, version), LoadRequest(provider=provider))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        check_model_id(request.model_name)
        versions = [g.record.version for g in self.pool.loaded() if g.record.model == request.model_name]
        if not versions:
            await self._record(request.model_name, "")  # NOT_FOUND for an unknown model; unloading twice is fine
        for version in versions:
            await self.pool.unload(self._name(request.model_name, str(version)))
        return pb.RepositoryModelUnloadResponse()

    # ---- inference ----------------------------------------------------------------------
    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        return await self._infer(request)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests are served concurrently (so the batcher can merge them); answers come as they finish."""
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        slots = asyncio.Semaphore(_MAX_STREAM_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()

        async def answer(request: pb.ModelInferRequest) -> None:
            try:
                response = pb.ModelStreamInferResponse(infer_response=await self._infer(request))
            except errors.SimulacraError as error:
                response = pb.ModelStreamInferResponse(
                    error_message=f"{error.code.value}: {error.reason}: {error.message}",
                    infer_response=pb.ModelInferResponse(model_name=request.model_name, id=request.id),
                )
            finally:
                slots.release()
            await answers.put(response)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await slots.acquire()
                    task = asyncio.ensure_future(answer(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*list(tasks), return_exceptions=True)
            finally:
                await answers.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (response := await answers.get()) is not None:
                yield response
            reader.result()
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        started = time.perf_counter()
        name = self._name(request.model_name, request.model_version)
        inputs = _decode_inputs(request)
        async with self.pool.lease(name) as generator:
            spec: SampleSpec | None = None
            try:
                if "z" in inputs:
                    outputs = await self._raw(generator, inputs)
                    count = len(inputs["z"])
                else:
                    batch, spec = await self._seeded(generator, request, inputs)
                    outputs = _batch_outputs(batch)
                    count = len(batch.indices)
            except errors.SimulacraError as error:
                self.pool.metrics.observe_error(generator.name, error.reason, time.perf_counter() - started)
                raise
            wanted = [o.name for o in request.outputs]
            unknown = [w for w in wanted if w not in outputs]
            if unknown:
                raise errors.InvalidArgument(
                    "UNKNOWN_OUTPUT", f"unknown output {unknown[0]!r}; this model has {', '.join(outputs)}", {"output": unknown[0][:80]}
                )
            response = pb.ModelInferResponse(model_name=request.model_name, model_version=str(generator.record.version), id=request.id)
            if spec is not None:  # the rest of each sample's lineage: the version above, indices/labels/attributes among the outputs
                response.parameters["seed"].uint64_param = spec.seed
                if spec.truncation is not None:
                    response.parameters["truncation"].double_param = spec.truncation
            for key in wanted or list(outputs):
                datatype, shape, raw = outputs[key]
                response.outputs.add(name=key, datatype=datatype, shape=shape)
                response.raw_output_contents.append(raw)
            self.pool.metrics.observe_request(generator.name, count, time.perf_counter() - started)
            return response

    async def _raw(self, generator: LoadedGenerator, inputs: dict[str, np.ndarray]) -> dict[str, tuple[str, list[int], bytes]]:
        sig = generator.signature
        expected = {"z", "labels", "attributes"} if sig.attributes else {"z", "labels"}
        if set(inputs) != expected:
            raise errors.InvalidArgument(
                "INVALID_INPUTS", f"inputs must be {', '.join(sorted(expected))}; got {', '.join(sorted(inputs))}", {"inputs": ",".join(sorted(inputs))[:200]}
            )
        z, labels = inputs["z"], inputs["labels"]
        _expect(z, "z", np.float32, (-1, sig.latent_dim))
        _expect(labels, "labels", np.int64, (len(z),))
        n = check_count(len(z), self.config.max_sample_count, "batch")
        if sig.conditional:
            check_labels(labels.tolist(), n, sig)
        attributes = None
        if sig.attributes:
            attributes = inputs["attributes"]
            _expect(attributes, "attributes", np.int64, (n, len(sig.attributes)))
            for j, spec in enumerate(sig.attributes):
                if attributes[:, j].min(initial=0) < 0 or attributes[:, j].max(initial=0) >= len(spec.values):
                    raise errors.InvalidArgument(
                        "ATTRIBUTE_OUT_OF_RANGE", f"attribute {spec.name!r} takes indices 0..{len(spec.values) - 1}", {"attribute": spec.name}
                    )
        out = await generator.infer(np.ascontiguousarray(z), np.ascontiguousarray(labels), attributes)
        return {"samples": ("FP32", list(out.shape), np.ascontiguousarray(out, dtype="<f4").tobytes())}

    async def _seeded(
        self, generator: LoadedGenerator, request: pb.ModelInferRequest, inputs: dict[str, np.ndarray]
    ) -> tuple[SampleBatch, SampleSpec]:
        params = request.parameters
        if set(inputs) - {"labels"}:
            raise errors.InvalidArgument(
                "INVALID_INPUTS", "seeded sampling takes only an optional 'labels' input (send 'z' for raw tensors)", {}
            )
        fmt_name = _string(params, "format", "float32").lower()
        if fmt_name not in _FORMATS:
            raise errors.InvalidArgument("INVALID_FORMAT", f"format must be float32, uint8 or png, not {fmt_name[:40]!r}", {"format": fmt_name[:40]})
        layout_name = _string(params, "layout", "NCHW").upper()
        if layout_name not in ("NCHW", "NHWC"):
            raise errors.InvalidArgument("INVALID_LAYOUT", f"layout must be NCHW or NHWC, not {layout_name[:40]!r}", {"layout": layout_name[:40]})
        truncation = _number(params, "truncation", None)
        balance = _string(params, "balance_against", "")
        spec = SampleSpec(
            seed=int(_number(params, "seed", 0)) % 2**64,
            class_mix=await self.balancer.weights(balance, generator.signature) if balance else {},
            truncation=None if truncation is None else float(truncation),
            format=_FORMATS[fmt_name],
            layout=Layout[layout_name],
        )
        labels = inputs.get("labels")
        count = check_count(int(_number(params, "count", len(labels) if labels is not None else 1)), self.config.max_sample_count)
        checked = check_spec(spec, generator.signature)
        explicit = check_labels(labels.reshape(-1).tolist(), count, generator.signature) if labels is not None else None
        indices = shard_indices(int(_number(params, "start_index", 0)), 0, 1, count)
        return await produce(generator, checked, indices, explicit, offload=count >= self.config.offload_samples), spec


def _batch_outputs(batch: SampleBatch) -> dict[str, tuple[str, list[int], bytes]]:
    outputs: dict[str, tuple[str, list[int], bytes]] = {}
    if batch.images is not None:
        outputs["images"] = ("BYTES", [len(batch.images)], b"".join(struct.pack("<I", len(i)) + i for i in batch.images))
    else:
        array = np.ascontiguousarray(batch.samples)
        outputs["samples"] = (_TRITON_NAME[array.dtype], list(array.shape), array.tobytes())
    outputs["labels"] = ("INT64", [len(batch.labels)], batch.labels.astype("<i8").tobytes())
    outputs["indices"] = ("UINT64", [len(batch.indices)], batch.indices.astype("<u8").tobytes())
    if batch.attributes is not None:
        outputs["attributes"] = ("INT64", list(batch.attributes.shape), batch.attributes.astype("<i8").tobytes())
    return outputs


def _decode_inputs(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise errors.InvalidArgument(
            "INVALID_INPUTS", f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs", {"inputs": len(request.inputs)}
        )
    out: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.datatype not in _NUMPY:
            raise errors.InvalidArgument(
                "INVALID_DATATYPE", f"input {tensor.name[:40]!r} has datatype {tensor.datatype[:20]!r}; expected FP32 or INT64",
                {"input": tensor.name[:40], "datatype": tensor.datatype[:20]},
            )
        dtype = _NUMPY[tensor.datatype]
        shape = tuple(tensor.shape)
        if len(shape) > 4 or (shape and min(shape) < 0):
            raise errors.InvalidArgument("INVALID_SHAPE", f"input {tensor.name[:40]!r} has shape {list(shape)}", {"input": tensor.name[:40]})
        expected = math.prod(shape)
        if raw:
            if len(raw[i]) != expected * dtype.itemsize:
                raise errors.InvalidArgument(
                    "INVALID_SHAPE",
                    f"input {tensor.name[:40]!r}: {len(raw[i])} bytes do not make shape {list(shape)} of {tensor.datatype}",
                    {"input": tensor.name[:40]},
                )
            values = np.frombuffer(raw[i], dtype=dtype)
        else:
            c = tensor.contents
            source = {"FP32": c.fp32_contents, "INT64": c.int64_contents, "UINT8": c.uint_contents, "UINT64": c.uint64_contents}[tensor.datatype]
            values = np.asarray(source, dtype=dtype)
            if values.size != expected:
                raise errors.InvalidArgument("INVALID_SHAPE", f"input {tensor.name[:40]!r}: {values.size} values for shape {list(shape)}", {"input": tensor.name[:40]})
        out[tensor.name] = values.reshape(shape).astype(_NATIVE[tensor.datatype], copy=False)
    return out


def _expect(array: np.ndarray, name: str, dtype: type, shape: tuple[int, ...]) -> None:
    ok = array.dtype == np.dtype(dtype) and array.ndim == len(shape) and all(s in (-1, a) for s, a in zip(shape, array.shape))
    if not ok:
        want = "x".join("N" if s == -1 else str(s) for s in shape)
        raise errors.InvalidArgument(
            "INVALID_SHAPE" if array.dtype == np.dtype(dtype) else "INVALID_DATATYPE",
            f"input {name!r} must be {np.dtype(dtype).name} [{want}], got {array.dtype.name} {list(array.shape)}",
            {"input": name},
        )


def _number(params, key: str, default):  # noqa: ANN001, ANN202
    if key not in params:
        return default
    p = params[key]
    which = p.WhichOneof("parameter_choice")
    if which in ("int64_param", "uint64_param", "double_param"):
        return getattr(p, which)
    if which == "string_param":
        try:
            return float(p.string_param) if "." in p.string_param else int(p.string_param)
        except ValueError:
            pass
    raise errors.InvalidArgument("INVALID_PARAMETER", f"parameter {key!r} must be a number", {"parameter": key})


def _string(params, key: str, default: str) -> str:  # noqa: ANN001
    if key not in params:
        return default
    p = params[key]
    if p.WhichOneof("parameter_choice") != "string_param":
        raise errors.InvalidArgument("INVALID_PARAMETER", f"parameter {key!r} must be a string", {"parameter": key})
    return p.string_param
