"""Prometheus metrics of one serving process (its own registry, so servers don't share)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

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
        )

    def set_model(
        self, model_id: str, model_version: str, exploration: str, learning_mode: str
    ) -> None:
        self.model.clear()
        self.model.labels(model_id, model_version, exploration, learning_mode).set(1)

    def count_decisions(self, source: str, explored: int, total: int) -> None:
        if explored:
            self.decisions.labels(source, "true").inc(explored)
        if total - explored:
            self.decisions.labels(source, "false").inc(total - explored)

    def text(self) -> str:
        """The exposition format, as a scrape would return it."""
        return generate_latest(self.registry).decode()
