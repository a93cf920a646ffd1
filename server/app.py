"""Building and running one decision server: ``create_server``, TLS, health, shutdown.

``create_server(address, config)`` returns the (not yet started) server and its bound port, so
tests bind ``127.0.0.1:0``. ``serve(config)`` runs one process until SIGTERM/SIGINT:
health goes NOT_SERVING, in-flight calls get ``grace`` seconds to finish, the log is closed.
``running_server`` runs one on a thread for the length of a ``with`` block.
:mod:`server.workers` runs K such processes on one port.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as reflection_pb

from cvm_rl.bundle import BundleError, load_bundle
from cvm_rl.logs.store import DecisionLog
from server.blas import single_threaded_blas
from server.config import ServerConfig
from server.generated.cvm.v1 import decision_pb2 as pb
from server.generated.cvm.v1 import decision_pb2_grpc as pb_grpc
from server.interceptors import (
    HEALTH_SERVICE,
    BearerTokenInterceptor,
    MetricsInterceptor,
    RequestParsingInterceptor,
)
from server.metrics import ServerMetrics
from server.model import ServingModel
from server.servicers import AdminService, DecisionService
from server.state import ServingState

log = logging.getLogger("cvm_rl.server")

DECISION_SERVICE = pb.DESCRIPTOR.services_by_name["DecisionService"].full_name
ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["DecisionAdmin"].full_name
FOLLOW_INTERVAL_S = 0.5
# WAL checkpoints run on a background thread this often, never inside a request's commit.
CHECKPOINT_INTERVAL_S = 0.5
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def enable_reflection(services: list[str], server: grpc.aio.Server) -> None:
    """Server reflection as ``grpc.reflection.v1`` (what current grpcurl, Java and Go
    clients ask first) and ``v1alpha`` (older ones). grpcio-reflection implements v1alpha
    only; v1 is the same protocol under a new package (the same messages, field for field,
    so the same bytes), so one servicer answers both."""
    servicer = reflection.aio.ReflectionServicer(
        [*services, reflection.SERVICE_NAME, REFLECTION_V1]
    )
    handlers = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb.ServerReflectionResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(name, handlers)
            for name in (reflection.SERVICE_NAME, REFLECTION_V1)
        ]
    )


class DecisionServer:
    """A configured ``grpc.aio.Server`` with its serving state, health and metrics."""

    def __init__(
        self, server: grpc.aio.Server, state: ServingState, health: health.aio.HealthServicer
    ) -> None:
        self.server = server
        self.state = state
        self.health = health
        self._follow_task: asyncio.Task[None] | None = None

    @property
    def metrics(self) -> ServerMetrics:
        return self.state.metrics

    async def start(self) -> None:
        await self.server.start()
        for service in ("", DECISION_SERVICE, ADMIN_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if self.state.log is not None:
            self._follow_task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(FOLLOW_INTERVAL_S)
            try:
                async with self.state.reload_lock:
                    await loop.run_in_executor(None, self.state.follow)
            except Exception:
                log.exception("follow_failed")

    async def stop(self, grace: float | None) -> None:
        """Health NOT_SERVING, then stop taking calls and let in-flight ones finish within
        ``grace`` seconds; then flush and close the log."""
        await self.health.enter_graceful_shutdown()
        if self._follow_task is not None:
            self._follow_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow_task
        await self.server.stop(grace)
        self.state.close()

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


def load_serving_model(config: ServerConfig) -> ServingModel:
    """The bundle as a validated serving model (ValueError naming the bundle when refused)."""
    try:
        return ServingModel(load_bundle(config.bundle), config.exploration)
    except BundleError as exc:
        raise ValueError(str(exc)) from None


def create_server(
    address: str,
    config: ServerConfig,
    extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[DecisionServer, int]:
    """Build the server on ``address`` (``host:0`` picks a free port); returns it unstarted
    with the bound port. Must be called inside a running event loop. ``extra_interceptors``
    run after the server's own, next to the handlers (tests: fault injection)."""
    model = load_serving_model(config)
    decision_log = (
        None
        if config.log_path is None
        else DecisionLog(
            config.log_path,
            synchronous=config.synchronous.value,
            checkpoint_interval_s=CHECKPOINT_INTERVAL_S,
        )
    )
    adopt = None
    if config.adopt_latest and decision_log is not None:
        acts = decision_log.activations()
        adopt = acts[-1] if acts and acts[-1].model_id == model.model_id else None
    state = ServingState(
        model,
        decision_log,
        ServerMetrics(),
        max_batch_rows=config.max_batch_rows,
        log_probabilities=config.log_probabilities,
        adopt=adopt,
        bundle_root=config.loadable_root if config.admin else None,
    )
    # Metrics first, so that calls refused for want of a token or for bytes that do not parse
    # are counted too; parsing last, so that a caller without the token is told that first.
    interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor(state.metrics)]
    if config.auth_token is not None:
        interceptors.append(BearerTokenInterceptor(config.auth_token))
    interceptors.append(RequestParsingInterceptor())
    interceptors.extend(extra_interceptors)
    options = [
        # A request over the receive limit is refused by the transport, RESOURCE_EXHAUSTED.
        ("grpc.max_receive_message_length", config.max_receive_bytes),
        ("grpc.max_send_message_length", config.max_send_bytes),
        ("grpc.so_reuseport", 1 if config.reuse_port else 0),
    ]
    server = grpc.aio.server(interceptors=interceptors, options=options)
    pb_grpc.add_DecisionServiceServicer_to_server(DecisionService(state), server)
    services = [DECISION_SERVICE, HEALTH_SERVICE]
    if config.admin:
        pb_grpc.add_DecisionAdminServicer_to_server(AdminService(state), server)
        services.append(ADMIN_SERVICE)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(services, server)
    if config.tls_cert is not None and config.tls_key is not None:
        credentials = grpc.ssl_server_credentials(
            [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())]
        )
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if config.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(config.metrics_port, addr="127.0.0.1", registry=state.metrics.registry)
    return DecisionServer(server, state, health_servicer), port


