"""``cvm serve --workers K``: K serving processes on one port (SO_REUSEPORT).

They share the decision log, and a hot reload sent to any of them reaches all through it
(each follows the log's newest activation). The parent records the starting activation once,
serves ``--metrics-port`` for all workers (prometheus_client's multiprocess mode, see
:mod:`server.metrics`), forwards SIGTERM/SIGINT and waits.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from pathlib import Path

import grpc

from cvm_rl.logs.store import DecisionLog
from server.app import load_serving_model, serve
from server.client import DecisionClient
from server.config import ServerConfig
from server.jsonlog import configure_logging
from server.metrics import (
    MULTIPROC_ENV,
    mark_worker_dead,
    multiprocess_dir,
    remove_multiprocess_dir,
    serve_multiprocess_metrics,
)
from server.state import record_activation


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound (not listening) SO_REUSEPORT socket: fixes the port that K workers share."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def write_ready_file(path: str | Path, port: int, pids: list[int]) -> None:
    """``{port, pids}`` as JSON at ``path``, replaced atomically (a poller never reads half)."""
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
        with DecisionLog(config.log_path, synchronous=config.synchronous.value) as decision_log:
            record_activation(decision_log, model, "start")
    reserved = reserve_port(host, port)
    bound = reserved.getsockname()[1]
    address = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
    metrics: tuple[Path, bool] | None = None
    if config.metrics_port is not None:
        metrics = multiprocess_dir()
    ctx = multiprocessing.get_context("spawn")
    procs = []
    worker_config = config.replace(reuse_port=True, adopt_latest=True, metrics_port=None)
    previous_env = os.environ.get(MULTIPROC_ENV)
    if metrics is not None:  # the spawned workers inherit it: multiprocess mode
        os.environ[MULTIPROC_ENV] = str(metrics[0])
    try:
        for _ in range(workers):
            proc = ctx.Process(target=_worker_main, args=(address, worker_config), daemon=False)
            proc.start()
            procs.append(proc)
    finally:
        if previous_env is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous_env
    reserved.close()
    if metrics is not None:
        assert config.metrics_port is not None
        serve_multiprocess_metrics(config.metrics_port, metrics[0])
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
        if metrics is not None and p.pid is not None:
            mark_worker_dead(p.pid, metrics[0])
    if metrics is not None and metrics[1]:
        remove_multiprocess_dir(metrics[0])
    return max((p.exitcode or 0) for p in procs)


def _wait_until_serving(address: str, config: ServerConfig, timeout_s: float = 60.0) -> None:
    """Block until the health service on ``address`` answers SERVING."""
    with DecisionClient(address, root_certificates=config.tls_cert, timeout_s=timeout_s) as client:
        grpc.channel_ready_future(client.channel).result(timeout=timeout_s)
        status = client.health()
    if status != "SERVING":
        raise RuntimeError(f"the workers on {address} answered health {status}, not SERVING")
