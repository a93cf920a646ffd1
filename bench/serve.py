"""Decision service latency and throughput: ``cvm serve`` in its own process, driven over gRPC.

Prints a table and writes ``bench/results/serve.json``. Run:
``.venv/bin/python -m bench.serve [--seconds 5] [--workers 1 2] [--bundle DIR] [--quick]``.

The server is ``python -m cvm_rl.cli serve`` started as a subprocess on ``127.0.0.1`` port 0
(one per configuration, stopped with SIGTERM); this process is the load generator, so server
and client never share an interpreter. Each configuration runs once with the SQLite decision
log on (a fresh file in a temporary directory) and once with ``--no-log``:

1. ``Decide`` at concurrency 1 (``--workers 1`` only): latency over ``latency_calls`` blocking
   calls after ``latency_warmup`` warm-up calls; beside it, on the same channel, as many
   ``grpc.health.v1.Health/Check`` calls, in alternating blocks of ``HEALTH_BLOCK`` calls
   (so that both see the same state of a shared machine). The ratio of the two medians is the
   serving cost of a decision against the cost of a gRPC round trip through the same server
   (interceptors included); it is reported with logging on and off.
2. ``Decide`` at concurrency ``concurrency``: ``grpc.aio`` tasks on one connection per server
   worker; decisions per second and per-call latency over ``seconds`` after ``warmup_s``.
3. ``DecideBatch`` of ``batch_rows`` customers with ``batch_in_flight`` calls in flight, on
   the same connections; decisions per second and per-batch latency.

Every decision has its own event id, so each is decided and logged (none is an idempotent
replay). Features are simulated customers after a few weeks of random contact. Requests are
serialized before the timed loops and sent as bytes (``request_serializer=None``), so the
client spends its CPU on gRPC only; one response per measurement is parsed and checked.
With ``--workers K`` the kernel spreads connections over the workers (SO_REUSEPORT), so the
client opens connections until each worker holds the same number (it reads ``/proc`` to see
which worker accepted each one). After a logging-on configuration the log must hold exactly
the decisions made. The default bundle is a random-weight MLP with the training network's
hidden layers: serving cost does not depend on the weights' values.

Server and client CPU are read from ``/proc`` and ``time.process_time`` over each timed window
(in cores: CPU seconds per second), and so is the CPU of everything else on the machine
("other": a busy shared machine makes a run incomparable). The machine has few cores and the
client needs some, so throughput is a lower bound of what a server alone would do. The client
is one process: grpc.aio tasks kept one server worker as busy (about 1.1 cores) as 8 or 32
threads on 1 or 4 channels did, at the same client CPU; several client processes got up to a
third more unary calls through (the Python client's own latency limits a closed loop), at
more client CPU, which the server needs on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
import numpy as np
from grpc_health.v1 import health_pb2

from bench.machine import machine_info, write_result
from bench.policies import simulated_batch
from cvm_rl.bundle import Bundle, load_bundle, save_bundle
from cvm_rl.cli.process import ServeProcess, serve_process
from cvm_rl.logs.store import DecisionLog
from cvm_rl.policies.mlp import MLPPolicy
from cvm_rl.training import TrainConfig
from server.generated.cvm.v1 import decision_pb2 as pb
from simulator.config import Scenario, load_scenario
from simulator.core import observation_feature_names

# The floors: unary Decide p50 at most this many times a health check's p50 in the same
# run (logging on), and DecideBatch(256) decisions per second with logging on, workers 2.
UNARY_HEALTH_RATIO_FLOOR = 1.4
BATCH_FLOOR_PER_S = 200_000.0
BATCH_FLOOR_WORKERS = 2

_SERVICE = pb.DESCRIPTOR.services_by_name["DecisionService"]
DECIDE = f"/{_SERVICE.full_name}/Decide"
DECIDE_BATCH = f"/{_SERVICE.full_name}/DecideBatch"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_REQUEST = health_pb2.HealthCheckRequest().SerializeToString()  # the whole server
HEALTH_BLOCK = 100
"""Unary Decide and health-check calls alternate in blocks of this many."""
# Each channel gets its own TCP connection (channels with equal arguments share one otherwise).
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
# Requests are pre-built for this many times the warm-up's rate (a timed loop that runs out
# ends early and says so).
POOL_HEADROOM = 2.0
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Args:
    seconds: float = 5.0
    warmup_s: float = 1.0
    latency_calls: int = 2_000
    latency_warmup: int = 200
    concurrency: int = 32
    batch_rows: int = 256
    batch_in_flight: int = 4
    repeats: int = 3
    workers: list[int] = field(default_factory=lambda: [1, 2])
    logging: list[str] = field(default_factory=lambda: ["on", "off"])
    customers: int = 4_096
    weeks: int = 4
    bundle: str | None = None
    quick: bool = False
    seed: int = 0
    out: str = "bench/results/serve.json"

    def check(self) -> None:
        if self.seconds <= 0 or self.warmup_s <= 0:
            raise ValueError(
                f"seconds and warmup_s must be > 0, got {self.seconds}, {self.warmup_s}"
            )
        for name in ("latency_calls", "concurrency", "batch_rows", "batch_in_flight", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.latency_warmup < 0:
            raise ValueError(f"latency_warmup must be >= 0, got {self.latency_warmup}")
        if not self.workers or min(self.workers) < 1:
            raise ValueError(f"workers must list counts >= 1, got {self.workers}")
        if not self.logging or not set(self.logging) <= {"on", "off"}:
            raise ValueError(f"logging must list 'on' and/or 'off', got {self.logging}")
        if self.customers < self.batch_rows:
            raise ValueError(
                f"customers must be >= batch_rows ({self.batch_rows}), got {self.customers}"
            )


QUICK = {
    "seconds": 0.5,
    "warmup_s": 0.2,
    "latency_calls": 200,
    "latency_warmup": 20,
    "repeats": 1,
}


def code_version() -> dict[str, Any]:
    """The commit measured and the serving files that differ from it (the server changes
    often; a result is only comparable with the code it ran)."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.rstrip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "server", "cvm_rl", "simulator")
    return {
        "commit": git("rev-parse", "HEAD") or None,
        "uncommitted": [line[3:] for line in changed.splitlines()],
    }


