"""Look up the compiled contracts: proto services and their methods, by package.

The generated modules of ``simulacra_client.api`` register their descriptors in
protobuf's default pool on import; this module imports them and answers
questions about them without naming generated files one by one.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from simulacra_services.core import errors
from simulacra_services.core.config import TITLES, Settings

if TYPE_CHECKING:
    from simulacra_services.core.server import ServiceDefinition


def services_of(api_package: str) -> tuple[ServiceDescriptor, ...]:
    """Every proto service of package ``simulacra.<api_package>.v1``, in file-name order.

    Importing each generated ``*_pb2`` module registers its file; its descriptor lists the services.
    """
    package = importlib.import_module(f"simulacra_client.api.{api_package}.v1")
    found: list[ServiceDescriptor] = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            found.extend(module.DESCRIPTOR.services_by_name.values())
    return tuple(found)


def unimplemented_handler(service: ServiceDescriptor, title: str) -> grpc.GenericRpcHandler:
    """A handler that answers every RPC of ``service`` with UNIMPLEMENTED and a clear message.

    Stands in for a service whose domain layer has not landed yet, so that the
    server still offers health, reflection and metrics, and clients get a
    precise status instead of a missing-method error.
    """
    handlers = {m.name: _unimplemented_method(service, m, title) for m in service.methods}
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _unimplemented_method(service: ServiceDescriptor, method: MethodDescriptor, title: str) -> grpc.RpcMethodHandler:
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)

    def refuse() -> errors.SimulacraError:
        return errors.Unimplemented(
            "NOT_YET_IMPLEMENTED",
            f"{title} does not implement {service.name}.{method.name} yet; "
            "this build serves health, reflection and metrics only for it",
            {"service": service.full_name, "method": method.name},
        )

    async def unary_response(request: object, context: grpc.aio.ServicerContext) -> object:
        raise refuse()

    async def stream_response(request: object, context: grpc.aio.ServicerContext):  # noqa: ANN202
        raise refuse()
        yield  # pragma: no cover - makes this an async generator

    kinds: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(method.client_streaming, method.server_streaming)]
    behaviour = stream_response if method.server_streaming else unary_response
    return make(
        behaviour,
        request_deserializer=request_class.FromString,
        response_serializer=response_class.SerializeToString,
    )


def placeholder_definition(name: str) -> ServiceDefinition:
    """A service whose every RPC answers UNIMPLEMENTED (health, reflection and metrics work)."""
    from simulacra_services.core.server import ServiceDefinition

    title = TITLES[name]
    services = services_of(name)

    async def register(server: grpc.aio.Server, settings: Settings) -> None:
        server.add_generic_rpc_handlers(tuple(unimplemented_handler(s, title) for s in services))

    return ServiceDefinition(
        name=name,
        title=title,
        error_domain=f"{name}.simulacra.dev",
        service_names=tuple(s.full_name for s in services),
        register=register,
    )
