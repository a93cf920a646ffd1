"""``cvm logs``: export a decision log to Parquet, prune what was exported, or write a
simulated log.

``cvm logs export --log PATH --out DIR [--shard NAME]`` joins decisions with their outcomes
into a Parquet dataset partitioned by date (a shard per log when several logs share one
``--out``), records the export in the log and prints a one-line summary;
``cvm logs prune --log PATH --before DATE [--dry-run]`` deletes the decisions decided before
DATE (UTC) that an export holds with their final outcome, and refuses when some have not been
exported; ``cvm logs simulate --log PATH (--policy NAME | --bundle DIR)`` runs a reference
policy or a bundle on simulated customers and logs every decision and outcome in the
service's schema.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cvm_rl.cli.common import (
    CliError,
    HelpFormatter,
    bundle_dir,
    finite_float,
    needs_extra,
    non_negative_float,
    positive_int,
)
from cvm_rl.registry import REFERENCE_POLICIES

HELP = "export a decision log to Parquet, prune exported decisions, or simulate a log"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``cvm logs export`` and ``cvm logs simulate`` subcommands to ``parser``."""
    sub = parser.add_subparsers(dest="logs_command", required=True, metavar="ACTION")

    export = sub.add_parser(
        "export",
        help="decisions joined with outcomes, as Parquet partitioned by date",
        description="Join decisions with their outcomes into Parquet partitioned by date.",
        formatter_class=HelpFormatter,
    )
    export.add_argument("--log", required=True, type=Path, help="decision log (SQLite file)")
    export.add_argument("--out", required=True, type=Path, help="output dataset directory")
    export.add_argument(
        "--outcome-window-days",
        type=non_negative_float,
        default=7.0,
        help="days after a decision before a missing outcome counts as the default reward "
        "(default: %(default)s)",
    )
    export.add_argument(
        "--default-reward",
        type=finite_float,
        default=0.0,
        help="reward of a decision whose outcome never came (default: %(default)s)",
    )
    export.add_argument(
        "--include-pending",
        action="store_true",
        help="also export decisions still inside the outcome window (reward null)",
    )
    export.add_argument(
        "--shard",
        metavar="NAME",
        help="this log's name among several exported into one --out (e.g. one log per "
        "replica): its files are part-NAME-N.parquet, and only they are replaced",
    )

    prune = sub.add_parser(
        "prune",
        help="delete exported decisions older than a date (bounded disk)",
        description="Delete the decisions decided before DATE (UTC midnight) that a recorded "
        "`cvm logs export` holds with their final outcome, with their outcomes and "
        "unshared requests; refuse when some have not been exported. Safe while the service "
        "writes: short transactions of --batch-rows decisions.",
        formatter_class=HelpFormatter,
    )
    prune.add_argument("--log", required=True, type=Path, help="decision log (SQLite file)")
    prune.add_argument(
        "--before", required=True, type=utc_date, metavar="DATE", help="UTC date YYYY-MM-DD"
    )
    prune.add_argument("--dry-run", action="store_true", help="count what would go, delete nothing")
    prune.add_argument(
        "--batch-rows", type=positive_int, default=2000, help="decisions per transaction"
    )

    simulate = sub.add_parser(
        "simulate",
        help="log a policy's decisions on simulated customers",
        description="Log a policy's decisions and outcomes on simulated customers.",
        formatter_class=HelpFormatter,
    )
    simulate.add_argument("--log", required=True, type=Path, help="decision log to write")
    who = simulate.add_mutually_exclusive_group(required=True)
    who.add_argument("--policy", help=f"reference policy: {', '.join(REFERENCE_POLICIES)}")
    who.add_argument("--bundle", help="bundle directory or cvm train run directory")
    simulate.add_argument(
        "--scenario",
        help="built-in name or TOML path (default: the bundle's scenario, else 'default')",
    )
    simulate.add_argument(
        "--customers", type=positive_int, default=1000, help="simulated customers"
    )
    simulate.add_argument(
        "--weeks", type=positive_int, help="weeks to simulate (default: the scenario's horizon)"
    )
    simulate.add_argument(
        "--seed", type=int, default=0, help="seeds the population and the policy's draws"
    )
    simulate.add_argument(
        "--no-probabilities",
        action="store_true",
        help="do not store the policy's distribution per decision (smaller log)",
    )


