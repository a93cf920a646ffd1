"""Building and running the decision server: ``create_server``, auth, TLS, health, shutdown.

``create_server(address, config)`` returns the (not yet started) server and its bound port, so
tests bind ``127.0.0.1:0``. ``serve(config)`` runs one process until SIGTERM/SIGINT:
health goes NOT_SERVING, in-flight calls get ``grace`` seconds to finish, the log is closed.
``cvm serve --workers K`` starts K such processes on one port with SO_REUSEPORT; they share
the decision log, and a hot reload sent to any of them reaches all through it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cvm_rl.bundle import BundleError, load_bundle
from cvm_rl.logs.store import SYNCHRONOUS, DecisionLog
from server.client import DecisionClient
from server.generated.cvm.v1 import decision_pb2 as pb
from server.generated.cvm.v1 import decision_pb2_grpc as pb_grpc
from server.metrics import ServerMetrics
from server.model import Exploration, ServingModel
from server.service import (
    DEFAULT_MAX_BATCH_ROWS,
    AdminService,
    DecisionService,
    ServingState,
    record_activation,
)

log = logging.getLogger("cvm_rl.server")

DECISION_SERVICE = pb.DESCRIPTOR.services_by_name["DecisionService"].full_name
ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["DecisionAdmin"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
FOLLOW_INTERVAL_S = 0.5
# WAL checkpoints run on a background thread this often, never inside a request's commit.
CHECKPOINT_INTERVAL_S = 0.5
# Room for the largest allowed DecideBatch (rows x features floats plus ids) and more.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass
class ServerConfig:
    """Everything a serving process needs; the CLI and the tests build one of these."""

    bundle: str | Path
    log_path: str | Path | None = "cvm-decisions.db"
    exploration: Exploration = field(default_factory=Exploration)
    auth_token: str | None = None
    tls_cert: str | Path | None = None
    tls_key: str | Path | None = None
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS
    # The full distribution per decision (200 bytes at 25 actions); the propensity of the
    # served action is always logged, and the distribution can be recomputed from the logged
    # features with the bundle, so high-volume deployments may turn this off.
    log_probabilities: bool = True
    synchronous: str = "normal"
    admin: bool = True
    metrics_port: int | None = None
    grace_s: float = 5.0
    reuse_port: bool = False
    # Workers after the first adopt the activation the parent recorded instead of adding one.
    adopt_latest: bool = False

    def check(self) -> None:
        if self.synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS}, got {self.synchronous!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.auth_token is not None and not self.auth_token:
            raise ValueError("auth_token must not be empty (omit it to turn auth off)")
        if self.grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {self.grace_s}")


# --------------------------------------------------------------------------- auth
class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without ``authorization: Bearer <token>`` (UNAUTHENTICATED).

    Health checks stay open so that orchestrators can probe without the secret."""

    def __init__(self, token: str, open_services: tuple[str, ...] = (HEALTH_SERVICE,)) -> None:
        self._expected = f"Bearer {token}".encode()
        self._open = tuple(f"/{s}/" for s in open_services)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(self._open):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization", "")
        given_bytes = given.encode() if isinstance(given, str) else bytes(given)
        if hmac.compare_digest(given_bytes, self._expected):
            return handler
        return _refusal(handler, "missing or invalid bearer token (metadata 'authorization')")


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that aborts with UNAUTHENTICATED."""

    async def abort_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def abort_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort_unary, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort_stream, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(abort_unary, **kw)
    return grpc.stream_stream_rpc_method_handler(abort_stream, **kw)


# --------------------------------------------------------------------------- server
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


def create_server(address: str, config: ServerConfig) -> tuple[DecisionServer, int]:
    """Build the server on ``address`` (``host:0`` picks a free port); returns it unstarted
    with the bound port. Must be called inside a running event loop."""
    config.check()
    model = load_serving_model(config)
    decision_log = (
        None
        if config.log_path is None
        else DecisionLog(
            config.log_path,
            synchronous=config.synchronous,  # type: ignore[arg-type]
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
    )
    interceptors = [] if config.auth_token is None else [BearerTokenInterceptor(config.auth_token)]
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 1 if config.reuse_port else 0),
    ]
    server = grpc.aio.server(interceptors=interceptors, options=options)
    pb_grpc.add_DecisionServiceServicer_to_server(DecisionService(state), server)
    services = [DECISION_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME]
    if config.admin:
        pb_grpc.add_DecisionAdminServicer_to_server(AdminService(state), server)
        services.append(ADMIN_SERVICE)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(services, server)
    if config.tls_cert is not None and config.tls_key is not None:
        credentials = grpc.ssl_server_credentials(
            [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())]
        )
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if config.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(config.metrics_port, addr="127.0.0.1", registry=state.metrics.registry)
    return DecisionServer(server, state, health_servicer), port


# --------------------------------------------------------------------------- logging
class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, event, pid and the record's extra fields."""

    _standard: ClassVar[set[str]] = set(vars(logging.makeLogRecord({})))

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "pid": record.process,
        }
        entry.update({k: v for k, v in vars(record).items() if k not in self._standard})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("cvm_rl.server")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


