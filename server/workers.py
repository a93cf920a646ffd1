"""``cvm serve --workers K``: K serving processes on one port (SO_REUSEPORT).

They share the decision log, and a hot reload sent to any of them reaches all through it
(each follows the log's newest activation). The parent records the starting activation once,
then only forwards SIGTERM/SIGINT and waits.
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
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for i in range(workers):
        worker_config = config.replace(
            reuse_port=True,
            adopt_latest=True,
            metrics_port=None if config.metrics_port is None else config.metrics_port + i,
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