async def serve(
    address: str, config: ServerConfig, *, ready: Callable[[int], None] | None = None
) -> None:
    """Run one serving process until SIGTERM or SIGINT, then shut down gracefully."""
    single_threaded_blas()
    server, port = create_server(address, config)
    await server.start()
    model = server.state.current
    log.info(
        "server_started",
        extra={
            "address": address,
            "port": port,
            "model_id": model.model_id,
            "exploration": model.exploration.model_dump(mode="json"),
            "log": None if config.log_path is None else str(config.log_path),
            "auth": config.auth_token is not None,
            "tls": config.tls_cert is not None,
        },
    )
    if ready is not None:
        ready(port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("server_stopping", extra={"grace_s": config.grace_s})
    await server.stop(config.grace_s)
    log.info("server_stopped")


@contextlib.contextmanager
def running_server(
    config: ServerConfig,
    address: str = "127.0.0.1:0",
    extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> Iterator[tuple[DecisionServer, int]]:
    """Run a server on its own event-loop thread for the duration of a ``with`` block
    (tests, notebooks, the demo); stopped with ``config.grace_s`` on exit."""
    loop = asyncio.new_event_loop()
    # A thread-safe future: set from the loop's thread, waited on from this one.
    started: concurrent.futures.Future[tuple[DecisionServer, int]] = concurrent.futures.Future()
    stop_requested = asyncio.Event()

    async def main() -> None:
        try:
            server, port = create_server(address, config, extra_interceptors)
            await server.start()
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result((server, port))
        await stop_requested.wait()
        await server.stop(config.grace_s)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        server, port = started.result(timeout=60)
    except BaseException:
        thread.join(timeout=60)
        loop.close()
        raise
    try:
        yield server, port
    finally:
        loop.call_soon_threadsafe(stop_requested.set)
        thread.join(timeout=60)
        loop.close()
