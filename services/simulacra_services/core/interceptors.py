"""What happens around every RPC of a Simulacra server, for all four kinds of RPC.

One ``grpc.aio.ServerInterceptor`` wraps each method handler so that, in order:

1. the RPC is counted (in-flight gauge, started counter);
2. bearer-token auth is checked when a token is configured
   (``grpc.health.v1.Health`` is exempt so orchestrator probes work;
   reflection is not: it describes the whole API);
3. the servicer runs; a ``SimulacraError`` it raises becomes the status of
   the same name with one ``ErrorInfo``; any other exception becomes INTERNAL
   with a generic message and an error id, its traceback going to the log only;
4. one request-log line and the metrics record how the RPC ended.

A handler may also return or yield a response already serialized (``bytes``):
it is sent as it is. A request message larger than ``LARGE_REQUEST_BYTES`` is
parsed in a worker thread (``message_codec``) rather than by grpc on the event loop (parsing a
batch of large images is a copy of every image).

The wrapper replaces the handler's behaviour rather than using a
continuation-only interceptor because with ``grpc.aio`` that is the only place
where an exception raised by a streaming handler, even after some messages
were sent, can still be turned into a proper status.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

import grpc

from simulacra_services.core.errors import SimulacraError, Unauthenticated
from simulacra_services.core.logging import FIELDS
from simulacra_services.core.message_codec import (
    LARGE_REQUEST_BYTES,
    Deferred,
    Undecodable,
    decoded,
    decoded_stream,
    parsed,
    passing_bytes,
    tolerant,
)
from simulacra_services.core.metrics import RpcMetrics
from simulacra_services.core.status import domain_error_status, error_status

HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"
AUTHORIZATION = "authorization"

_log = logging.getLogger("simulacra.rpc")
_errors_log = logging.getLogger("simulacra.errors")

# Server-side faults: logged at ERROR. Every other code is the caller's business.
_SERVER_FAULTS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})


class _Site:
    """What is the same for every RPC of one method: names, kind, metric children (made once)."""

    __slots__ = ("kind", "method", "method_name", "metrics", "service")

    def __init__(self, method: str, kind: str, metrics: RpcMetrics) -> None:
        self.method = method  # "/package.Service/Method"
        self.kind = kind  # go-grpc-prometheus names: unary, client_stream, server_stream, bidi_stream
        self.service = method.lstrip("/").partition("/")[0]
        self.method_name = method.rpartition("/")[2]
        self.metrics = metrics.method(self.service, self.method_name, kind)


class RpcCall:
    """One RPC as the interceptor sees it, filled in as it runs."""

    __slots__ = ("_peer", "code", "error_id", "reason", "site", "started")

    def __init__(self, site: _Site, context: grpc.aio.ServicerContext) -> None:
        self.site = site
        # The client's address is read now, while the call is alive: read after a stream has
        # ended, grpc.aio's context.peer() crashes the process (SIGSEGV). Only when the request
        # log can write a record at all (its lowest level for failures is ERROR).
        self._peer = (context.peer() or "") if _log.isEnabledFor(logging.ERROR) else ""
        self.started = time.perf_counter()
        self.code = grpc.StatusCode.OK
        self.reason = ""  # ErrorInfo reason, when the server sent one
        self.error_id = ""  # for INTERNAL: the id under which the traceback was logged

    @property
    def method(self) -> str:
        return self.site.method

    @property
    def kind(self) -> str:
        return self.site.kind

    @property
    def service(self) -> str:
        return self.site.service

    @property
    def method_name(self) -> str:
        return self.site.method_name

    @property
    def peer(self) -> str:
        """The client's address, as read when the RPC began ("" when the request log is off)."""
        return self._peer

    def settle(self, exc: BaseException | None, context: grpc.aio.ServicerContext) -> None:
        """Record the final status code, from how the handler ended."""
        if exc is None or isinstance(exc, grpc.aio.AbortError):
            # Both a normal return and context.abort leave the code on the context.
            self.code = _as_status_code(context.code()) or grpc.StatusCode.OK
        elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            self.code = grpc.StatusCode.CANCELLED
        else:
            self.code = grpc.StatusCode.UNKNOWN


def _as_status_code(code: Any) -> grpc.StatusCode | None:
    if code is None or isinstance(code, grpc.StatusCode):
        return code
    # Some grpc versions hand back the numeric code.
    return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)


