"""Server interceptors: request metrics for every RPC, bearer-token auth, and the refusal of
request bytes that do not parse.

The metrics interceptor goes first, so that calls the others refuse are counted too (as
UNAUTHENTICATED or INVALID_ARGUMENT); the parsing one goes last, so that a caller without
the token is told so whatever it sent.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from server.metrics import ServerMetrics

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without ``authorization: Bearer <token>`` (UNAUTHENTICATED).

    Health checks stay open so that orchestrators can probe without the secret."""

    def __init__(self, token: str, open_services: tuple[str, ...] = (HEALTH_SERVICE,)) -> None:
        self._expected = token.encode()
        self._open = tuple(f"/{s}/" for s in open_services)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(self._open):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization", "")
        given_bytes = given.encode() if isinstance(given, str) else bytes(given)
        # The scheme is case-insensitive (RFC 7235 section 2.1): "bearer" is "Bearer".
        scheme, _, credentials = given_bytes.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(
            credentials.lstrip(b" "), self._expected
        ):
            return handler
        return _refusal(handler, "missing or invalid bearer token (metadata 'authorization')")


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that aborts with UNAUTHENTICATED."""

    async def abort_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def abort_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    return _same_shape(handler, abort_unary, abort_stream)


class _Unparsable:
    """What a request deserializer returns, instead of raising, for bytes that do not parse."""


_UNPARSABLE = _Unparsable()


class RequestParsingInterceptor(grpc.aio.ServerInterceptor):
    """Answers request bytes that do not parse as the method's message INVALID_ARGUMENT with
    a plain message (grpc itself would answer UNKNOWN, naming a Python exception), through
    the interceptors before it, so that they count it. Unary requests only: a streamed
    request (reflection) is left to grpc."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None or handler.request_streaming:
            return handler
        path = handler_call_details.method
        cached = self._wrapped.get(path)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _parse_checked(handler, path)
        self._wrapped[path] = (handler, wrapped)
        return wrapped


def _parse_checked(handler: grpc.RpcMethodHandler, path: str) -> grpc.RpcMethodHandler:
    """``handler`` with a deserializer that returns :data:`_UNPARSABLE` on bad bytes, and a
    behavior that refuses it."""
    parse = handler.request_deserializer
    behavior = handler.unary_unary or handler.unary_stream
    message = f"request: the bytes are not a valid request message of {path}"

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:
            return _UNPARSABLE

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request is _UNPARSABLE:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        return await behavior(request, context)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request is _UNPARSABLE:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        async for response in behavior(request, context):
            yield response

    # A streaming handler that writes through the context (health's Watch) is awaited.
    streams = handler.unary_stream is not None and inspect.isasyncgenfunction(behavior)
    return _same_shape(handler, unary, stream if streams else unary, deserialize)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every call by method and status code and observes its latency (from the
    request to the end of the response, inside the server)."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        # The wrapped handler per method, while the wrapped one stays the same (a server's
        # handlers do; a refusal is made per call): wrapping costs more than the lookup.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        path = handler_call_details.method
        cached = self._wrapped.get(path)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, path.rpartition("/")[2])
        self._wrapped[path] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        behavior = (
            handler.unary_unary
            or handler.unary_stream
            or handler.stream_unary
            or handler.stream_stream
        )
        requests = self.metrics.requests
        latency = self.metrics.latency.labels(method)
        # The counter of each status code, looked up once (labels() takes a lock and builds
        # a key on every call).
        counters: dict[grpc.StatusCode, Any] = {}

        def observe(start: float, code: grpc.StatusCode) -> None:
            counter = counters.get(code)
            if counter is None:
                counter = counters[code] = requests.labels(method, code.name)
            counter.inc()
            latency.observe(time.perf_counter() - start)

        async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                response = await behavior(request, context)
                code = _status(context, grpc.StatusCode.OK)
                return response
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = _status(context, grpc.StatusCode.UNKNOWN)
                raise
            finally:
                observe(start, code)

        async def stream_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                responses: AsyncIterator[Any] = behavior(request, context)
                async for response in responses:
                    yield response
                code = _status(context, grpc.StatusCode.OK)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = _status(context, grpc.StatusCode.UNKNOWN)
                raise
            finally:
                observe(start, code)

        # A streaming handler is either an async generator or a coroutine that writes
        # through the context (the health service's Watch); the latter is awaited as is.
        streams = handler.unary_stream or handler.stream_stream
        if streams is not None and not inspect.isasyncgenfunction(streams):
            return _same_shape(handler, unary_response, unary_response)
        return _same_shape(handler, unary_response, stream_response)


def _status(context: grpc.aio.ServicerContext, default: grpc.StatusCode) -> grpc.StatusCode:
    """The status the call ends with: the one it aborted with or set, else ``default``."""
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else default


def _same_shape(
    handler: grpc.RpcMethodHandler,
    unary_response: Callable[..., Any],
    stream_response: Callable[..., Any],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind and (de)serializers (or ``request_deserializer``),
    behaving as one of the two."""
    kw = {
        "request_deserializer": request_deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary_response, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream_response, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary_response, **kw)
    return grpc.stream_stream_rpc_method_handler(stream_response, **kw)