# --------------------------------------------------------------------------- inputs
def random_mlp_bundle(path: Path, scenario: Scenario, seed: int | None) -> Path:
    """A bundle of an MLP with the training network's hidden layers and random weights
    (Glorot-scaled, so that the softmax is neither flat nor one-hot)."""
    rng = np.random.default_rng(seed)
    dims = [len(observation_feature_names(scenario)), *TrainConfig().net_arch, scenario.n_actions]
    weights = [
        rng.normal(0.0, math.sqrt(2.0 / (a + b)), (a, b)).astype(np.float32)
        for a, b in itertools.pairwise(dims)
    ]
    biases = [np.zeros(b, dtype=np.float32) for b in dims[1:]]
    policy = MLPPolicy(scenario, weights, biases, name="random_mlp")
    return save_bundle(policy, path, algo="random_mlp", training_config={"random_weights": True})


def bundle_description(bundle: Bundle, random_weights: bool) -> dict[str, Any]:
    policy = bundle.policy
    hidden = (
        [int(w.shape[1]) for w in policy.weights[:-1]] if isinstance(policy, MLPPolicy) else None
    )
    return {
        "source": "random weights (temporary)" if random_weights else str(bundle.path),
        "model_id": bundle.model_id,
        "kind": bundle.kind,
        "hidden_layers": hidden,
        "n_features": len(bundle.feature_names),
        "n_actions": len(bundle.action_names),
    }