class BearerTokenAuth:
    """Checks ``authorization: Bearer <token>`` against the configured token."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    @staticmethod
    def exempt(method: str) -> bool:
        return method.startswith(HEALTH_METHOD_PREFIX)

    def refusal(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> SimulacraError | None:
        """None when the metadata carries the right token, else why not."""
        values = [value for key, value in (metadata or ()) if key == AUTHORIZATION]
        where = {"metadata_key": AUTHORIZATION}
        if not values:
            return Unauthenticated(
                "MISSING_TOKEN",
                "this server requires a bearer token: send the metadata 'authorization: Bearer <token>' "
                "(the SDK sends it when given token=..., the simulacra command reads SIMULACRA_AUTH_TOKEN)",
                where,
            )
        scheme, _, credential = str(values[0]).strip().partition(" ")
        if len(values) != 1 or scheme.lower() != "bearer":
            return Unauthenticated("INVALID_TOKEN", "the authorization metadata must be exactly one 'Bearer <token>'", where)
        # Constant-time comparison: response timing must not reveal how much of a guess was right.
        if not hmac.compare_digest(credential.strip().encode(), self._token):
            return Unauthenticated("INVALID_TOKEN", "the bearer token was not accepted", where)
        return None


class ErrorMapper:
    """Turns an exception out of a servicer into the status the client gets."""

    def __init__(self, domain: str, title: str) -> None:
        self._domain = domain
        self._title = title

    def status_for(self, exc: Exception, call: RpcCall) -> grpc.Status:
        if isinstance(exc, SimulacraError):
            call.reason = exc.reason
            return domain_error_status(exc, self._domain)
        if isinstance(exc, NotImplementedError) and _from_generated_base(exc):
            # The generated servicer base classes raise this for RPCs left out.
            # Any other NotImplementedError is a bug (an abstract method
            # called, a branch not written): INTERNAL, its traceback logged.
            call.reason = "NOT_YET_IMPLEMENTED"
            return error_status(
                grpc.StatusCode.UNIMPLEMENTED,
                call.reason,
                f"{self._title} does not implement {call.service}.{call.method_name} yet",
                self._domain,
                {"service": call.service, "method": call.method_name},
            )
        call.reason = "INTERNAL"
        call.error_id = uuid.uuid4().hex[:16]
        _errors_log.error(
            "unhandled exception in %s (error id %s)",
            call.method,
            call.error_id,
            exc_info=exc,
            extra={FIELDS: {"method": call.method, "error_id": call.error_id}},
        )
        # Nothing of the exception reaches the client: its text may hold paths, keys or data.
        return error_status(
            grpc.StatusCode.INTERNAL,
            "INTERNAL",
            f"internal error in {self._title}; its log holds the details under error id {call.error_id}",
            self._domain,
            {"error_id": call.error_id},
        )


def _from_generated_base(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by a ``*_pb2_grpc`` module (a generated servicer base class)."""
    frame = exc.__traceback__
    if frame is None:
        return False
    while frame.tb_next is not None:
        frame = frame.tb_next
    return frame.tb_frame.f_globals.get("__name__", "").endswith("_pb2_grpc")


