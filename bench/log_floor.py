"""What writing the decision log costs at the least: its SQLite statements by themselves.

Prints a table and writes ``bench/results/log_floor.json``. Run:
``.venv/bin/python -m bench.log_floor [--prefill 500000] [--quick]``.

``bench.serve_stages`` times the log inside the real handlers; this benchmark strips the
project's Python away and runs the log's own statements on a ``sqlite3`` connection with the
log's settings (WAL, ``synchronous=NORMAL``), every parameter built before the clock starts.
What it measures is therefore a floor for any Python code that keeps today's log, and beside
it the floors of two other designs:

- **decision rows** (today's schema, :mod:`cvm_rl.logs.schema`): a ``requests`` row with the
  request's matrices as BLOBs, then one ``decisions`` row per decision (11 columns) with its
  unique event-id index, in the log's multi-row statements;
- **event index only**: the request's BLOBs and one row per decision in a ``WITHOUT ROWID``
  table of (event id, request, row): what a columnar log, its per-decision columns moved into
  the request's BLOBs, would still write per decision to keep the replay check;
- **request BLOBs only**: no per-decision row at all (no replay check);
- **file append**: ``os.write`` of the same bytes to a file opened ``O_APPEND`` (a journal in
  place of SQLite; as durable as ``synchronous=NORMAL``, without the index).

A unary transaction (one request of one decision) is timed back to back and after an idle
gap, as ``bench.serve_stages`` does. Group commits of ``in_flight`` requests of
``batch_rows`` decisions (what the server commits at once under batch load) are timed per
decision on a log prefilled with ``prefill`` decisions of the same design. The WAL is
checkpointed (TRUNCATE) whenever it passes ``wal_limit_mb``, as the server's checkpointer
does, and once more at the end of each run: the time of copying everything a run wrote
into the database is reported per decision beside the commits' (in the server it is
another thread's CPU, off the request path but not off the machine). The appended file
only grows, as a journal would between rotations. Each figure is the median
over transactions, then the median of ``repeats`` runs taken in turns.
"""

from __future__ import annotations

import argparse
import functools
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import machine_info, write_result
from bench.serve import code_version
from cvm_rl.logs.records import DecisionBatch, PreparedBatch
from cvm_rl.logs.schema import DECISION_COLUMNS, TABLES
from cvm_rl.logs.store import _INSERT_CHUNK, _INSERT_REQUEST, insert_request

DESIGNS = ("decision rows", "event index only", "request BLOBs only", "file append")
UNARY_DESIGNS = ("decision rows", "file append")
COLUMNS = (
    "group commit, per decision",
    "checkpoint, per decision",
    "unary, back to back",
    "unary, after a gap",
)
_EVENTS = (
    "CREATE TABLE events (event_id TEXT PRIMARY KEY, request INTEGER NOT NULL, "
    "request_row INTEGER NOT NULL) WITHOUT ROWID"
)


@functools.lru_cache(maxsize=_INSERT_CHUNK)
def _insert_events_sql(n_rows: int) -> str:
    return "INSERT INTO events VALUES " + ", ".join(["(?, ?, ?)"] * n_rows)


@dataclass
class Args:
    unary_calls: int = 3_000
    gap_ms: float = 0.6
    batch_rows: int = 256
    in_flight: int = 4
    commits: int = 150
    prefill: int = 500_000
    wal_limit_mb: float = 64.0
    n_features: int = 30
    n_actions: int = 8
    repeats: int = 3
    quick: bool = False
    seed: int = 0
    out: str = "bench/results/log_floor.json"