class Requests:
    """Serialized requests with unique event ids over a fixed set of simulated customers.

    Customers are reused (the same customer is decided many times, as in production); event
    ids never are within one server's log (``tag`` names the measurement)."""

    def __init__(self, features: np.ndarray, batch_rows: int) -> None:
        self.features = np.asarray(features, dtype=np.float32)
        n, f = self.features.shape
        self.unary_bodies = [
            pb.DecideRequest(
                customer_id=f"c{i}", dense=pb.FeatureVector(values=row.tolist())
            ).SerializeToString()
            for i, row in enumerate(self.features)
        ]
        self.batch_rows = batch_rows
        blocks = n // batch_rows
        self.batch_bodies = [
            pb.DecideBatchRequest(
                customer_ids=[f"c{i}" for i in range(b * batch_rows, (b + 1) * batch_rows)],
                features=self.features[b * batch_rows : (b + 1) * batch_rows].ravel().tolist(),
                n_features=f,
            ).SerializeToString()
            for b in range(blocks)
        ]

    def unary(self, tag: str, count: int) -> list[bytes]:
        """``count`` DecideRequests; a serialized message is a concatenation of its fields."""
        bodies = self.unary_bodies
        return [
            pb.DecideRequest(event_id=f"{tag}-{k}").SerializeToString() + bodies[k % len(bodies)]
            for k in range(count)
        ]

    def batches(self, tag: str, count: int, packed: bool = False) -> BatchPool:
        """``count`` DecideBatchRequests of ``batch_rows`` rows (only the ids are built per
        batch; the customer blocks are shared); ``packed`` asks for column answers."""
        rows = self.batch_rows
        ids = [
            pb.DecideBatchRequest(
                event_ids=[f"{tag}-{k}-{r}" for r in range(rows)], packed=packed
            ).SerializeToString()
            for k in range(count)
        ]
        return BatchPool(ids, self.batch_bodies)


class RequestPool(Protocol):
    """Serialized requests by position."""

    def __len__(self) -> int: ...

    def __getitem__(self, k: int, /) -> bytes: ...


@dataclass
class BatchPool:
    """Event-id parts and customer blocks of DecideBatch requests, joined when sent (repeated
    fields of concatenated messages concatenate, so ``ids + block`` is the whole request)."""

    ids: list[bytes]
    blocks: list[bytes]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int) -> bytes:
        return self.ids[k] + self.blocks[k % len(self.blocks)]


