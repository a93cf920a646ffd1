"""``cvm demo``: the main job end to end on the embedded defaults.

Trains LinUCB and a short MaskablePPO run, evaluates them beside the baselines, the greedy
uplift model, the CLV planner and the oracle on held-out customers (value over the year,
residual value and long-run value, with paired lifts), writes bundles, ``evaluation.json``
and plots. Then it runs the current campaign as a campaign team would: the rule-based policy,
saved as a bundle, served by ``cvm serve`` with epsilon exploration (so the log supports
off-policy evaluation) to a simulated campaign engine (a client of the service) for 2,000
customers x 52 weeks; stops the server with SIGTERM, exports the decision log, and ends with
``cvm ope report``: the trained bundles (and the rules bundle itself) evaluated off-policy
against the served campaign, in ``ope/report.html``, and a check of its long-run lifts
against the simulator (each candidate run on the served customers).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cvm_rl.cli.common import add_seed_arguments, needs_extra, positive_int, seeds_from_args

if TYPE_CHECKING:
    import numpy as np

    from cvm_rl.ope.results import OpeResult

NAME = "demo"
HELP = (
    "the main job: train, evaluate, save bundles and plots, serve the rules campaign, "
    "evaluate the trained bundles off-policy on its log"
)
DEMO_PPO_STEPS = 3_000_000
CAMPAIGN_CUSTOMERS = 2_000
CAMPAIGN_WEEKS = 52
CAMPAIGN_EPSILON = 0.1
CAMPAIGN_SEED = 2026


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="directory for runs, results, plots")
    parser.add_argument(
        "--ppo-steps",
        type=positive_int,
        default=DEMO_PPO_STEPS,
        help="MaskablePPO training budget in customer-weeks",
    )
    parser.add_argument(
        "--customers", type=positive_int, default=10_000, help="held-out customers per seed"
    )
    add_seed_arguments(parser, default_count=3)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from cvm_rl.cli.evaluate import evaluate_and_report
    from cvm_rl.train_config import TrainConfig

    # Every leg's libraries up front: a missing one fails now, not after minutes of training.
    with needs_extra("all", "demo"):
        import matplotlib  # noqa: F401
        import pyarrow  # noqa: F401

        import server.app  # noqa: F401
        from cvm_rl.training import train

    out = Path(args.out)
    runs = {
        "linucb": TrainConfig(algo="linucb", steps=1_040_000, n_envs=10_000),
        "maskable_ppo": TrainConfig(algo="maskable_ppo", steps=args.ppo_steps),
    }
    for name, config in runs.items():
        print(f"[train] {name}: {config.steps:,} customer-weeks")
        result = train(config, out / name, progress_bar=not args.no_progress)
        print(f"[train] {name}: {result.seconds:.1f} s, bundle {out / name / 'bundle'}")
    evaluate_and_report(
        scenario_name="default",
        policy_names=["no_contact", "random", "rules", "greedy", "clv_planner", "oracle"],
        bundle_paths=[str(out / name) for name in runs],
        customers=args.customers,
        seeds=seeds_from_args(args),
        json_path=out / "evaluation.json",
        plots_dir=out / "plots",
    )
    # The serving leg: the current campaign (the rules, as a bundle) served with epsilon
    # exploration, a simulated campaign engine deciding and reporting outcomes through the
    # client for a year, then a clean stop and the export.
    from cvm_rl.bundle import save_bundle
    from cvm_rl.cli.ope import summary_lines, write_ope_report
    from cvm_rl.policies import RuleBasedPolicy
    from simulator.config import load_scenario

    rules = save_bundle(
        RuleBasedPolicy(load_scenario("default")),
        out / "rules" / "bundle",
        algo="rules",
        training_config={},
    )
    print(
        f"[serve] starting cvm serve on {rules} with epsilon {CAMPAIGN_EPSILON:g} exploration "
        f"for {CAMPAIGN_CUSTOMERS:,} customers x {CAMPAIGN_WEEKS} weeks"
    )
    summary = run_serving_demo(
        rules,
        out / "serve",
        customers=CAMPAIGN_CUSTOMERS,
        weeks=CAMPAIGN_WEEKS,
        seed=CAMPAIGN_SEED,
        serve_args=["--exploration", "epsilon", "--epsilon", str(CAMPAIGN_EPSILON)],
    )
    print(format_summary(summary))
    # The trained bundles against the served campaign, from its log alone; the rules bundle
    # is the campaign without its exploration.
    started = time.perf_counter()
    candidates = [out / "maskable_ppo", out / "linucb", rules]
    written = write_ope_report(
        logs=summary.parquet_dir,
        policies=candidates,
        out=out / "ope",
        show_progress=not args.no_progress,
    )
    for line in summary_lines(written):
        print(f"[ope] {line}")
    print(f"[ope] {time.perf_counter() - started:.1f} s")
    # The simulator knows what the report can only estimate: each candidate run on-policy on
    # the very customers the campaign served.
    for line in simulator_check(written.result, candidates, summary, seed=CAMPAIGN_SEED):
        print(f"[check] {line}")
    return 0 if summary.exit_code == 0 and summary.replay_identical else 1


@dataclass(frozen=True)
class ServingDemoSummary:
    model_id: str
    port: int
    decisions: int
    contacts: int
    explored: int
    mean_propensity: float
    outcomes_recorded: int
    total_reward: float
    replay_identical: bool
    logged_decisions: int
    logged_outcomes: int
    exit_code: int
    parquet_rows: int
    parquet_dir: str
    seconds: float
    customer_ids: tuple[str, ...]  # the served customers, in the simulator's order


def run_serving_demo(
    bundle_dir: str | Path,
    out: str | Path,
    *,
    customers: int = 1_000,
    weeks: int = 4,
    seed: int = CAMPAIGN_SEED,
    serve_args: Sequence[str] = (),
) -> ServingDemoSummary:
    """Serve ``bundle_dir`` (``serve_args``: more ``cvm serve`` options, e.g. exploration),
    run ``weeks`` of decisions and outcomes for ``customers`` simulated customers, stop the
    server with SIGTERM and export the log to Parquet."""
    from cvm_rl.bundle import load_bundle
    from cvm_rl.cli.process import serve_process
    from cvm_rl.logs.export import export_parquet
    from cvm_rl.logs.store import DecisionLog, now_us
    from cvm_rl.loop.engine import SimulatedCampaignEngine
    from server.client import DecisionClient

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "decisions.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{log_path}{suffix}").unlink(missing_ok=True)
    bundle = load_bundle(bundle_dir)
    args = ["--bundle", str(bundle_dir), "--log", str(log_path), *serve_args]
    with serve_process(args, out) as server:
        port = server.port
        with DecisionClient(server.target) as client:
            model_id = client.policy_info().model_id
            engine = SimulatedCampaignEngine(
                client, bundle.scenario, customers=customers, seed=seed, prefix=f"demo-{seed}"
            )
            stats = engine.run(weeks)
            first = stats.first
            assert first is not None and stats.first_features is not None
            assert stats.first_eligibility is not None
            replay = client.decide_batch(
                [first.customer_id],
                stats.first_features,
                event_ids=[first.event_id],
                eligibility=[stats.first_eligibility],
            )[0]
        exit_code = server.stop()
    with DecisionLog(log_path) as decision_log:
        logged_decisions = decision_log.count("decisions")
        logged_outcomes = decision_log.count("outcomes")
    # Outcome window 0: every decision's window has passed, so the export is complete now.
    export = export_parquet(log_path, out / "parquet", outcome_window_s=0.0, now_us=now_us())
    return ServingDemoSummary(
        model_id=model_id,
        port=port,
        decisions=stats.decisions,
        contacts=stats.contacts,
        explored=stats.explored,
        mean_propensity=stats.mean_propensity,
        outcomes_recorded=stats.outcomes_recorded,
        total_reward=stats.total_reward,
        replay_identical=replay == first,
        logged_decisions=logged_decisions,
        logged_outcomes=logged_outcomes,
        exit_code=exit_code,
        parquet_rows=export.rows,
        parquet_dir=str(out / "parquet"),
        seconds=time.perf_counter() - start,
        customer_ids=tuple(engine.customer_ids),
    )


def served_returns(served: ServingDemoSummary) -> np.ndarray:
    """Each served customer's logged return (the sum of its rewards in the export), in the
    simulator's order of customers."""
    import numpy as np

    from cvm_rl.ope.inputs import load_log

    decisions = load_log(served.parquet_dir).decisions
    order = {customer: i for i, customer in enumerate(served.customer_ids)}
    rows = np.array([order[str(c)] for c in decisions.customer_ids])
    return np.bincount(rows, weights=decisions.data.rewards, minlength=len(order))


