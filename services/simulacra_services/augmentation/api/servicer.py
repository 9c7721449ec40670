"""AugmentationService: each RPC checks its request, calls the domain layer, converts the result."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import DecodeError

from simulacra_client.api.augmentation.v1 import augmentation_service_pb2 as pb
from simulacra_client.api.augmentation.v1 import augmentation_service_pb2_grpc as pb_grpc
from simulacra_client.api.common.v1 import common_pb2
from simulacra_services.augmentation.api import convert, engine_processes
from simulacra_services.augmentation.api import jobs as job_convert
from simulacra_services.augmentation.domain.batches import BatchRunner
from simulacra_services.augmentation.engine import Augmenter, Item
from simulacra_services.augmentation.engine import preview as preview_grid
from simulacra_services.augmentation.engine.pipeline import MAX_IMAGE_PIXELS
from simulacra_services.augmentation.jobs.dataset_job import KIND
from simulacra_services.augmentation.persistence.pipelines import PipelineRepository, check_pipeline_id
from simulacra_services.core import errors
from simulacra_services.core.aio import stop_task
from simulacra_services.core.api import pagination
from simulacra_services.core.jobs import JobRunner

MAX_IN_FLIGHT = 8
MAX_PREVIEW = 64
_PIPELINE_PREFIX = "pipelines/"


def _invalid(reason: str, field: str, message: str, **metadata: object) -> errors.SimulacraError:
    return errors.InvalidArgument(reason, f"{field}: {message}", {"field": field, **metadata})


def pipeline_id_of(name: str, field: str = "name") -> str:
    if not name.startswith(_PIPELINE_PREFIX):
        raise _invalid("INVALID_NAME", field, f"expected pipelines/{{pipeline}}, got {name[:100]!r}")
    pipeline_id = name[len(_PIPELINE_PREFIX) :]
    check_pipeline_id(pipeline_id, field)
    return pipeline_id


def torch_augmenter(augmenter: Augmenter, device: str) -> object:
    """The batched torch path on ``device`` (imports torch: only streams that ask for it do)."""
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise _invalid("INVALID_DEVICE", "config.device", f"expected \"\", \"cpu\" or \"cuda\", got {device[:40]!r}")
    try:
        import torch

        from simulacra_services.augmentation.engine.batched import TorchAugmenter
    except ImportError:
        raise errors.FailedPrecondition("DEVICE_UNAVAILABLE", "this augmentation server has no torch; leave device empty", {"device": device}) from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise errors.FailedPrecondition("DEVICE_UNAVAILABLE", f"this augmentation server has no CUDA device for {device!r}", {"device": device})
    return TorchAugmenter(augmenter, device)


class AugmentationServicer(pb_grpc.AugmentationServiceServicer):
    def __init__(
        self,
        pipelines: PipelineRepository,
        runner: BatchRunner,
        jobs: JobRunner | None = None,
        *,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        processes: engine_processes.EngineProcesses | None = None,
    ) -> None:
        """``processes``: AugmentStream's engine in child processes; its requests must then be
        registered to arrive as bytes (``service.register``)."""
        self._pipelines = pipelines
        self._runner = runner
        self._jobs = jobs
        self._max_pixels = max_image_pixels
        self._processes = processes

    # -- pipelines ------------------------------------------------------------

    async def CreatePipeline(self, request: pb.CreatePipelineRequest, context: grpc.aio.ServicerContext) -> pb.CreatePipelineResponse:
        spec = convert.spec_from_proto(request.pipeline.spec, "pipeline.spec")
        stored = await asyncio.to_thread(self._pipelines.create, request.pipeline_id, request.pipeline.description, spec)
        return pb.CreatePipelineResponse(pipeline=convert.pipeline_to_proto(stored))

    async def GetPipeline(self, request: pb.GetPipelineRequest, context: grpc.aio.ServicerContext) -> pb.GetPipelineResponse:
        stored = await asyncio.to_thread(self._pipelines.get, pipeline_id_of(request.name))
        return pb.GetPipelineResponse(pipeline=convert.pipeline_to_proto(stored))

    async def ListPipelines(self, request: pb.ListPipelinesRequest, context: grpc.aio.ServicerContext) -> pb.ListPipelinesResponse:
        page = pagination.PageRequest.parse(request.page_size, request.page_token, pagination.fingerprint(rpc="ListPipelines"))
        rows = await asyncio.to_thread(self._pipelines.list, page.cursor, page.size + 1)
        stored, token = page.finish(rows, lambda row: row.pipeline_id)
        return pb.ListPipelinesResponse(pipelines=[convert.pipeline_to_proto(s) for s in stored], next_page_token=token)

    async def DeletePipeline(self, request: pb.DeletePipelineRequest, context: grpc.aio.ServicerContext) -> pb.DeletePipelineResponse:
        await asyncio.to_thread(self._pipelines.delete, pipeline_id_of(request.name))
        return pb.DeletePipelineResponse()

    # -- batch, stream, preview ---------------------------------------------------

    async def _augmenter(self, source: pb.PipelineSource, categories: object, field: str) -> Augmenter:
        which = source.WhichOneof("source")
        if which == "pipeline_spec":
            spec = convert.spec_from_proto(source.pipeline_spec, f"{field}.pipeline_spec")
        elif which == "pipeline_name":
            spec = (await asyncio.to_thread(self._pipelines.get, pipeline_id_of(source.pipeline_name, f"{field}.pipeline_name"))).spec
        else:
            raise _invalid("MISSING_PIPELINE", field, "set pipeline_name or pipeline_spec")
        return Augmenter(spec, convert.categories_from_proto(categories))

    def _items(self, messages: object, field: str) -> list[Item]:
        return [convert.item_from_proto(m, f"{field}[{i}]", self._max_pixels) for i, m in enumerate(messages)]  # type: ignore[call-overload]

    async def AugmentBatch(self, request: pb.AugmentBatchRequest, context: grpc.aio.ServicerContext) -> bytes:
        augmenter = await self._augmenter(request.pipeline, request.categories, "pipeline")
        # Converting the items, augmenting them and serializing the response run on one worker
        # call; the response goes out as bytes (the interceptor passes them through).
        return await self._runner.run(  # type: ignore[no-any-return]
            augmenter, lambda: self._items(request.items, "items"), request.seed,
            finish=lambda results: convert.batch_response(results, augmenter.digest),
        )

    async def AugmentStream(self, request_iterator: AsyncIterator[pb.AugmentStreamRequest], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        requests = request_iterator.__aiter__()
        try:
            first = await requests.__anext__()
        except StopAsyncIteration:
            return
        first_raw, first = first, await self._stream_message(first)
        if not first.HasField("config"):
            raise _invalid("MISSING_CONFIG", "config", "the first request of a stream carries the config (pipeline and seed)")
        config = first.config
        augmenter = await self._augmenter(config.pipeline, config.categories, "config.pipeline")
        batched = await asyncio.to_thread(torch_augmenter, augmenter, config.device) if config.device else None
        # With engine processes (and the numpy path), requests arrive as their wire bytes and go to
        # a child process as they are; otherwise they are augmented on the worker threads.
        processes = self._processes if batched is None else None
        pipeline = processes.pipeline(augmenter) if processes is not None else None
        slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        ordered: asyncio.Queue[asyncio.Future | None] = asyncio.Queue()
        position = config.start_position

        async def augment(request: pb.AugmentStreamRequest | bytes, start: int, is_first: bool) -> bytes:
            if processes is not None and isinstance(request, bytes):
                return await processes.stream_request(pipeline, request, config.seed, start, first=is_first)  # type: ignore[arg-type]
            message = await self._stream_message(request)
            if message.HasField("config") and not is_first:
                raise engine_processes.config_again()
            return await self._runner.run(  # type: ignore[no-any-return]
                augmenter, lambda: self._items(message.items, "items"), config.seed, start_position=start, batched=batched,
                finish=lambda results: convert.stream_response(results, augmenter.digest, start),
            )

        def submit(request: pb.AugmentStreamRequest | bytes, is_first: bool = False) -> None:
            nonlocal position
            start = position
            position += len(request.items) if not isinstance(request, bytes) else max(0, engine_processes.stream_items(request))
            ordered.put_nowait(asyncio.ensure_future(augment(request, start, is_first)))

        async def read() -> None:
            try:
                if first.items:
                    await slots.acquire()
                    submit(first_raw if processes is not None else first, is_first=True)
                async for request in requests:
                    if not isinstance(request, bytes) and request.HasField("config"):
                        raise engine_processes.config_again()
                    await slots.acquire()
                    submit(request)
            except BaseException as error:  # handed to the writer, which raises it in order
                failed: asyncio.Future = asyncio.get_running_loop().create_future()
                failed.set_exception(error if isinstance(error, Exception) else errors.Cancelled("CANCELLED", "stream cancelled"))
                ordered.put_nowait(failed)
                return
            ordered.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while True:
                task = await ordered.get()
                if task is None:
                    break
                try:
                    response = await task
                finally:
                    slots.release()
                yield response
        finally:
            await stop_task(reader)
            while not ordered.empty():
                pending = ordered.get_nowait()
                if pending is not None:
                    pending.cancel()

    @staticmethod
    async def _stream_message(request: pb.AugmentStreamRequest | bytes) -> pb.AugmentStreamRequest:
        """The message of a stream request (with engine processes they arrive as bytes)."""
        if not isinstance(request, bytes):
            return request
        try:
            return await asyncio.to_thread(pb.AugmentStreamRequest.FromString, request)
        except DecodeError:
            raise engine_processes.undecodable() from None

    async def PreviewAugmentations(self, request: pb.PreviewAugmentationsRequest, context: grpc.aio.ServicerContext) -> pb.PreviewAugmentationsResponse:
        count = request.count or 8
        if not 1 <= count <= MAX_PREVIEW:
            raise _invalid("PARAM_OUT_OF_RANGE", "count", f"must lie in [1, {MAX_PREVIEW}], got {count}", value=count, limit=MAX_PREVIEW)
        if not 0 <= request.columns <= MAX_PREVIEW:
            raise _invalid("PARAM_OUT_OF_RANGE", "columns", f"must lie in [0, {MAX_PREVIEW}], got {request.columns}", value=request.columns)
        augmenter = await self._augmenter(request.pipeline, request.categories, "pipeline")
        if not request.HasField("item"):
            raise _invalid("MISSING_ITEM", "item", "a preview needs an item")
        item = convert.item_from_proto(request.item, "item", self._max_pixels)
        if count * item.image.shape[0] * item.image.shape[1] > self._max_pixels:
            raise errors.ResourceExhausted(
                "PREVIEW_TOO_LARGE",
                f"count: {count} tiles of {item.image.shape[1]}x{item.image.shape[0]} exceed {self._max_pixels} pixels; ask for fewer or a smaller image",
                {"field": "count", "limit": self._max_pixels},
            )
        results = []
        for index in range(count):
            copy = Item(item.image, item.annotations, item.key, None if item.seed is None else (item.seed + index) % 2**64)
            results.extend(await self._runner.run(augmenter, [copy], request.seed, copy_index=index, path="item"))
        image = await asyncio.to_thread(preview_grid.grid, results, request.columns)
        data = await asyncio.to_thread(preview_grid.png, image)
        return pb.PreviewAugmentationsResponse(
            png=data, width=image.shape[1], height=image.shape[0], seeds=[r.seed for r in results], pipeline_digest=augmenter.digest
        )

    # -- dataset jobs ---------------------------------------------------------------------

    def _job_id(self, name: str, field: str = "name") -> str:
        prefix = "augmentDatasetJobs/"
        job_id = name[len(prefix) :] if name.startswith(prefix) else ""
        if not job_id or len(job_id) > 64 or not job_id.replace("-", "").isalnum():
            raise _invalid("INVALID_NAME", field, f"expected augmentDatasetJobs/{{job}}, got {name[:100]!r}")
        return job_id

    def _runner_or_refuse(self) -> JobRunner:
        if self._jobs is None:
            raise errors.FailedPrecondition(
                "JOBS_NOT_CONFIGURED", "this augmentation server has no database for dataset jobs", {"service": "augmentation"}
            )
        return self._jobs

    async def CreateAugmentDatasetJob(self, request: pb.CreateAugmentDatasetJobRequest, context: grpc.aio.ServicerContext) -> pb.CreateAugmentDatasetJobResponse:
        runner = self._runner_or_refuse()
        job = request.augment_dataset_job
        augmenter = await self._augmenter(job.pipeline, (), "augment_dataset_job.pipeline")
        spec = job_convert.spec_from_proto(job, augmenter.spec)
        record, _ = await runner.create(KIND, spec, request_id=request.request_id)
        return pb.CreateAugmentDatasetJobResponse(augment_dataset_job=job_convert.job_to_proto(record))

    async def GetAugmentDatasetJob(self, request: pb.GetAugmentDatasetJobRequest, context: grpc.aio.ServicerContext) -> pb.GetAugmentDatasetJobResponse:
        runner = self._runner_or_refuse()
        record = await asyncio.to_thread(runner.store.get, KIND, self._job_id(request.name))
        return pb.GetAugmentDatasetJobResponse(augment_dataset_job=job_convert.job_to_proto(record))

    async def ListAugmentDatasetJobs(self, request: pb.ListAugmentDatasetJobsRequest, context: grpc.aio.ServicerContext) -> pb.ListAugmentDatasetJobsResponse:
        runner = self._runner_or_refuse()
        state = "" if request.state == 0 else common_pb2.JobState.Name(request.state) if request.state in common_pb2.JobState.values() else None
        if state is None:
            raise _invalid("PARAM_OUT_OF_RANGE", "state", f"unknown job state {request.state}")
        page = pagination.PageRequest.parse(request.page_size, request.page_token, pagination.fingerprint(rpc="ListAugmentDatasetJobs", state=state))
        after = tuple(page.cursor) if page.cursor else None
        rows = await asyncio.to_thread(runner.store.list, KIND, states=[state] if state else None, after=after, limit=page.size + 1)
        records, token = page.finish(rows, lambda r: [r.create_time, r.job_id])
        return pb.ListAugmentDatasetJobsResponse(augment_dataset_jobs=[job_convert.job_to_proto(r) for r in records], next_page_token=token)

    async def CancelAugmentDatasetJob(self, request: pb.CancelAugmentDatasetJobRequest, context: grpc.aio.ServicerContext) -> pb.CancelAugmentDatasetJobResponse:
        runner = self._runner_or_refuse()
        record = await runner.cancel(KIND, self._job_id(request.name))
        return pb.CancelAugmentDatasetJobResponse(augment_dataset_job=job_convert.job_to_proto(record))

    async def WatchAugmentDatasetJob(self, request: pb.WatchAugmentDatasetJobRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.WatchAugmentDatasetJobResponse]:
        runner = self._runner_or_refuse()
        async for record in runner.watch(KIND, self._job_id(request.name)):
            yield pb.WatchAugmentDatasetJobResponse(augment_dataset_job=job_convert.job_to_proto(record))