# --------------------------------------------------------------------------- the server
def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of processes (``/proc/PID/stat``)."""
    total = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICK


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine spent busy (``/proc/stat``: all but idle and
    iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLOCK_TICK


class CpuMeter:
    """CPU cores used by the server, by this process and by everything else over a window."""

    def __init__(self, server_pids: Sequence[int]) -> None:
        self.pids = list(server_pids)
        self.start = self._read()

    def _read(self) -> tuple[float, float, float, float]:
        return (
            time.perf_counter(),
            cpu_seconds(self.pids),
            time.process_time(),
            machine_busy_seconds(),
        )

    def deltas(self) -> tuple[float, ...]:
        """Wall, server, client and machine seconds since the start."""
        end = self._read()
        return tuple(b - a for a, b in zip(self.start, end, strict=True))

    def cores(self) -> dict[str, float]:
        return cpu_cores(self.deltas())


def cpu_cores(deltas: Sequence[float]) -> dict[str, float]:
    """:meth:`CpuMeter.cores` of summed :meth:`CpuMeter.deltas`."""
    wall, server, client, machine = deltas
    return {
        "server_cpu_s": server,
        "server_cpu_cores": server / wall,
        "client_cpu_cores": client / wall,
        # Other jobs on a shared machine (clamped: the counters tick at different times).
        "other_cpu_cores": max(0.0, (machine - server - client) / wall),
    }


def server_connections(port: int, pids: Sequence[int]) -> dict[int, set[int]]:
    """Established TCP connections on ``port`` held by each process, as socket inodes."""
    established: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "01":
                    established.add(int(cols[9]))
    held: dict[int, set[int]] = {}
    for pid in pids:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(int(link[8:-1]))
        held[pid] = inodes & established
    return held


@contextlib.contextmanager
def running_server(
    bundle: Path, workers: int, log_path: Path | None, workdir: Path
) -> Iterator[ServeProcess]:
    """``cvm serve`` on 127.0.0.1 port 0 until the block ends; it must stop cleanly."""
    args = [
        "--bundle", str(bundle), "--host", "127.0.0.1", "--workers", str(workers),
        *(["--no-log"] if log_path is None else ["--log", str(log_path)]),
    ]  # fmt: skip
    with serve_process(args, workdir) as server:
        yield server
        code = server.stop()
    if code != 0:
        raise RuntimeError(f"cvm serve exited with {code}: {server.stderr()[-2000:]}")


# --------------------------------------------------------------------------- the client
def latency_summary(latencies_s: Sequence[float] | np.ndarray) -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def check_decide_response(raw: bytes, request: bytes) -> None:
    sent = pb.DecideRequest.FromString(request)
    got = pb.DecideResponse.FromString(raw)
    if got.decision.event_id != sent.event_id or not got.model.model_id:
        raise RuntimeError(f"Decide answered {got} to event {sent.event_id!r}")


def check_batch_response(raw: bytes, request: bytes, rows: int) -> None:
    sent = pb.DecideBatchRequest.FromString(request)
    got = pb.DecideBatchResponse.FromString(raw)
    ids = list(got.packed.event_ids) if sent.packed else [d.event_id for d in got.decisions]
    if len(sent.customer_ids) != rows or ids != list(sent.event_ids):
        raise RuntimeError(
            f"DecideBatch of {len(sent.customer_ids)} rows answered {len(ids)} decisions "
            f"(expected {rows} with the request's event ids)"
        )


def unary_latency(server: ServeProcess, requests: list[bytes], warmup: int) -> dict[str, Any]:
    """Blocking Decide calls one after another, the first ``warmup`` not timed, and as many
    health checks on the same channel, in alternating blocks of :data:`HEALTH_BLOCK` calls.

    The Decide figures are those of the Decide blocks alone (latency, rate, CPU); the health
    checks' are under ``health_*``, with ``p50_over_health_p50``."""
    with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(DECIDE, request_serializer=None, response_deserializer=None)
        health = channel.unary_unary(
            HEALTH_CHECK, request_serializer=None, response_deserializer=None
        )
        for request in requests[:warmup]:
            call(request, timeout=10)
            health(HEALTH_REQUEST, timeout=10)
        timed = requests[warmup:]
        times = np.empty(len(timed))
        health_times = np.empty(len(timed))
        decide_cpu = np.zeros(4)
        health_cpu = np.zeros(4)
        for start in range(0, len(timed), HEALTH_BLOCK):
            block = range(start, min(start + HEALTH_BLOCK, len(timed)))
            meter = CpuMeter(server.pids)
            for i in block:
                t = time.perf_counter()
                raw = call(timed[i], timeout=10)
                times[i] = time.perf_counter() - t
            decide_cpu += meter.deltas()
            meter = CpuMeter(server.pids)
            for i in block:
                t = time.perf_counter()
                answer = health(HEALTH_REQUEST, timeout=10)
                health_times[i] = time.perf_counter() - t
            health_cpu += meter.deltas()
        check_decide_response(raw, timed[-1])
        status = health_pb2.HealthCheckResponse.FromString(answer).status
        if status != health_pb2.HealthCheckResponse.SERVING:
            raise RuntimeError(f"the health check answered {status}, not SERVING")
    cpu = cpu_cores(decide_cpu.tolist())
    decide = latency_summary(times)
    checks = latency_summary(health_times)
    return {
        "calls": len(timed),
        "decisions": len(timed),
        "seconds": decide_cpu[0],
        "decisions_per_s": len(timed) / decide_cpu[0],
        **decide,
        **cpu,
        "server_cpu_us_per_decision": cpu["server_cpu_s"] / len(timed) * 1e6,
        "health_calls": len(timed),
        **{f"health_{key}": value for key, value in checks.items()},
        "health_server_cpu_us_per_call": health_cpu[1] / len(timed) * 1e6,
        "p50_over_health_p50": decide["p50_ms"] / checks["p50_ms"],
    }


async def balanced_channels(
    server: ServeProcess, per_worker: int, max_attempts: int = 200
) -> list[grpc.aio.Channel]:
    """``per_worker`` connections to each serving worker, in worker order.

    The kernel hashes each new connection to one of the workers listening; connections that
    land on a worker that has its share already are closed and tried again."""
    kept: dict[int, list[grpc.aio.Channel]] = {pid: [] for pid in server.pids}
    seen = set().union(*server_connections(server.port, server.pids).values())
    for _ in range(max_attempts):
        if all(len(chs) >= per_worker for chs in kept.values()):
            break
        channel = grpc.aio.insecure_channel(server.target, options=CHANNEL_OPTIONS)
        await asyncio.wait_for(channel.channel_ready(), timeout=30)
        owner = None
        for _ in range(100):  # the worker may accept a moment after the handshake
            held = server_connections(server.port, server.pids)
            new = {pid: inodes - seen for pid, inodes in held.items() if inodes - seen}
            if new:
                seen |= set().union(*new.values())
                owner = next(iter(new)) if len(new) == 1 else None
                break
            await asyncio.sleep(0.01)
        if owner is not None and len(kept[owner]) < per_worker:
            kept[owner].append(channel)
        else:
            await channel.close()
            await asyncio.sleep(0.05)  # e.g. a worker that is not listening yet
    if not all(len(chs) >= per_worker for chs in kept.values()):
        for channel in itertools.chain(*kept.values()):
            await channel.close()
        raise RuntimeError(
            f"could not open {per_worker} connection(s) to each of {len(server.pids)} workers "
            f"in {max_attempts} attempts"
        )
    # Interleaved, so that task i of n goes to worker i % workers.
    return [ch for group in zip(*kept.values(), strict=True) for ch in group]