def utc_date(text: str) -> int:
    """``YYYY-MM-DD`` as microseconds since the epoch at UTC midnight (argparse type)."""
    from cvm_rl.logs.retention import parse_date

    try:
        return parse_date(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    """Run ``cvm logs export``, ``prune`` or ``simulate``."""
    if args.logs_command == "export":
        return _run_export(args)
    if args.logs_command == "prune":
        return _run_prune(args)
    return _run_simulate(args)


def _run_prune(args: argparse.Namespace) -> int:
    from cvm_rl.logs.records import DecisionLogError
    from cvm_rl.logs.retention import PruneRefused, prune_log

    try:
        summary = prune_log(args.log, args.before, dry_run=args.dry_run, batch_rows=args.batch_rows)
    except PruneRefused as exc:
        raise CliError(str(exc)) from None  # names --before
    except (FileNotFoundError, DecisionLogError) as exc:
        raise CliError(f"--log: {exc}") from None
    print("\n".join(summary.lines()))
    return 0


def _run_export(args: argparse.Namespace) -> int:
    with needs_extra("export", "logs export"):
        from cvm_rl.logs.export import SHARD_PATTERN, export_parquet
    from cvm_rl.logs.records import DecisionLogError

    if args.shard is not None and not SHARD_PATTERN.fullmatch(args.shard):
        raise CliError(
            f"--shard: {args.shard!r} is not a shard name (letters, digits, '_', '.', '-', "
            "not first; at most 64 characters)"
        )
    try:
        summary = export_parquet(
            args.log,
            args.out,
            outcome_window_s=args.outcome_window_days * 86400,
            default_reward=args.default_reward,
            include_pending=args.include_pending,
            record=True,
            shard=args.shard,
        )
    except (FileNotFoundError, DecisionLogError) as exc:
        raise CliError(f"--log: {exc}") from None
    except OSError as exc:
        raise CliError(f"--out: {exc}") from None
    print(summary.line())
    return 0


def _run_simulate(args: argparse.Namespace) -> int:
    from cvm_rl.bundle import load_bundle
    from cvm_rl.logs.records import DecisionLogError, ModelRecord
    from cvm_rl.logs.simulated import simulate_to_log
    from cvm_rl.logs.store import DecisionLog
    from cvm_rl.registry import reference_policy
    from simulator.config import load_scenario
    from simulator.core import observation_feature_names

    if args.bundle is not None:
        bundle = load_bundle(bundle_dir(args.bundle), seed=args.seed)
        policy, model = bundle.policy, ModelRecord.from_bundle(bundle)
        scenario = bundle.scenario if args.scenario is None else load_scenario(args.scenario)
        if (model.feature_names, model.action_names) != (
            observation_feature_names(scenario),
            scenario.action_names(),
        ):
            raise CliError(
                f"--scenario: bundle {args.bundle} was trained on scenario "
                f"'{bundle.scenario.name}' whose features or actions differ from "
                f"'{scenario.name}'"
            )
    else:
        if args.policy not in REFERENCE_POLICIES:
            raise CliError(f"--policy: unknown {args.policy!r}; allowed {list(REFERENCE_POLICIES)}")
        scenario = load_scenario(args.scenario or "default")
        policy, model = reference_policy(args.policy, scenario), None
    weeks = scenario.horizon_weeks if args.weeks is None else args.weeks
    if weeks > scenario.horizon_weeks:
        raise CliError(
            f"--weeks: at most the scenario's horizon of {scenario.horizon_weeks}, got {weeks}"
        )
    try:
        with DecisionLog(args.log) as log:
            summary = simulate_to_log(
                policy,
                scenario,
                log,
                customers=args.customers,
                weeks=weeks,
                seed=args.seed,
                model=model,
                probabilities=not args.no_probabilities,
            )
    except DecisionLogError as exc:
        raise CliError(f"--log: {exc}") from None
    except ValueError as exc:  # names the argument (seed, model, ...)
        raise CliError(f"logs simulate: {exc}") from None
    print(
        f"logged {summary.decisions} decisions and {summary.outcomes} outcomes of "
        f"{summary.model_id} (seed {summary.seed}, {args.customers} customers x {weeks} weeks, "
        f"mean reward {summary.total_reward / summary.decisions:.4f}) to {args.log}"
    )
    return 0
