"""Streaming off-policy evaluation of large partitioned exports: wall time and peak memory of
``cvm_rl.ope.streaming.evaluate_export_streaming`` at 1M and 10M rows (100M on request).

Prints a table and writes ``bench/results/ope_export.json``. Run: ``make bench`` or
``.venv/bin/python -m bench.ope_export [--rows 1000000 10000000] [--workdir DIR] [--keep]``.

For each size, a synthetic export of ``cvm logs export``'s layout is written with pyarrow
directly, record batch by record batch (not through SQLite): the columns of
:data:`cvm_rl.logs.export.EXPORT_SCHEMA`, hive partitions ``date=YYYY-MM-DD/part-0.parquet``,
``_models.json`` beside them and the models in each file's schema metadata. It is a quarter
of a weekly campaign (``--weeks`` 13 partitions, each customer decided once a week, so rows /
13 customers): even the 1M export's weekly files (76,924 rows) exceed one record batch of the
evaluation (65,536 rows), so every size is read in full batches and only the rows differ.
Features are drawn inside the default scenario's observation bounds (integer counts, one-hot
stage, opt-ins and one-hot profile attributes fixed per customer, the latent segment's
one-hot only where the scenario observes it, the calendar features of the week),
eligibility follows the simulator's rule (opted in, under the channel and overall contact
caps), and the logger is the demo's served campaign: the rule-based policy with
``--epsilon`` uniform exploration over the eligible actions (full support), its whole
distribution logged with the propensity of the drawn action. Rewards: a purchase by stage and
latent segment (likelier after a contact) times a spend, minus the channel's contact cost.

Each export is evaluated in a fresh process, as ``cvm ope report --no-long-run`` streams it
(the rules and no-contact candidates and the logger's self-check, ``--n-bootstrap`` Poisson
resamples), which reports its wall time per pass and its peak resident set size
(``getrusage(RUSAGE_SELF).ru_maxrss``, read in the child after each pass and at the end;
VmHWM beside it). Bounded memory means the peak barely moves with the rows: the table shows
each size's peak and its ratio to the first size's. Each export is written in a fresh process
too, after checking the free disk against the bytes per row of a small probe export, and
deleted once measured unless ``--keep`` (a kept export is reused by the next run).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.machine import machine_info, write_result
from cvm_rl.logs.export import EXPORT_SCHEMA, MODELS_FILE, MODELS_METADATA_KEY
from cvm_rl.logs.reader import CHUNK_ROWS
from cvm_rl.policies import EpsilonMixturePolicy, RuleBasedPolicy
from simulator.config import STAGES, Scenario, load_scenario
from simulator.observation import ObservationLayout, observation_features, one_hot

MiB = 2**20
GiB = 2**30
START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday: each partition is one campaign week
MODEL_ID = "rules+eps-bench"
DONE_FILE = "_bench.json"  # written last: a kept export with it is complete ("_": not data)
DISK_MARGIN = 1.15  # Parquet sizes vary a little with the draws; 15 % headroom over the probe
PROBE_ROWS = 200_000


@dataclass
class Args:
    rows: list[int] = field(default_factory=lambda: [1_000_000, 10_000_000])
    weeks: int = 13  # a quarter: even the 1M export's weekly files exceed one 65,536-row batch
    n_bootstrap: int = 200
    epsilon: float = 0.1
    write_batch_rows: int = CHUNK_ROWS  # rows per record batch (row group), as `cvm logs export`
    seed: int = 0
    workdir: str | None = None
    keep: bool = False
    out: str = "bench/results/ope_export.json"


# --- a synthetic export ----------------------------------------------------------------------


class Generator:
    """Record batches of the scenario's export for customers ``[start, stop)`` in one week,
    drawn from the seed (seed, week, first customer): any batch is reproducible alone."""

    def __init__(self, scenario: Scenario, epsilon: float, seed: int) -> None:
        self.scenario, self.epsilon, self.seed = scenario, epsilon, seed
        self.layout = ObservationLayout.from_scenario(scenario)
        features = observation_features(scenario)
        self.low = np.array([f.low for f in features], dtype=np.float32)
        self.high = np.array([f.high for f in features], dtype=np.float32)
        self.logger = EpsilonMixturePolicy(scenario, RuleBasedPolicy(scenario), epsilon)
        self.action_names = pa.array(scenario.action_names(), pa.string())
        channels = list(scenario.channels.values())
        self.channel_cap = np.array([c.max_per_window for c in channels])
        self.opt_in_prob = np.array([c.opt_in_prob for c in channels])
        self.contact_cost = np.zeros(len(scenario.action_names()))
        self.contact_cost[1:] = np.tile([c.cost for c in channels], len(scenario.offers))
        segments = list(scenario.segments.values())
        self.segment_cdf = np.cumsum([s.share for s in segments]) / sum(s.share for s in segments)
        self.segment_rate = np.array([s.rate_multiplier for s in segments])
        # Per attribute: (segments, members) cumulative member probabilities, as the simulator's
        # tables (every attribute has a distribution for every segment: the scenario checks it).
        self.attribute_cdf = {
            name: np.cumsum([attribute.by_segment[s] for s in scenario.segments], axis=1)
            for name, attribute in scenario.attributes.items()
        }

    def file_schema(self) -> pa.Schema:
        """The export schema without ``date`` (the partition directory holds it), with the
        models in the metadata, as ``cvm logs export`` writes each file."""
        schema = EXPORT_SCHEMA.remove(EXPORT_SCHEMA.get_field_index("date"))
        return schema.with_metadata({MODELS_METADATA_KEY: json.dumps(self.models()).encode()})

    def models(self) -> dict[str, dict[str, Any]]:
        return {
            MODEL_ID: {
                "feature_names": [f.name for f in observation_features(self.scenario)],
                "action_names": self.scenario.action_names(),
                "kind": self.logger.name,
                "version": "bench",
            }
        }

    def customer_traits(
        self, customers: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Latent segment, opt-ins and profile attributes of each customer: the same every
        week (hashed from its index and the seed, not drawn from a batch's generator).

        The segment is drawn by the segments' shares, and each attribute's member from the
        scenario's distribution for the customer's segment (``attributes.*.by_segment``, by
        inverse transform, as the simulator draws them), so the attributes hint at the segment
        as they do in the simulator. A scenario must give every attribute a distribution for
        every segment, so none is ever drawn uniformly. The attributes are returned as their
        observation groups (one-hot, in ``members`` order)."""
        segment = np.searchsorted(self.segment_cdf, _uniform(customers, self.seed, 0))
        segment = np.minimum(segment, len(self.segment_cdf) - 1)
        opt_in = np.stack(
            [_uniform(customers, self.seed, 1 + c) < p for c, p in enumerate(self.opt_in_prob)],
            axis=1,
        )
        attributes: dict[str, np.ndarray] = {}
        for k, (name, cdf) in enumerate(self.attribute_cdf.items()):
            u = _uniform(customers, self.seed, 1 + len(self.opt_in_prob) + k)  # after opt-ins'
            # the first member whose cumulative probability exceeds u (never past the last)
            member = np.minimum((u[:, None] >= cdf[segment]).sum(axis=1), cdf.shape[1] - 1)
            attributes[name] = one_hot(member, cdf.shape[1])
        return segment, opt_in, attributes

    def batch(self, week: int, start: int, stop: int) -> pa.RecordBatch:
        sc = self.scenario
        rng = np.random.default_rng([self.seed, week, start])
        n = stop - start
        customers = np.arange(start, stop)
        segment, opt_in, attributes = self.customer_traits(customers)
        stage = rng.choice(len(STAGES), n, p=[0.05, 0.1, 0.4, 0.2, 0.1, 0.1, 0.05])
        recency = np.minimum(rng.geometric(0.12, n) - 1, 520)
        tenure = np.minimum(recency + rng.integers(0, 300, n), 520)
        frequency = np.minimum(rng.poisson(tenure / 10.0), 100_000)
        monetary = np.where(frequency > 0, rng.gamma(2.0, 20.0, n), 0.0)
        n_channels = len(sc.channels)
        since = np.minimum(rng.geometric(0.08, (n, n_channels)) - 1, 52)
        window = sc.constraints.cap_window_weeks
        counts = np.minimum(rng.poisson(0.4, (n, n_channels)), window)
        angle = 2.0 * np.pi * ((sc.start_week - 1 + week) % 52) / 52.0
        obs = self.layout.assemble(
            n,
            {
                "recency_weeks": recency,
                "frequency": frequency,
                "monetary_avg": monetary,
                "tenure_weeks": tenure,
                "weeks_since_contact": since,
                "contacts_in_window": counts,
                "opt_in": opt_in,
                "stage": one_hot(stage, len(STAGES)),
                **attributes,
                **({"segment": one_hot(segment, len(sc.segments))} if sc.segment_observed else {}),
                "week_of_year_sin": np.sin(angle),
                "week_of_year_cos": np.cos(angle),
                "horizon_progress": min(week, sc.horizon_weeks) / sc.horizon_weeks,
            },
        )
        assert ((obs >= self.low) & (obs <= self.high)).all()
        # The simulator's eligibility: opted in, under the channel's and the overall caps.
        channel_ok = (
            opt_in
            & (counts < self.channel_cap)
            & (counts.sum(axis=1) < sc.constraints.max_contacts_per_window)[:, None]
        )
        mask = np.empty((n, len(sc.action_names())), dtype=bool)
        mask[:, 0] = True
        mask[:, 1:] = np.tile(channel_ok, len(sc.offers))

        probabilities = self.logger.action_probabilities(obs, mask)
        cdf = probabilities.cumsum(axis=1)
        action = np.minimum((rng.random((n, 1)) > cdf).sum(axis=1), mask.shape[1] - 1)
        action = np.where(mask[np.arange(n), action], action, 0)  # rounding at the CDF's end
        propensity = probabilities[np.arange(n), action]
        greedy = probabilities.argmax(axis=1)

        base_rate = np.array([0.01, 0.12, 0.2, 0.08, 0.04, 0.01, 0.12])[stage]
        rate = np.minimum(base_rate * self.segment_rate[segment] * (1 + 0.5 * (action > 0)), 1)
        purchase = rng.random(n) < rate
        spend = np.where(purchase, rng.gamma(2.0, 15.0, n), 0.0)
        reward = spend - self.contact_cost[action]
        opt_out = (action > 0) & (rng.random(n) < 0.005)

        decided = START + timedelta(weeks=week)
        day_us = int(decided.timestamp() * 1e6)
        decided_at = day_us + np.arange(n, dtype=np.int64) * (12 * 3600 * 10**6 // max(n, 1))
        ids = pc.cast(pa.array(customers), pa.string())
        n_features, n_actions = obs.shape[1], mask.shape[1]
        arrays = {
            "event_id": pc.binary_join_element_wise("syn-", ids, f"-w{week}", ""),
            "customer_id": pc.binary_join_element_wise("syn-", ids, ""),
            "decided_at": pa.array(decided_at, pa.timestamp("us", tz="UTC")),
            "model_id": pa.array([MODEL_ID] * n, pa.string()),
            "model_version": pa.array(["bench"] * n, pa.string()),
            "learning_mode": pa.array(["online"] * n, pa.string()),
            "exploration": pa.array(["epsilon"] * n, pa.string()),
            "exploration_param": pa.array(np.full(n, self.epsilon)),
            "action_index": pa.array(action.astype(np.int32)),
            "action_name": self.action_names.take(pa.array(action)),
            "propensity": pa.array(propensity),
            "policy_action_index": pa.array(action.astype(np.int32)),
            "policy_propensity": pa.array(propensity),
            "baseline_action_index": pa.nulls(n, pa.int32()),
            "explored": pa.array(action != greedy),
            "features": _lists(obs.ravel(), n, n_features, pa.float32()),
            "eligible": _lists(mask.ravel(), n, n_actions, pa.bool_()),
            "probabilities": _lists(probabilities.ravel(), n, n_actions, pa.float64()),
            "reward": pa.array(reward),
            "purchase": pa.array(purchase),
            "spend": pa.array(spend),
            "opt_out": pa.array(opt_out),
            "executed_action_index": pa.nulls(n, pa.int32()),
            "reported_at": pa.array(decided_at + 7 * 86400 * 10**6, pa.timestamp("us", tz="UTC")),
            "outcome_status": pa.array(["reported"] * n, pa.string()),
        }
        schema = self.file_schema()
        return pa.RecordBatch.from_arrays([arrays[name] for name in schema.names], schema=schema)


def _uniform(customers: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """A uniform number in [0, 1) per customer for each (seed, stream): splitmix64."""
    x = customers.astype(np.uint64) * np.uint64(64) + np.uint64(stream)
    x += np.uint64(seed) * np.uint64(0x632BE59BD9B4E019) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _lists(values: np.ndarray, n: int, width: int, value_type: pa.DataType) -> pa.Array:
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values, value_type))