class Target:
    """One design's store in a temporary directory: a SQLite log with the log's settings and
    activation 1 in place, or an append-only file."""

    def __init__(self, design: str, directory: Path, wal_limit_mb: float) -> None:
        self.design = design
        self.fd: int | None = None
        self.db: sqlite3.Connection | None = None
        self.checkpoint_s = 0.0
        self.decisions = 0  # written, for check()
        self.bytes = 0
        self._wal = directory / f"{design}.db-wal"
        self._wal_limit = wal_limit_mb * 2**20
        if design == "file append":
            self.fd = os.open(directory / "journal", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            return
        db = sqlite3.connect(directory / f"{design}.db", isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA wal_autocheckpoint = 0")  # the server checkpoints from a thread
        db.execute("BEGIN IMMEDIATE")
        for statement in (*TABLES, _EVENTS):
            db.execute(statement)
        db.execute("INSERT INTO models VALUES ('m-1', '1', 'mlp', 'b', '[]', '[]', 0)")
        db.execute("INSERT INTO activations VALUES (1, 'm-1', 'b', 'online', 'policy', 0, 's', 0)")
        db.execute("COMMIT")
        self.db = db

    def write(self, requests: Sequence[Request]) -> None:
        """One transaction (or one ``os.write``) holding ``requests``."""
        self.decisions += sum(r.n_rows for r in requests)
        if self.fd is not None:
            self.bytes += os.write(self.fd, b"".join(r.raw for r in requests))
            return
        db = self.db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        for r in requests:
            if self.design == "decision rows":  # the log's own code
                insert_request(db, r.request_row, r.decision_flat)
                continue
            request = db.execute(_INSERT_REQUEST, r.request_row).lastrowid
            if self.design == "event index only":
                r.event_flat[1::3] = [request] * r.n_rows
                for start in range(0, r.n_rows, _INSERT_CHUNK):
                    stop = min(start + _INSERT_CHUNK, r.n_rows)
                    db.execute(_insert_events_sql(stop - start), r.event_flat[start * 3 : stop * 3])
        db.execute("COMMIT")

    def checkpoint_if_full(self) -> None:
        """TRUNCATE-checkpoint a WAL past its limit, timed (the server's checkpointer)."""
        if self._wal.exists() and self._wal.stat().st_size > self._wal_limit:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Copy the whole WAL into the database and empty it, timed."""
        if self.db is not None:
            start = time.perf_counter()
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            self.checkpoint_s += time.perf_counter() - start

    def check(self) -> None:
        """Raise unless the store holds every decision written (a statement that silently
        wrote nothing would otherwise look fast)."""
        if self.fd is not None:
            held, wanted = os.fstat(self.fd).st_size, self.bytes
        else:
            assert self.db is not None
            table = {"decision rows": "decisions", "event index only": "events"}.get(self.design)
            query = f"SELECT count(*) FROM {table}" if table else "SELECT sum(n_rows) FROM requests"
            held, wanted = self.db.execute(query).fetchone()[0], self.decisions
        if held != wanted:
            raise RuntimeError(f"{self.design}: the store holds {held}, {wanted} were written")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        if self.db is not None:
            self.db.close()


class Request:
    """One request's parameters, built before any clock starts by the log's own code
    (:class:`PreparedBatch`): the ``requests`` row and the decisions' rows as one flat list;
    beside them the event index's rows and the bytes of a journal record (the BLOBs and the
    decisions' text)."""

    def __init__(self, tag: str, n_rows: int, args: Args, rng: np.random.Generator) -> None:
        self.n_rows = n_rows
        probabilities = rng.dirichlet(np.ones(args.n_actions), size=n_rows)
        actions = rng.integers(0, args.n_actions, size=n_rows)
        chosen = probabilities[np.arange(n_rows), actions]
        batch = DecisionBatch(
            event_ids=[f"{tag}-{i:05d}" for i in range(n_rows)],
            customer_ids=[f"customer-{i}" for i in range(n_rows)],
            decided_at_us=np.full(n_rows, 1_790_000_000_000_000),
            activation=1,
            action_index=actions,
            propensity=chosen,
            policy_action_index=actions,
            policy_propensity=chosen,
            baseline_action_index=np.full(n_rows, -1),
            explored=np.zeros(n_rows, dtype=bool),
            features=rng.random((n_rows, args.n_features), dtype=np.float32),
            eligible=np.ones((n_rows, args.n_actions), dtype=bool),
            probabilities=probabilities,
        )
        prepared = PreparedBatch.of(batch)
        self.request_row, self.decision_flat = prepared.request_row, prepared.flat
        self.event_flat: list[Any] = [None] * (3 * n_rows)
        self.event_flat[0::3] = batch.event_ids
        self.event_flat[2::3] = range(n_rows)
        width = len(DECISION_COLUMNS)
        text = "\n".join(
            ",".join(map(str, self.decision_flat[k : k + width]))
            for k in range(0, len(self.decision_flat), width)
        )
        self.raw = b"".join(self.request_row[4:]) + text.encode()


class RequestStream:
    """Fresh requests of ``n_rows`` decisions (new event ids each) for one design."""

    def __init__(self, prefix: str, n_rows: int, args: Args, rng: np.random.Generator) -> None:
        self._prefix, self._n_rows, self._args, self._rng = prefix, n_rows, args, rng
        self._count = 0

    def take(self, n: int) -> list[Request]:
        taken = []
        for _ in range(n):
            taken.append(
                Request(f"{self._prefix}-{self._count:08d}", self._n_rows, self._args, self._rng)
            )
            self._count += 1
        return taken


def timed_writes(
    target: Target, batches: list[list[Request]], gap_s: float, per: int
) -> list[float]:
    """Seconds per decision of each write of ``batches`` (``per`` decisions each)."""
    times = []
    for requests in batches:
        start = time.perf_counter()
        target.write(requests)
        times.append((time.perf_counter() - start) / per)
        target.checkpoint_if_full()
        if gap_s:
            time.sleep(gap_s)  # idle, as between a lone client's calls
    return times


def measure(args: Args, directory: Path) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    per_commit = args.batch_rows * args.in_flight
    targets = {d: Target(d, directory, args.wal_limit_mb) for d in DESIGNS}
    streams = {
        d: RequestStream(f"batch-{i}", args.batch_rows, args, rng) for i, d in enumerate(DESIGNS)
    }
    unary = {d: RequestStream(f"unary-{i}", 1, args, rng) for i, d in enumerate(UNARY_DESIGNS)}
    runs: dict[str, list[dict[str, float]]] = {}
    try:
        for design, target in targets.items():  # prefill, untimed
            for _ in range(0, args.prefill, per_commit):
                target.write(streams[design].take(args.in_flight))
                target.checkpoint_if_full()
            target.checkpoint_s = 0.0
        for _ in range(args.repeats):
            for design, target in targets.items():
                batches = [streams[design].take(args.in_flight) for _ in range(args.commits)]
                target.checkpoint()  # an empty WAL to start from
                before = target.checkpoint_s
                times = timed_writes(target, batches, 0.0, per_commit)
                target.checkpoint()  # so the run pays for checkpointing all it wrote
                checkpoint = (target.checkpoint_s - before) / (args.commits * per_commit)
                runs.setdefault(design, []).append(
                    {
                        "group commit, per decision": statistics.median(times) * 1e6,
                        "checkpoint, per decision": checkpoint * 1e6,
                    }
                )
                if design not in UNARY_DESIGNS:
                    continue
                for name, gap_s in (
                    ("unary, back to back", 0.0),
                    ("unary, after a gap", 1e-3 * args.gap_ms),
                ):
                    calls = [unary[design].take(1) for _ in range(args.unary_calls)]
                    runs[design][-1][name] = (
                        statistics.median(timed_writes(target, calls, gap_s, 1)) * 1e6
                    )
        for target in targets.values():
            target.check()
    finally:
        for target in targets.values():
            target.close()
    floors = {
        design: {c: statistics.median(r[c] for r in rows) for c in COLUMNS if c in rows[0]}
        for design, rows in runs.items()
    }
    return {"floors_us": floors, "runs": runs}


def print_report(result: dict[str, Any]) -> None:
    a = result["args"]
    print(
        f"the log's SQLite statements alone, µs; group commits of {a['in_flight']} x "
        f"{a['batch_rows']} decisions on a log of {a['prefill']:,} (medians over "
        f"{a['commits']} commits), unary transactions (over {a['unary_calls']}, gap "
        f"{a['gap_ms']} ms); median of {a['repeats']} runs; load average "
        f"{result['machine']['loadavg_1_5_15']}"
    )
    print("| design | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for design, row in result["floors_us"].items():
        cells = [f"{row[c]:.2f}" if c in row else "" for c in COLUMNS]
        print(f"| {design} | " + " | ".join(cells) + " |")


def run(args: Args) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cvm-bench-log-floor-") as tmp:
        measured = measure(args, Path(tmp))
    return {"machine": machine_info(), "code": code_version(), "args": asdict(args), **measured}


def parse_args(argv: Sequence[str] | None = None) -> Args:
    defaults = Args()
    parser = argparse.ArgumentParser(description=__doc__)
    positive = ("unary_calls", "commits", "repeats", "batch_rows", "in_flight")
    for name in positive:
        parser.add_argument(
            "--" + name.replace("_", "-"), type=int, default=getattr(defaults, name)
        )
    parser.add_argument("--prefill", type=int, default=defaults.prefill)
    parser.add_argument("--gap-ms", type=float, default=defaults.gap_ms)
    parser.add_argument("--quick", action="store_true", help="a few writes: a smoke test")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", default=defaults.out)
    ns = parser.parse_args(argv)
    for name in positive:
        if getattr(ns, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(ns, name)}")
    if ns.prefill < 0:
        parser.error(f"--prefill must be >= 0, got {ns.prefill}")
    if ns.gap_ms < 0:
        parser.error(f"--gap-ms must be >= 0, got {ns.gap_ms}")
    args = Args(**vars(ns))
    if args.quick:
        args.unary_calls, args.commits, args.prefill, args.repeats = 20, 4, 2_048, 1
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    print_report(result)
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