class RequestLog:
    """One log line per RPC: method, peer, status code, duration, reason."""

    def __init__(self, service: str) -> None:
        self._service = service

    def record(self, call: RpcCall, ended: float | None = None) -> None:
        if call.code in _SERVER_FAULTS:
            level = logging.ERROR
        elif call.method.startswith(HEALTH_METHOD_PREFIX):
            level = logging.DEBUG  # probes every few seconds would drown the rest
        else:
            level = logging.INFO
        if not _log.isEnabledFor(level):
            return  # nothing of the record is built for a level that is filtered out
        duration_ms = round(((time.perf_counter() if ended is None else ended) - call.started) * 1000, 3)
        fields: dict[str, Any] = {
            "service": self._service,
            "method": call.method,
            "peer": call.peer,
            "code": call.code.name,
            "duration_ms": duration_ms,
        }
        if call.reason:
            fields["reason"] = call.reason
        if call.error_id:
            fields["error_id"] = call.error_id
        _log.log(level, "%s %s %.1f ms", call.method, call.code.name, duration_ms, extra={FIELDS: fields})


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Auth, error mapping, request log and metrics around every handler (see the module doc)."""

    def __init__(
        self,
        *,
        errors: ErrorMapper,
        request_log: RequestLog,
        metrics: RpcMetrics,
        auth: BearerTokenAuth | None = None,
    ) -> None:
        self._errors = errors
        self._request_log = request_log
        self._metrics = metrics
        self._auth = auth
        self.in_flight = 0
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: grpc answers UNIMPLEMENTED itself
        method = handler_call_details.method
        # The wrapper of a handler is made once: grpc hands back the same handler object for
        # every RPC of a method (a new object, as a dynamic generic handler may give, is wrapped anew).
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[method] = (handler, self._wrap(handler, method))
        return cached[1]

    # ---- one RPC ------------------------------------------------------------
    def _begin(self, site: _Site, context: grpc.aio.ServicerContext) -> RpcCall:
        call = RpcCall(site, context)
        self.in_flight += 1
        site.metrics.started()
        return call

    def _end(self, call: RpcCall, exc: BaseException | None, context: grpc.aio.ServicerContext) -> None:
        self.in_flight -= 1
        call.settle(exc, context)
        ended = time.perf_counter()
        call.site.metrics.finished(call.code.name, ended - call.started)
        self._request_log.record(call, ended)

    def _authorize(self, call: RpcCall, context: grpc.aio.ServicerContext) -> None:
        """Raise Unauthenticated unless the RPC may go ahead."""
        if self._auth is None or self._auth.exempt(call.method):
            return
        refusal = self._auth.refusal(context.invocation_metadata())
        if refusal is not None:
            raise refusal

    async def _fail(self, exc: Exception, call: RpcCall, context: grpc.aio.ServicerContext) -> None:
        """Abort the RPC with the status ``exc`` maps to (raises AbortError)."""
        if isinstance(exc, grpc.aio.AbortError):
            raise exc  # the handler already chose the status with context.abort
        await context.abort_with_status(self._errors.status_for(exc, call))

    # ---- wrapping each kind of handler ---------------------------------------
    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        kind = _KINDS[(handler.request_streaming, handler.response_streaming)]
        inner = {
            "unary": handler.unary_unary,
            "server_stream": handler.unary_stream,
            "client_stream": handler.stream_unary,
            "bidi_stream": handler.stream_stream,
        }[kind]
        site = _Site(method, kind, self._metrics)
        behaviour = self._streaming(inner, site) if handler.response_streaming else self._unary(inner, site)
        make = {
            "unary": grpc.unary_unary_rpc_method_handler,
            "server_stream": grpc.unary_stream_rpc_method_handler,
            "client_stream": grpc.stream_unary_rpc_method_handler,
            "bidi_stream": grpc.stream_stream_rpc_method_handler,
        }[kind]
        return make(
            behaviour,
            request_deserializer=tolerant(handler.request_deserializer),
            response_serializer=passing_bytes(handler.response_serializer),
        )

    @contextlib.asynccontextmanager
    async def _rpc(self, site: _Site, context: grpc.aio.ServicerContext) -> AsyncIterator[RpcCall]:
        """Auth before the handler, error mapping, log and metrics after it (streaming RPCs;
        ``_unary`` spells out the same steps without a context manager)."""
        call = self._begin(site, context)
        outcome: BaseException | None = None
        try:
            try:
                self._authorize(call, context)
                yield call
            except Exception as exc:
                await self._fail(exc, call, context)
        except BaseException as exc:  # AbortError, or CancelledError when the client went away
            outcome = exc
            raise
        finally:
            self._end(call, outcome, context)

    def _unary(self, inner: Callable[..., Any], site: _Site) -> Callable[..., Awaitable[Any]]:
        kind = site.kind
        coroutine = inspect.iscoroutinefunction(inner)

        async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
            # The steps of _rpc, written out: the generator-based context manager costs a few µs
            # per RPC, which a one-sample Sample call notices.
            call = self._begin(site, context)
            outcome: BaseException | None = None
            try:
                try:
                    self._authorize(call, context)
                    if kind == "client_stream":
                        request = decoded_stream(request)
                    elif isinstance(request, (Deferred, Undecodable)):
                        request = await parsed(request)
                    if coroutine:
                        return await inner(request, context)
                    return await _run_unary(inner, request, context)
                except Exception as exc:
                    await self._fail(exc, call, context)
            except BaseException as exc:  # AbortError, or CancelledError when the client went away
                outcome = exc
                raise
            finally:
                self._end(call, outcome, context)

        return behaviour

    def _streaming(self, inner: Callable[..., Any], site: _Site) -> Callable[..., Any]:
        kind = site.kind
        if inspect.isasyncgenfunction(inner):

            async def generator(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async with self._rpc(site, context):
                    async for response in inner(await decoded(request, kind), context):
                        yield response

            return generator

        # A coroutine that writes with context.write (as grpc's own health Watch
        # does), or a plain function: stay a writer so the two never mix.
        async def writer(request: Any, context: grpc.aio.ServicerContext) -> None:
            async with self._rpc(site, context):
                await _run_writer(inner, await decoded(request, kind), context)

        return writer


_KINDS = {
    (False, False): "unary",
    (False, True): "server_stream",
    (True, False): "client_stream",
    (True, True): "bidi_stream",
}


async def _run_unary(inner: Callable[..., Any], request: Any, context: grpc.aio.ServicerContext) -> Any:
    if inspect.iscoroutinefunction(inner):
        return await inner(request, context)
    # A plain ``def`` (the generated base classes' stubs): keep it off the event loop.
    result = await asyncio.to_thread(inner, request, context)
    return await result if inspect.isawaitable(result) else result


async def _run_writer(inner: Callable[..., Any], request: Any, context: grpc.aio.ServicerContext) -> None:
    if inspect.iscoroutinefunction(inner):
        await inner(request, context)
        return
    result = await asyncio.to_thread(inner, request, context)
    if inspect.isawaitable(result):
        await result
    elif hasattr(result, "__aiter__"):
        async for response in result:
            await context.write(response)
    elif isinstance(result, Iterator):
        done = object()
        while (response := await asyncio.to_thread(next, result, done)) is not done:
            await context.write(response)
