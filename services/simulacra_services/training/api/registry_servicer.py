"""ModelRegistryService over core.registry: validate, call the registry in a thread, convert."""

from __future__ import annotations

import asyncio
from typing import Any

from simulacra_client.api.training.v1 import model_registry_service_pb2 as rpc
from simulacra_client.api.training.v1 import model_registry_service_pb2_grpc as rpc_grpc
from simulacra_services.core import errors
from simulacra_services.core.api import pagination
from simulacra_services.core.api.enums import known_enum
from simulacra_services.core.registry import (
    AttributeSpec,
    GeneratorSignature,
    ModelRegistry,
    check_model_id,
    parse_model_name,
    parse_model_version_name,
)
from simulacra_services.core.storage import ObjectStore
from simulacra_services.training.api import convert
from simulacra_services.training.export.isolated import SignatureMismatch, inspect_isolated

CHUNK_BYTES = 1024 * 1024
MAX_DESCRIPTION_CHARS = 4096


class ModelRegistryServicer(rpc_grpc.ModelRegistryServiceServicer):
    def __init__(self, registry: ModelRegistry, objects: ObjectStore) -> None:
        self.registry = registry
        self.objects = objects

    async def _call(self, method, *args, **kwargs):
        return await asyncio.to_thread(method, *args, **kwargs)

    async def CreateModel(self, request: rpc.CreateModelRequest, context: Any) -> rpc.CreateModelResponse:
        check_model_id(request.model_id)
        if request.model.aliases:
            raise errors.InvalidArgument("ALIASES_NOT_ALLOWED", "model.aliases: set aliases with SetModelAlias", {"field": "model.aliases"})
        if len(request.model.description) > MAX_DESCRIPTION_CHARS:
            raise errors.InvalidArgument("INVALID_DESCRIPTION", f"model.description: at most {MAX_DESCRIPTION_CHARS} characters",
                                         {"field": "model.description"})
        record = await self._call(self.registry.create_model, request.model_id, request.model.description, dict(request.model.tags))
        return rpc.CreateModelResponse(model=convert.model(record))

    async def GetModel(self, request: rpc.GetModelRequest, context: Any) -> rpc.GetModelResponse:
        return rpc.GetModelResponse(model=convert.model(await self._call(self.registry.get_model, parse_model_name(request.name))))

    async def ListModels(self, request: rpc.ListModelsRequest, context: Any) -> rpc.ListModelsResponse:
        tags = dict(request.tags)
        fingerprint = pagination.fingerprint(rpc="ListModels", tags=sorted(tags.items()))
        page = pagination.PageRequest.parse(request.page_size, request.page_token, fingerprint, validate=pagination.is_str)
        after, found = page.cursor or "", []
        while len(found) <= page.size:
            batch = await self._call(self.registry.list_models, after=after, limit=page.size + 1)
            found += [m for m in batch if all(m.tags.get(k) == v for k, v in tags.items())]
            if len(batch) < page.size + 1:
                break
            after = batch[-1].model
        models, token = page.finish(found, lambda m: m.model)
        return rpc.ListModelsResponse(models=[convert.model(m) for m in models], next_page_token=token)

    async def DeleteModel(self, request: rpc.DeleteModelRequest, context: Any) -> rpc.DeleteModelResponse:
        await self._call(self.registry.delete_model, parse_model_name(request.name), force=request.force)
        return rpc.DeleteModelResponse()

    async def _resolve(self, name: str):
        model, ref = parse_model_version_name(name)
        record = await self._call(self.registry.resolve, model, ref)
        return record, await self._call(self.registry.get_model, model)

    async def GetModelVersion(self, request: rpc.GetModelVersionRequest, context: Any) -> rpc.GetModelVersionResponse:
        record, model = await self._resolve(request.name)
        return rpc.GetModelVersionResponse(model_version=convert.model_version(record, dict(model.aliases)))

    async def ListModelVersions(self, request: rpc.ListModelVersionsRequest, context: Any) -> rpc.ListModelVersionsResponse:
        model_id = parse_model_name(request.parent)
        fingerprint = pagination.fingerprint(rpc="ListModelVersions", parent=request.parent)
        page = pagination.PageRequest.parse(request.page_size, request.page_token, fingerprint, validate=pagination.is_int)
        model = await self._call(self.registry.get_model, model_id)
        rows = await self._call(self.registry.list_versions, model_id, after_version=page.cursor, limit=page.size + 1)
        versions, token = page.finish(rows, lambda v: v.version)
        return rpc.ListModelVersionsResponse(
            model_versions=[convert.model_version(v, dict(model.aliases)) for v in versions], next_page_token=token
        )

    async def SetModelAlias(self, request: rpc.SetModelAliasRequest, context: Any) -> rpc.SetModelAliasResponse:
        record = await self._call(self.registry.set_alias, parse_model_name(request.model),
                                  request.alias, request.version, request.etag)
        return rpc.SetModelAliasResponse(model=convert.model(record))

    async def DeleteModelAlias(self, request: rpc.DeleteModelAliasRequest, context: Any) -> rpc.DeleteModelAliasResponse:
        record = await self._call(self.registry.delete_alias, parse_model_name(request.model), request.alias, request.etag)
        return rpc.DeleteModelAliasResponse(model=convert.model(record))

    async def DeleteModelVersion(self, request: rpc.DeleteModelVersionRequest, context: Any) -> rpc.DeleteModelVersionResponse:
        model, ref = parse_model_version_name(request.name)
        if not ref.isdigit():
            raise errors.InvalidArgument("INVALID_NAME", "name: delete a version by its number, not an alias",
                                         {"field": "name", "name": request.name})
        await self._call(self.registry.delete_version, model, int(ref))
        return rpc.DeleteModelVersionResponse()

    async def ImportModelVersion(self, request: rpc.ImportModelVersionRequest, context: Any) -> rpc.ImportModelVersionResponse:
        model = parse_model_name(request.model)
        if request.category_ids and len(request.category_ids) != len(request.class_names):
            raise errors.InvalidArgument("INVALID_CATEGORY_IDS", "category_ids: one per class name, or none",
                                         {"field": "category_ids"})
        try:
            found = await inspect_isolated(request.onnx, len(request.class_names))
        except SignatureMismatch as error:
            raise errors.InvalidArgument("ONNX_SIGNATURE_MISMATCH", str(error), {"field": "onnx"}) from None
        if len(request.attributes) != found.attribute_count or any(not a.values for a in request.attributes):
            raise errors.InvalidArgument(
                "ONNX_SIGNATURE_MISMATCH",
                f"attributes: the file takes {found.attribute_count} attribute column(s); give that many, each with its values",
                {"field": "attributes"},
            )
        signature = GeneratorSignature(
            latent_dim=found.latent_dim, channels=found.channels, height=found.height, width=found.width,
            num_classes=len(request.class_names), class_names=tuple(request.class_names),
            category_ids=tuple(request.category_ids), onnx_opset=found.opset,
            attributes=tuple(AttributeSpec(a.name, tuple(a.values)) for a in request.attributes),
        )
        record = await self._call(self.registry.register_version, model, request.onnx, signature, model_kind="imported",
                                  provenance={"imported": True}, tags=dict(request.tags))
        aliases = dict((await self._call(self.registry.get_model, model)).aliases)
        return rpc.ImportModelVersionResponse(model_version=convert.model_version(record, aliases))

    async def ReadModelVersionFile(self, request: rpc.ReadModelVersionFileRequest, context: Any):
        known_enum(request.file, rpc.ModelVersionFile, "file")
        record, _ = await self._resolve(request.name)
        if request.file == rpc.MODEL_VERSION_FILE_REPORT_PNG:
            if not record.report_png_key:
                raise errors.NotFound("REPORT_NOT_FOUND", f"{record.name} has no report picture", {"name": record.name})
            data = await self._call(self.objects.get, record.report_png_key)
        else:
            data = await self._call(self.registry.read_onnx, record)
        for start in range(0, len(data), CHUNK_BYTES):
            yield rpc.ReadModelVersionFileResponse(chunk=data[start : start + CHUNK_BYTES])