@dataclass
class LoopResult:
    """What :func:`closed_loop` saw: per-call latencies, the wall time until the last call
    ended, one request with its response, and whether the requests ran out."""

    latencies: list[float]
    seconds: float
    sample_request: bytes
    sample_response: bytes
    ran_out: bool


async def closed_loop(
    channels: Sequence[grpc.aio.Channel],
    method: str,
    requests: RequestPool,
    tasks: int,
    seconds: float,
) -> LoopResult:
    """``tasks`` tasks each sending its next request as soon as its previous one is answered,
    until ``seconds`` pass or the requests run out; task i uses channel i mod len(channels)."""
    calls = [ch.unary_unary(method, request_serializer=None, response_deserializer=None)
             for ch in channels]  # fmt: skip
    latencies: list[float] = []
    cursor = itertools.count()
    sample: list[tuple[bytes, bytes]] = []
    ran_out = False
    start = time.perf_counter()
    deadline = start + seconds

    async def worker(i: int) -> None:
        nonlocal ran_out
        call = calls[i % len(calls)]
        while time.perf_counter() < deadline:
            k = next(cursor)
            if k >= len(requests):
                ran_out = True
                return
            request = requests[k]
            t = time.perf_counter()
            response = await call(request, timeout=30)
            latencies.append(time.perf_counter() - t)
            if not sample:
                sample.append((request, response))

    await asyncio.gather(*(worker(i) for i in range(tasks)))
    elapsed = time.perf_counter() - start
    if not sample:
        raise RuntimeError(f"no {method} call completed in {seconds} s")
    return LoopResult(latencies, elapsed, *sample[0], ran_out)


async def throughput(
    server: ServeProcess,
    channels: Sequence[grpc.aio.Channel],
    method: str,
    make_requests: Callable[[str, int], RequestPool],
    rows_per_call: int,
    tasks: int,
    seconds: float,
    warmup_s: float,
    ceiling_calls_per_s: float,
) -> dict[str, Any]:
    """Warm up for ``warmup_s``, build requests for twice the warm-up's rate, then time a
    closed loop of ``tasks`` calls in flight for ``seconds``. Returns the figures and the
    number of calls made (warm-up included)."""
    warm_requests = make_requests("warm", math.ceil(ceiling_calls_per_s * warmup_s) + tasks)
    warm = await closed_loop(channels, method, warm_requests, tasks, warmup_s)
    rate = len(warm.latencies) / warm.seconds
    requests = make_requests("timed", math.ceil(POOL_HEADROOM * rate * seconds) + 2 * tasks)
    meter = CpuMeter(server.pids)
    timed = await closed_loop(channels, method, requests, tasks, seconds)
    cpu = meter.cores()
    for loop in (warm, timed):
        if method == DECIDE:
            check_decide_response(loop.sample_response, loop.sample_request)
        else:
            check_batch_response(loop.sample_response, loop.sample_request, rows_per_call)
    calls = len(timed.latencies)
    decisions = calls * rows_per_call
    return {
        "calls": calls,
        "decisions": decisions,
        "seconds": timed.seconds,
        "decisions_per_s": decisions / timed.seconds,
        **latency_summary(timed.latencies),
        **cpu,
        "server_cpu_us_per_decision": cpu["server_cpu_s"] / decisions * 1e6,
        "requests_ran_out": timed.ran_out,
        "decisions_made": (len(warm.latencies) + calls) * rows_per_call,
    }