def customers_per_week(rows: int, weeks: int) -> list[int]:
    """Rows of each week: every customer every week, the last week short of the remainder
    (customers gone before the end)."""
    customers = math.ceil(rows / weeks)
    out = [customers] * weeks
    out[-1] -= customers * weeks - rows
    return out


def write_export(root: Path, rows: int, args: Args) -> dict[str, Any]:
    """The synthetic export of ``rows`` rows under ``root``; what was written."""
    start = time.perf_counter()
    generator = Generator(load_scenario("default"), args.epsilon, args.seed)
    root.mkdir(parents=True)
    schema = generator.file_schema()
    written = 0
    for week, n in enumerate(customers_per_week(rows, args.weeks)):
        date = (START + timedelta(weeks=week)).strftime("%Y-%m-%d")
        path = root / f"date={date}" / "part-0.parquet"
        path.parent.mkdir()
        with pq.ParquetWriter(path, schema) as writer:
            for first in range(0, n, args.write_batch_rows):
                batch = generator.batch(week, first, min(first + args.write_batch_rows, n))
                writer.write_batch(batch)
                written += batch.num_rows
    (root / MODELS_FILE).write_text(json.dumps(generator.models(), indent=2, sort_keys=True))
    assert written == rows
    summary = {
        "rows": rows,
        "customers": math.ceil(rows / args.weeks),
        "partitions": args.weeks,
        "rows_per_partition": math.ceil(rows / args.weeks),
        "bytes": directory_bytes(root),
        "write_s": time.perf_counter() - start,
        "seed": args.seed,
        "epsilon": args.epsilon,
    }
    (root / DONE_FILE).write_text(json.dumps(summary))
    return summary