# --------------------------------------------------------------------------- running
async def serve(
    address: str, config: ServerConfig, *, ready: Callable[[int], None] | None = None
) -> None:
    """Run one serving process until SIGTERM or SIGINT, then shut down gracefully."""
    server, port = create_server(address, config)
    await server.start()
    model = server.state.current
    log.info(
        "server_started",
        extra={
            "address": address,
            "port": port,
            "model_id": model.model_id,
            "exploration": asdict(model.exploration),
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


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound (not listening) SO_REUSEPORT socket: fixes the port that K workers share."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def write_ready_file(path: str | Path, port: int, pids: list[int]) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps({"port": port, "pids": pids}))
    tmp.replace(path)


def _worker_main(address: str, config: ServerConfig) -> None:
    configure_logging()
    asyncio.run(serve(address, config))


def run_workers(
    host: str, port: int, config: ServerConfig, workers: int, ready_file: str | Path | None = None
) -> int:
    """Run ``workers`` serving processes on one port; returns when all have exited.

    The parent validates the bundle and records the activation once, reserves the port, then
    forwards SIGTERM/SIGINT to the workers and waits for them."""
    import multiprocessing

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    model = load_serving_model(config)  # refuse a bad bundle before forking anything
    if config.log_path is not None:
        with DecisionLog(config.log_path, synchronous=config.synchronous) as decision_log:  # type: ignore[arg-type]
            record_activation(decision_log, model, "start")
    reserved = reserve_port(host, port)
    bound = reserved.getsockname()[1]
    address = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for i in range(workers):
        worker_config = ServerConfig(
            **{
                **asdict(config),
                "exploration": config.exploration,
                "reuse_port": True,
                "adopt_latest": True,
                "metrics_port": None if config.metrics_port is None else config.metrics_port + i,
            }
        )
        proc = ctx.Process(target=_worker_main, args=(address, worker_config), daemon=False)
        proc.start()
        procs.append(proc)
    reserved.close()
    if ready_file is not None:
        _wait_until_serving(address, config)
        write_ready_file(ready_file, bound, [p.pid for p in procs if p.pid is not None])

    def forward(signum: int, frame: object) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.join()
    return max((p.exitcode or 0) for p in procs)


def _wait_until_serving(address: str, config: ServerConfig, timeout_s: float = 60.0) -> None:
    """Block until the health service on ``address`` answers SERVING."""
    with DecisionClient(address, root_certificates=config.tls_cert, timeout_s=timeout_s) as client:
        grpc.channel_ready_future(client.channel).result(timeout=timeout_s)
        status = client.health()
    if status != "SERVING":
        raise RuntimeError(f"the workers on {address} answered health {status}, not SERVING")


@contextlib.contextmanager
def running_server(
    config: ServerConfig, address: str = "127.0.0.1:0"
) -> Iterator[tuple[DecisionServer, int]]:
    """Run a server on its own event-loop thread for the duration of a ``with`` block
    (tests, notebooks, the demo); stopped with ``config.grace_s`` on exit."""
    loop = asyncio.new_event_loop()
    # A thread-safe future: set from the loop's thread, waited on from this one.
    started: concurrent.futures.Future[tuple[DecisionServer, int]] = concurrent.futures.Future()
    stop_requested = asyncio.Event()

    async def main() -> None:
        try:
            server, port = create_server(address, config)
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