async def throughput_runs(
    server: ServeProcess, requests: Requests, args: Args, tag: str
) -> list[dict[str, Any]]:
    """Unary Decide at ``concurrency`` and DecideBatch with ``batch_in_flight`` (per-row and
    packed answers), on one connection per worker. The three measurements take turns
    ``repeats`` times; each reports its median run (the machine is shared, so single runs
    swing), with every run's rate kept in ``decisions_per_s_runs``."""
    channels = await balanced_channels(server, per_worker=1)
    measurements: list[tuple[str, int, str, Callable[[str, int], RequestPool], int, int]] = [
        (
            f"Decide, concurrency {args.concurrency}",
            args.concurrency,
            DECIDE,
            lambda phase, n: requests.unary(f"{tag}-u-{phase}", n),
            1,
            20_000,
        ),
        (
            f"DecideBatch({args.batch_rows})",
            args.batch_in_flight,
            DECIDE_BATCH,
            lambda phase, n: requests.batches(f"{tag}-b-{phase}", n),
            args.batch_rows,
            2_000,
        ),
        (
            f"DecideBatch({args.batch_rows}), packed",
            args.batch_in_flight,
            DECIDE_BATCH,
            lambda phase, n: requests.batches(f"{tag}-p-{phase}", n, packed=True),
            args.batch_rows,
            2_000,
        ),
    ]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in measurements}
    try:
        for repeat in range(args.repeats):
            for name, in_flight, method, pool, rows, ceiling in measurements:

                def requests_of(
                    phase: str,
                    n: int,
                    pool: Callable[[str, int], RequestPool] = pool,
                    repeat: int = repeat,
                ) -> RequestPool:
                    return pool(f"r{repeat}-{phase}", n)

                result = await throughput(
                    server,
                    channels,
                    method,
                    requests_of,
                    rows,
                    in_flight,
                    args.seconds,
                    args.warmup_s,
                    ceiling_calls_per_s=ceiling,
                )
                runs[name].append({"measurement": name, "in_flight": in_flight} | result)
    finally:
        for channel in channels:
            await channel.close()
    summary = []
    for results in runs.values():
        ordered = sorted(results, key=lambda r: r["decisions_per_s"])
        median = dict(ordered[(len(ordered) - 1) // 2])
        median["decisions_per_s_runs"] = [r["decisions_per_s"] for r in results]
        median["decisions_made"] = sum(r["decisions_made"] for r in results)
        summary.append(median)
    return summary


def run_configuration(
    bundle: Path, requests: Requests, args: Args, workers: int, logging_on: bool, workdir: Path
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """One server: the measurements, and (logging on) decisions made against decisions logged."""
    log_path = workdir / "decisions.db" if logging_on else None
    tag = f"w{workers}-{'on' if logging_on else 'off'}"
    rows: list[dict[str, Any]] = []
    made = 0
    with running_server(bundle, workers, log_path, workdir) as server:
        if workers == 1:
            count = args.latency_warmup + args.latency_calls
            latency = unary_latency(server, requests.unary(f"{tag}-u1", count), args.latency_warmup)
            made += count
            rows.append({"measurement": "Decide, concurrency 1", "in_flight": 1} | latency)
        runs = asyncio.run(throughput_runs(server, requests, args, tag))
        made += sum(r.pop("decisions_made") for r in runs)
        rows += runs
    base = {"workers": workers, "logging": "on" if logging_on else "off"}
    rows = [base | r for r in rows]
    if log_path is None:
        return rows, None
    with DecisionLog(log_path) as decision_log:
        logged = decision_log.count()
    return rows, base | {"decisions_made": made, "decisions_logged": logged}


# --------------------------------------------------------------------------- summary
def logging_costs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per workers and measurement: 1/throughput_on - 1/throughput_off, and the difference
    in server CPU per decision, in microseconds."""
    costs = []
    for on in (r for r in rows if r["logging"] == "on" and r["in_flight"] > 1):
        off = next(
            (
                r
                for r in rows
                if r["logging"] == "off"
                and (r["workers"], r["measurement"]) == (on["workers"], on["measurement"])
            ),
            None,
        )
        if off is None:
            continue
        costs.append(
            {
                "workers": on["workers"],
                "measurement": on["measurement"],
                "wall_us_per_decision": (1 / on["decisions_per_s"] - 1 / off["decisions_per_s"])
                * 1e6,
                "server_cpu_us_per_decision": on["server_cpu_us_per_decision"]
                - off["server_cpu_us_per_decision"],
            }
        )
    return costs


def floors(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's floors, checked on the logging-on runs: unary Decide p50 against the health
    checks of the same run, and DecideBatch of 256 rows with ``BATCH_FLOOR_WORKERS``."""
    results = []
    for r in rows:
        if r["logging"] != "on":
            continue
        if r["in_flight"] == 1:
            limit = UNARY_HEALTH_RATIO_FLOOR * r["health_p50_ms"]
            results.append(
                {
                    "floor": "Decide p50 ms",
                    "workers": r["workers"],
                    "value": r["p50_ms"],
                    "limit": limit,
                    "health_p50_ms": r["health_p50_ms"],
                    "ratio": r["p50_over_health_p50"],
                    "ratio_limit": UNARY_HEALTH_RATIO_FLOOR,
                    "met": r["p50_ms"] <= limit,
                }
            )
        elif r["measurement"].startswith("DecideBatch(256)") and (
            r["workers"] == BATCH_FLOOR_WORKERS
        ):
            value = r["decisions_per_s"]
            results.append(
                {
                    "floor": f"{r['measurement']} decisions/s",
                    "workers": r["workers"],
                    "value": value,
                    "limit": BATCH_FLOOR_PER_S,
                    "met": value >= BATCH_FLOOR_PER_S,
                }
            )
    return results


def unary_against_health(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Unary Decide p50 against the health checks beside it, per configuration."""
    return [
        {
            "workers": r["workers"],
            "logging": r["logging"],
            "decide_p50_ms": r["p50_ms"],
            "health_p50_ms": r["health_p50_ms"],
            "p50_over_health_p50": r["p50_over_health_p50"],
        }
        for r in rows
        if "health_p50_ms" in r
    ]


def print_report(result: dict[str, Any]) -> None:
    b, a, m = result["bundle"], result["args"], result["machine"]
    print(
        f"bundle: {b['source']}, {b['kind']} {b['hidden_layers']}, {b['n_features']} features, "
        f"{b['n_actions']} actions; {m['cpus']} CPUs shared by server and client; "
        f"{a['seconds']} s per throughput run after {a['warmup_s']} s warm-up, median of "
        f"{a['repeats']} runs taken in turns; load average "
        f"{m['loadavg_1_5_15']} -> {m['loadavg_1_5_15_after']}"
    )
    code = result["code"]
    dirty = f", uncommitted changes in {code['uncommitted']}" if code["uncommitted"] else ""
    print(f"code: commit {(code['commit'] or 'unknown')[:12]}{dirty}")
    print(
        "client: this process; concurrency 1 = blocking calls; concurrency > 1 = grpc.aio "
        "tasks on one connection per server worker; requests pre-serialized; CPU in cores"
    )
    print(
        "| workers | log | measurement | in flight | decisions/s | all runs (k/s) | p50 ms "
        "| p99 ms | mean ms | health p50 ms | p50 / health p50 | server CPU | client CPU "
        "| other CPU | calls |"
    )
    print("|---:|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in result["runs"]:
        print(
            f"| {r['workers']} | {r['logging']} | {r['measurement']} | {r['in_flight']} | "
            f"{r['decisions_per_s']:,.0f} | "
            + ", ".join(f"{x / 1000:.1f}" for x in r.get("decisions_per_s_runs", []))
            + f" | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['mean_ms']:.3f} | "
            + (
                f"{r['health_p50_ms']:.3f} | {r['p50_over_health_p50']:.2f} | "
                if "health_p50_ms" in r
                else " |  | "
            )
            + f"{r['server_cpu_cores']:.2f} | {r['client_cpu_cores']:.2f} | "
            f"{r['other_cpu_cores']:.2f} | "
            f"{r['calls']:,} |"
        )
        if r.get("requests_ran_out"):
            print(f"  (the pre-built requests ran out after {r['seconds']:.2f} s)")
    for c in result["logging_cost"]:
        print(
            f"logging cost, workers {c['workers']}, {c['measurement']}: "
            f"{c['wall_us_per_decision']:.1f} µs/decision (1/throughput_on - 1/throughput_off), "
            f"server CPU {c['server_cpu_us_per_decision']:+.1f} µs/decision"
        )
    for log in result["log_check"]:
        verdict = "OK" if log["decisions_logged"] == log["decisions_made"] else "MISMATCH"
        print(
            f"decision log, workers {log['workers']}: {log['decisions_logged']:,} rows for "
            f"{log['decisions_made']:,} decisions made: {verdict}"
        )
    for u in result["unary_vs_health"]:
        print(
            f"unary Decide p50 / health check p50, workers {u['workers']}, logging "
            f"{u['logging']}: {u['decide_p50_ms']:.3f} / {u['health_p50_ms']:.3f} ms = "
            f"{u['p50_over_health_p50']:.2f}"
        )
    for f in result["floors"]:
        verdict = "PASS" if f["met"] else "FAIL"
        if "ratio" in f:
            print(
                f"floor {f['floor']} <= {f['ratio_limit']:g} x health p50 "
                f"({f['limit']:.3f}; logging on, workers {f['workers']}): {f['value']:.3f}, "
                f"ratio {f['ratio']:.2f} -> {verdict}"
            )
        else:
            print(
                f"floor {f['floor']} >= {f['limit']:,g} (logging on, workers {f['workers']}): "
                f"{f['value']:,.0f} -> {verdict}"
            )


def run(args: Args) -> dict[str, Any]:
    """Every configuration; returns the JSON-ready result."""
    args.check()
    machine = machine_info("grpc", "google.protobuf")
    with tempfile.TemporaryDirectory(prefix="cvm-bench-serve-") as tmp:
        root = Path(tmp)
        if args.bundle is None:
            bundle_path = random_mlp_bundle(root / "bundle", load_scenario("default"), args.seed)
        else:
            bundle_path = Path(args.bundle)
        bundle = load_bundle(bundle_path)
        features = simulated_batch(bundle.scenario, args.customers, args.weeks, args.seed).obs
        requests = Requests(features, args.batch_rows)
        rows: list[dict[str, Any]] = []
        checks: list[dict[str, Any]] = []
        for workers in args.workers:
            for logging in args.logging:
                workdir = root / f"workers{workers}-log{logging}"
                runs, check = run_configuration(
                    bundle_path, requests, args, workers, logging == "on", workdir
                )
                rows += runs
                if check is not None:
                    checks.append(check)
    machine["loadavg_1_5_15_after"] = machine_info("grpc", "google.protobuf")["loadavg_1_5_15"]
    return {
        "machine": machine,
        "code": code_version(),
        "bundle": bundle_description(bundle, args.bundle is None),
        "args": asdict(args),
        "runs": rows,
        "logging_cost": logging_costs(rows),
        "log_check": checks,
        "unary_vs_health": unary_against_health(rows),
        "floors": floors(rows),
    }


def parse_args(argv: Sequence[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, help=f"per throughput run ({Args.seconds})")
    parser.add_argument("--warmup-s", type=float, help=f"before each ({Args.warmup_s})")
    parser.add_argument("--latency-calls", type=int, help=f"timed ({Args.latency_calls})")
    parser.add_argument("--latency-warmup", type=int, help=f"untimed ({Args.latency_warmup})")
    parser.add_argument("--concurrency", type=int, default=Args.concurrency)
    parser.add_argument("--batch-rows", type=int, default=Args.batch_rows)
    parser.add_argument("--batch-in-flight", type=int, default=Args.batch_in_flight)
    parser.add_argument(
        "--repeats", type=int, help=f"runs per throughput measurement, median kept ({Args.repeats})"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=Args().workers)
    parser.add_argument("--logging", nargs="+", choices=["on", "off"], default=Args().logging)
    parser.add_argument("--customers", type=int, default=Args.customers)
    parser.add_argument("--weeks", type=int, default=Args.weeks)
    parser.add_argument("--bundle", help="a trained bundle directory (default: random weights)")
    parser.add_argument(
        "--quick", action="store_true", help="short smoke run: " + json.dumps(QUICK)
    )
    parser.add_argument("--seed", type=int, default=Args.seed)
    parser.add_argument("--out", default=Args.out)
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    if given.get("quick"):
        given = QUICK | given
    args = Args(**given)
    try:
        args.check()
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    print_report(result)
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
