"""Prometheus metrics of one serving process (its own registry, so servers don't share), and
the one scrape target of ``cvm serve --workers K``.

With several workers, prometheus_client's multiprocess mode is on: the parent points
``PROMETHEUS_MULTIPROC_DIR`` of the workers at one directory (:func:`multiprocess_dir`,
emptied at start), each worker's metrics live in memory-mapped files there, and the parent
alone serves ``--metrics-port`` (:func:`serve_multiprocess_metrics`), summing counters and
histograms over the workers, dead ones included (a counter never goes back). The model gauge
is per live worker (``multiprocess_mode="liveall"``: a ``pid`` label); a worker that exits is
marked dead (``mark_process_dead``) and its gauge series disappear.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Where prometheus_client's multiprocess mode keeps each process's metric files."""

# The *_created series double the exposition for no use here.
disable_created_metrics()

# Request latency buckets in seconds: sub-millisecond resolution where unary calls land.
LATENCY_BUCKETS = (
    0.00025,
    0.0005,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)


class ServerMetrics:
    """Requests by method and status code, latency, decisions by source and exploration,
    outcomes, model reloads, and the active model (an info gauge set to 1)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cvm_requests",
            "RPCs handled, by method and gRPC status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cvm_request_duration_seconds",
            "Time from request to response inside the server, by method",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "cvm_decisions",
            "Decisions served, by source (policy or baseline) and whether the policy explored",
            ["source", "explored"],
            registry=self.registry,
        )
        self.outcomes = Counter(
            "cvm_outcomes",
            "Outcome reports, by result (recorded or duplicate)",
            ["result"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "cvm_model_reloads",
            "Bundle activations, by reason (load, rollback, follow) and result (ok, refused)",
            ["reason", "result"],
            registry=self.registry,
        )
        self.model = Gauge(
            "cvm_model_info",
            "The active model (value 1) with its id, version and exploration settings",
            ["model_id", "model_version", "exploration", "learning_mode"],
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self._model_labels: tuple[str, str, str, str] | None = None
        self._decision_counters: dict[tuple[str, str], Any] = {}

    def set_model(
        self, model_id: str, model_version: str, exploration: str, learning_mode: str
    ) -> None:
        labels = (model_id, model_version, exploration, learning_mode)
        previous, self._model_labels = self._model_labels, labels
        if MULTIPROC_ENV in os.environ:
            # A series cannot be removed from the files: the model left shows 0.
            if previous is not None and previous != labels:
                self.model.labels(*previous).set(0)
        else:
            self.model.clear()
        self.model.labels(*labels).set(1)

    def count_decisions(self, source: str, explored: int, total: int) -> None:
        if explored:
            self._decisions(source, "true").inc(explored)
        if total - explored:
            self._decisions(source, "false").inc(total - explored)

    def _decisions(self, source: str, explored: str) -> Any:
        """The decisions counter of these labels, looked up once per pair."""
        key = (source, explored)
        counter = self._decision_counters.get(key)
        if counter is None:
            counter = self._decision_counters[key] = self.decisions.labels(source, explored)
        return counter

    def text(self) -> str:
        """The exposition format, as a scrape would return it."""
        return generate_latest(self.registry).decode()


def multiprocess_dir() -> tuple[Path, bool]:
    """The directory for the workers' metric files: ``$PROMETHEUS_MULTIPROC_DIR`` when set
    (emptied of earlier runs' ``*.db`` files), else a new temporary one; and whether it was
    created here (then :func:`remove_multiprocess_dir` removes it)."""
    given = os.environ.get(MULTIPROC_ENV)
    if not given:
        return Path(tempfile.mkdtemp(prefix="cvm-metrics-")), True
    path = Path(given)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    return path, False


def serve_multiprocess_metrics(port: int, directory: Path) -> int:
    """Serve ``/metrics`` on 127.0.0.1:``port`` summed over the processes writing to
    ``directory``; returns the port bound (``port`` 0 picks one)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    return int(server.server_port)


def mark_worker_dead(pid: int, directory: Path) -> None:
    """Drop an exited worker's live gauges (its counters keep counting in the sums)."""
    mark_process_dead(pid, str(directory))


def remove_multiprocess_dir(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