def directory_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def check_disk(workdir: Path, need: float, what: str) -> None:
    free = shutil.disk_usage(workdir).free
    if free < need:
        raise SystemExit(
            f"not enough disk under {workdir} for {what}: about {need / GiB:.1f} GiB needed "
            f"(bytes per row of a probe export x {DISK_MARGIN:g}), {free / GiB:.1f} GiB free; "
            "pass --workdir on a larger disk, or fewer --rows"
        )


# --- children: each export is written and evaluated in a fresh process ----------------------
# A child's ru_maxrss starts at its parent's resident size (Linux carries the high-water mark
# across fork and exec), so the parent does no heavy work itself: its size stays below any
# child's. VmHWM (the child's own peak, Linux only) is recorded beside it as a check.


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def own_peak_bytes() -> int | None:
    """VmHWM: the peak resident size of this process's own address space (None if unknown)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def child_arguments(args: Args, rows: int) -> list[str]:
    return [
        *("--rows", str(rows), "--weeks", str(args.weeks), "--epsilon", str(args.epsilon)),
        *("--seed", str(args.seed), "--n-bootstrap", str(args.n_bootstrap)),
        *("--write-batch-rows", str(args.write_batch_rows)),
    ]


def run_child(mode: str, path: Path, arguments: list[str]) -> dict[str, Any]:
    """Run ``python -m bench.ope_export {mode} {path} ...``; its last line of output, parsed."""
    command = [sys.executable, "-m", "bench.ope_export", mode, str(path), *arguments]
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=root)
    if done.returncode:
        raise SystemExit(f"{mode} {path} failed:\n{done.stderr}")
    parsed: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return parsed


def evaluate_child(path: str, n_bootstrap: int, seed: int) -> dict[str, Any]:
    """Evaluate the export at ``path`` as ``cvm ope report --no-long-run`` would stream it:
    times, peaks (at each step and at the end) and the results."""
    from cvm_rl.ope.streaming import evaluate_export_streaming
    from cvm_rl.policies import NoContactPolicy

    scenario = load_scenario("default")
    candidates = {"rules": RuleBasedPolicy(scenario), "no_contact": NoContactPolicy(scenario)}
    phases: list[dict[str, Any]] = []
    start = time.perf_counter()

    def progress(done: int, total: int, description: str) -> None:
        phases.append(
            {
                "at_s": time.perf_counter() - start,
                "step": description,
                "max_rss": max_rss_bytes(),
                "vm_hwm": own_peak_bytes(),
            }
        )

    after_imports = {"max_rss": max_rss_bytes(), "vm_hwm": own_peak_bytes()}
    result = evaluate_export_streaming(
        path, candidates, scenario=scenario, n_bootstrap=n_bootstrap, seed=seed, progress=progress
    )
    return {
        "wall_s": time.perf_counter() - start,
        "max_rss": max_rss_bytes(),
        "vm_hwm": own_peak_bytes(),
        "after_imports": after_imports,
        "phases": phases,
        "decisions": result.data.decisions,
        "customers": result.data.customers,
        "reward_model_rows": result.data.reward_model_rows,
        "logged_per_decision": asdict(result.logger.per_decision),
        "dr_lift": {c.name: asdict(c.single_step_estimate("dr").lift) for c in result.candidates},
        "verdicts": {c.name: c.verdict for c in result.candidates},
        "recommendation": result.recommendation.line,
    }


# --- main ------------------------------------------------------------------------------------


def export_for(rows: int, args: Args, workdir: Path, per_row: list[float]) -> tuple[Path, dict]:
    """The export of ``rows`` rows: kept from an earlier run with the same settings, or
    written after checking the disk (bytes per row measured once, on a probe export)."""
    root = workdir / f"export_{rows}_weeks{args.weeks}_seed{args.seed}"
    done = root / DONE_FILE
    if done.is_file():
        kept: dict[str, Any] = json.loads(done.read_text())
        if (kept["epsilon"], kept["partitions"]) == (args.epsilon, args.weeks):
            print(f"[export] {rows:,} rows: kept from an earlier run ({root})", flush=True)
            return root, kept
    shutil.rmtree(root, ignore_errors=True)
    if not per_row:
        probe = workdir / "probe"
        shutil.rmtree(probe, ignore_errors=True)
        check_disk(workdir, PROBE_ROWS * 1_000 * DISK_MARGIN, "the probe export")
        written = run_child("--write", probe, child_arguments(args, PROBE_ROWS))
        shutil.rmtree(probe)
        per_row.append(written["bytes"] / PROBE_ROWS)
    need = rows * per_row[0] * DISK_MARGIN
    print(f"[export] {rows:,} rows: about {need / GiB:.2f} GiB on disk", flush=True)
    check_disk(workdir, need, f"the {rows:,}-row export")
    written = run_child("--write", root, child_arguments(args, rows))
    print(f"[export] {rows:,} rows written in {written['write_s']:.0f} s", flush=True)
    return root, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=Args().rows)
    parser.add_argument("--weeks", type=int, default=Args.weeks)
    parser.add_argument("--n-bootstrap", type=int, default=Args.n_bootstrap)
    parser.add_argument("--epsilon", type=float, default=Args.epsilon)
    parser.add_argument("--write-batch-rows", type=int, default=Args.write_batch_rows)
    parser.add_argument("--seed", type=int, default=Args.seed)
    parser.add_argument("--workdir", default=None, help="exports go here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the exports (and reuse them)")
    parser.add_argument("--out", default=Args.out)
    # The children's modes: write one export, or evaluate one.
    parser.add_argument("--write", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--evaluate", default=None, help=argparse.SUPPRESS)
    parsed = vars(parser.parse_args())
    write_path, evaluate_path = parsed.pop("write"), parsed.pop("evaluate")
    args = Args(**parsed)
    if write_path is not None:
        print(json.dumps(write_export(Path(write_path), args.rows[0], args)))
        return
    if evaluate_path is not None:
        print(json.dumps(evaluate_child(evaluate_path, args.n_bootstrap, args.seed)))
        return
    if args.weeks < 1 or min(args.rows) < args.weeks:
        raise SystemExit(f"--rows: each size must be at least --weeks ({args.weeks})")

    temporary = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ope_export_"))
    workdir.mkdir(parents=True, exist_ok=True)
    sizes = []
    per_row: list[float] = []
    try:
        for rows in args.rows:
            root, written = export_for(rows, args, workdir, per_row)
            print(f"[evaluate] {rows:,} rows", flush=True)
            evaluation = run_child("--evaluate", root, child_arguments(args, rows))
            sizes.append({"export": written, "evaluation": evaluation})
            if not args.keep:
                shutil.rmtree(root)
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)

    base = sizes[0]["evaluation"]["max_rss"]
    print(
        f"streaming OPE of synthetic exports ({args.weeks} weekly partitions; candidates rules, "
        f"no_contact and the logger's self-check; {args.n_bootstrap} Poisson resamples), each "
        "evaluated in a fresh process"
    )
    print(
        "| rows | customers | rows per file | export on disk | wall time "
        "| pass 1 / reward model / pass 2 | peak RSS | after imports | peak / first size's |"
    )
    print("|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for size in sizes:
        export, evaluation = size["export"], size["evaluation"]
        at = [p["at_s"] for p in evaluation["phases"]]
        steps = " / ".join(f"{b - a:.0f} s" for a, b in itertools.pairwise(at))
        print(
            f"| {export['rows']:,} | {evaluation['customers']:,} "
            f"| {export['rows_per_partition']:,} | {export['bytes'] / GiB:.2f} GiB "
            f"| {evaluation['wall_s']:.0f} s | {steps} | {evaluation['max_rss'] / MiB:,.0f} MiB "
            f"| {evaluation['after_imports']['max_rss'] / MiB:,.0f} MiB "
            f"| {evaluation['max_rss'] / base:.2f} |"
        )
    for size in sizes:
        evaluation = size["evaluation"]
        lifts = ", ".join(
            f"{name} {lift['estimate']:+.4f} [{lift['low']:+.4f}, {lift['high']:+.4f}]"
            for name, lift in evaluation["dr_lift"].items()
        )
        print(f"{size['export']['rows']:,} rows, DR lift per decision: {lifts}")

    write_result(
        {
            "machine": machine_info("pyarrow"),
            "args": {**asdict(args), "workdir": None if temporary else args.workdir},
            "sizes": sizes,
            "peak_ratio_to_first": [s["evaluation"]["max_rss"] / base for s in sizes],
        },
        args.out,
    )


if __name__ == "__main__":
    main()