def simulator_check(
    result: OpeResult,
    bundles: Sequence[str | Path],
    served: ServingDemoSummary,
    *,
    seed: int,
) -> list[str]:
    """Each candidate's long-run lift from the OPE report beside its true lift: the candidate
    run on the simulator on the served customers (population ``seed``, the log's weeks) minus
    what each of them earned under the logger (the export's rewards), with the standard error
    of that paired difference over the customers. One run each: once decisions differ from
    the log, the simulator's later random draws differ too, which that error includes."""
    import numpy as np

    from cvm_rl.bundle import load_bundle
    from cvm_rl.cli.common import bundle_dir
    from cvm_rl.ope.formatting import format_interval
    from cvm_rl.ope.intervals import Interval
    from cvm_rl.rollout import rollout

    by_name = {c.name: c for c in result.candidates if not c.self_check}
    weeks = result.data.weeks
    if weeks is None:
        return ["no long-run estimates to check"]
    logged = served_returns(served)
    lines = []
    for path in bundles:
        bundle = load_bundle(bundle_dir(path), seed=seed)
        candidate = by_name.get(bundle.policy.name)
        if candidate is None or candidate.long_run_primary is None:
            continue
        values = np.zeros(len(logged))
        for step in rollout(
            bundle.policy, bundle.scenario, n_customers=len(logged), seed=seed, weeks=weeks
        ):
            values += step.reward
        difference = values - logged
        lift = float(difference.mean())
        half = 1.96 * float(difference.std(ddof=1) / np.sqrt(len(difference)))
        truth = Interval(lift, lift - half, lift + half, 0.05, "one simulated run, paired")
        estimate = candidate.long_run_estimate(candidate.long_run_primary).lift
        overlap = estimate.low <= truth.high and truth.low <= estimate.high
        lines.append(
            f"{candidate.name}: true long-run lift on the served customers "
            f"{format_interval(truth, signed=True)} (95% interval of one simulated run); it "
            f"{'overlaps' if overlap else 'misses'} the report's "
            f"{candidate.long_run_primary.upper()} interval "
            f"{format_interval(estimate, signed=True)}"
        )
    return lines


def format_summary(s: ServingDemoSummary) -> str:
    return "\n".join(
        [
            f"[serve] cvm serve on 127.0.0.1:{s.port} with {s.model_id}; stopped by SIGTERM, "
            f"exit code {s.exit_code}",
            f"[serve] {s.decisions:,} decisions ({s.contacts:,} contacts, {s.explored:,} "
            f"explored, mean propensity {s.mean_propensity:.3f}); {s.outcomes_recorded:,} "
            f"outcomes reported (total reward {s.total_reward:,.1f})",
            f"[serve] replaying an event id returned the same decision: {s.replay_identical}",
            f"[serve] log: {s.logged_decisions:,} decisions, {s.logged_outcomes:,} outcomes; "
            f"Parquet export: {s.parquet_rows:,} rows in {s.parquet_dir} "
            f"({s.seconds:.1f} s in all)",
        ]
    )
