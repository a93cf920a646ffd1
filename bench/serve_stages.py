"""Where a decision's time goes inside the server: the stages of the real handlers, timed.

Prints a table and writes ``bench/results/serve_stages.json``. Run:
``.venv/bin/python -m bench.serve_stages [--calls 4000] [--gap-ms 0.6] [--quick]``.

``DecisionService.Decide`` and ``DecideBatch`` (the servicer ``cvm serve`` runs, with its
parsing, model, log writer and responses) are called in process, on a random-weight MLP
bundle served with its own distribution and a fresh SQLite decision log, with timers around
the stages: parsing the request, the model's decision, building the log's rows
(``PreparedBatch.of``), the SQLite transaction (``insert_decision_batches``), the rest of the
log writer, and the rest of the handler (the response and the metrics). gRPC is not involved:
``bench.serve`` measures the calls end to end.

Unary calls run once back to back and once with an idle gap between calls, as a lone client
leaves one (about a health check's round trip): the same code takes longer after the gap,
its caches cold, and that is what a unary call's latency pays. Batches of ``batch_rows`` run
back to back; their stages are given per decision. Each stage is the median over calls (so
the stages need not add up to the median total), then the median of ``repeats`` runs taken
in turns (the machine is shared; every run is kept in the JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import server.servicers as servicers
from bench.machine import machine_info, write_result
from bench.policies import simulated_batch
from bench.serve import Requests, code_version, random_mlp_bundle
from cvm_rl.bundle import load_bundle
from cvm_rl.logs.records import PreparedBatch
from cvm_rl.logs.schema import ExplorationMode
from cvm_rl.logs.store import DecisionLog
from server.app import CHECKPOINT_INTERVAL_S
from server.config import Exploration
from server.generated.cvm.v1 import decision_pb2 as pb
from server.metrics import ServerMetrics
from server.model import ServingModel
from server.state import ServingState
from simulator.config import load_scenario

STAGES = ("parse", "model", "log rows", "log SQL", "log writer, rest", "handler, rest", "total")


@dataclass
class Args:
    calls: int = 4_000
    warmup: int = 300
    gap_ms: float = 0.6
    batch_rows: int = 256
    batches: int = 400
    repeats: int = 3
    customers: int = 4_096
    weeks: int = 4
    quick: bool = False
    seed: int = 0
    out: str = "bench/results/serve_stages.json"


class _Context:
    """What the handlers ask of a grpc.aio context on a successful call."""

    def time_remaining(self) -> None:
        return None


class StageClock:
    """Timers wrapped around the handler's stages; one row of seconds per call."""

    def __init__(self, state: ServingState) -> None:
        self.rows: list[dict[str, float]] = []
        self._current: dict[str, float] = {}
        writer, log, model = state.writer, state.log, state.current
        assert writer is not None and log is not None
        # Module and class attributes, put back by restore(); the instances' die with them.
        self._originals = (servicers.parse_decide, servicers.parse_batch)
        self._prepare = PreparedBatch.__dict__["of"]  # the classmethod itself
        servicers.parse_decide = self._timed("parse", servicers.parse_decide)  # type: ignore[assignment]
        servicers.parse_batch = self._timed("parse", servicers.parse_batch)  # type: ignore[assignment]
        PreparedBatch.of = self._timed("log rows", PreparedBatch.of)  # type: ignore[method-assign]
        model.decide = self._timed("model", model.decide)  # type: ignore[method-assign]
        writer.insert = self._timed_async("log writer", writer.insert)  # type: ignore[method-assign]
        log.insert_decision_batches = self._timed("log SQL", log.insert_decision_batches)  # type: ignore[method-assign]

    def restore(self) -> None:
        servicers.parse_decide, servicers.parse_batch = self._originals
        PreparedBatch.of = self._prepare  # type: ignore[method-assign]

    def _timed(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._current[stage] = time.perf_counter() - start

        return timed

    def _timed_async(
        self, stage: str, fn: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self._current[stage] = time.perf_counter() - start

        return timed

    async def call(self, handler: Callable[..., Awaitable[Any]], request: Any) -> None:
        self._current = {}
        start = time.perf_counter()
        await handler(request, _Context())
        t = self._current
        t["total"] = time.perf_counter() - start
        t["log writer, rest"] = t["log writer"] - t["log SQL"] - t["log rows"]
        t["handler, rest"] = t["total"] - t["parse"] - t["model"] - t["log writer"]
        self.rows.append(t)


def medians(rows: Sequence[dict[str, float]], per: int) -> dict[str, float]:
    """Median microseconds per stage, divided by ``per`` (rows of a batch)."""
    return {s: float(np.median([r[s] for r in rows])) * 1e6 / per for s in STAGES}


async def measure(args: Args, root: Path) -> dict[str, Any]:
    bundle_path = random_mlp_bundle(root / "bundle", load_scenario("default"), args.seed)
    bundle = load_bundle(bundle_path)
    features = simulated_batch(bundle.scenario, args.customers, args.weeks, args.seed).obs
    requests = Requests(features, args.batch_rows)
    model = ServingModel(bundle, Exploration(mode=ExplorationMode.POLICY))
    log = DecisionLog(root / "decisions.db", checkpoint_interval_s=CHECKPOINT_INTERVAL_S)
    state = ServingState(model, log, ServerMetrics())
    service = servicers.DecisionService(state)
    clock = StageClock(state)
    runs: dict[str, list[dict[str, float]]] = {}
    n = args.warmup + args.calls
    batch_name = f"DecideBatch({args.batch_rows}), packed, per decision"
    made = 0
    try:
        # The measurements take turns, ``repeats`` times: the machine is shared.
        for repeat in range(args.repeats):
            unary_runs = (
                ("Decide, back to back", f"r{repeat}-b2b", 0.0),
                ("Decide, after a gap", f"r{repeat}-gap", 1e-3 * args.gap_ms),
            )
            for name, tag, gap_s in unary_runs:
                unary = [pb.DecideRequest.FromString(r) for r in requests.unary(tag, n)]
                clock.rows = []
                for request in unary:
                    await clock.call(service.Decide, request)
                    if gap_s:
                        time.sleep(gap_s)  # idle, as between a lone client's calls
                runs.setdefault(name, []).append(medians(clock.rows[args.warmup :], 1))
                made += n
            pool = requests.batches(
                f"r{repeat}-batch", args.warmup // 10 + args.batches, packed=True
            )
            clock.rows = []
            for k in range(len(pool)):
                await clock.call(service.DecideBatch, pb.DecideBatchRequest.FromString(pool[k]))
            made += len(pool) * args.batch_rows
            runs.setdefault(batch_name, []).append(
                medians(clock.rows[args.warmup // 10 :], args.batch_rows)
            )
        logged = log.count()
    finally:
        clock.restore()
        log.close()
    if logged != made:
        raise RuntimeError(f"the log holds {logged} decisions, {made} were made")
    results = {
        name: {s: float(np.median([r[s] for r in results])) for s in STAGES}
        for name, results in runs.items()
    }
    return {"stages": results, "runs": runs}


def print_report(result: dict[str, Any]) -> None:
    a = result["args"]
    print(
        f"stages of the real handlers in process, µs: medians over {a['calls']} unary calls "
        f"(gap {a['gap_ms']} ms) and {a['batches']} batches of {a['batch_rows']}, then the "
        f"median of {a['repeats']} runs taken in turns; load average "
        f"{result['machine']['loadavg_1_5_15']}"
    )
    print("| measurement | " + " | ".join(STAGES) + " |")
    print("|---|" + "---:|" * len(STAGES))
    for name, stages in result["stages"].items():
        print(f"| {name} | " + " | ".join(f"{stages[s]:.1f}" for s in STAGES) + " |")


def run(args: Args) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cvm-bench-stages-") as tmp:
        measured = asyncio.run(measure(args, Path(tmp)))
    return {"machine": machine_info(), "code": code_version(), "args": asdict(args), **measured}


def parse_args(argv: Sequence[str] | None = None) -> Args:
    defaults = Args()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=defaults.calls)
    parser.add_argument("--gap-ms", type=float, default=defaults.gap_ms)
    parser.add_argument("--batches", type=int, default=defaults.batches)
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--quick", action="store_true", help="a few calls: a smoke test")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", default=defaults.out)
    ns = parser.parse_args(argv)
    for name in ("calls", "batches", "repeats"):
        if getattr(ns, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(ns, name)}")
    if ns.gap_ms < 0:
        parser.error(f"--gap-ms must be >= 0, got {ns.gap_ms}")
    args = Args(
        calls=ns.calls, gap_ms=ns.gap_ms, batches=ns.batches, repeats=ns.repeats, quick=ns.quick
    )
    args.seed, args.out = ns.seed, ns.out
    if args.quick:
        args.calls, args.warmup, args.batches, args.repeats = 50, 10, 12, 1
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    print_report(result)
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
