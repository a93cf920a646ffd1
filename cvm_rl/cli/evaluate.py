"""``cvm evaluate``: policies and trained bundles on held-out simulated customers.

Every policy runs on the same populations (one per seed, common random numbers), so lifts are
paired. The table gives value per customer over the horizon with 95 % CIs over seeds, the
paired lift over no contact, the share of the oracle's lift, the residual value customers carry
out of the horizon (the next 52 weeks' expected no-contact margin, discounted at 10 % a year),
the long-run value (their sum) and its paired lift, costs, contacts, opt-outs and churn.

  cvm evaluate --bundles runs/mppo runs/ucb --policies no_contact rules greedy oracle \\
      --customers 20000 --seeds 5 --json runs/eval.json --plots runs/plots
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cvm_rl.cli.common import (
    CliError,
    add_scenario_argument,
    add_seed_arguments,
    bundle_dir,
    needs_extra,
    positive_int,
    seeds_from_args,
)
from cvm_rl.registry import BASELINES, REFERENCE_POLICIES

if TYPE_CHECKING:
    from cvm_rl.evaluation import PolicyResult
    from cvm_rl.policies.base import Policy
    from simulator.config import Scenario

HELP = "evaluate policies and trained bundles on held-out simulated customers"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_scenario_argument(parser)
    parser.add_argument(
        "--policies",
        nargs="*",
        default=[*BASELINES, "oracle"],
        metavar="NAME",
        help=f"reference policies, any of: {', '.join(REFERENCE_POLICIES)}",
    )
    parser.add_argument(
        "--bundles", nargs="*", default=[], metavar="PATH", help="bundles or cvm train run dirs"
    )
    parser.add_argument(
        "--customers", type=positive_int, default=20_000, help="customers per population"
    )
    add_seed_arguments(parser, default_count=5)
    parser.add_argument("--json", help="also write per-seed metrics and summaries to this file")
    parser.add_argument("--plots", help="write PNG plots into this directory")


def run(args: argparse.Namespace) -> int:
    evaluate_and_report(
        scenario_name=args.scenario,
        policy_names=args.policies,
        bundle_paths=args.bundles,
        customers=args.customers,
        seeds=seeds_from_args(args),
        json_path=args.json,
        plots_dir=args.plots,
    )
    return 0


def evaluate_and_report(
    *,
    scenario_name: str,
    policy_names: Sequence[str],
    bundle_paths: Sequence[str],
    customers: int,
    seeds: list[int],
    json_path: str | Path | None,
    plots_dir: str | Path | None,
) -> list[PolicyResult]:
    """Evaluate, print the table, and write the JSON and plots when asked."""
    from cvm_rl.evaluation import evaluate_policies, format_table, results_to_dict
    from simulator.config import load_scenario

    scenario = load_scenario(scenario_name)
    policies = evaluation_policies(scenario, policy_names, bundle_paths)
    print(
        f"scenario '{scenario.name}': {customers} customers x {scenario.horizon_weeks} weeks, "
        f"{len(seeds)} held-out seeds {seeds}"
    )
    start = time.perf_counter()
    results = evaluate_policies(policies, scenario, n_customers=customers, seeds=seeds)
    print(format_table(results))
    print(
        f"({time.perf_counter() - start:.1f} s; value = net margin per customer over the horizon)"
    )
    if json_path:
        payload = {
            "scenario": scenario.name,
            "customers": customers,
            "seeds": seeds,
            **results_to_dict(results),
        }
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {json_path}")
    if plots_dir:
        for path in write_evaluation_plots(results, plots_dir):
            print(f"wrote {path}")
    return results


def evaluation_policies(
    scenario: Scenario, names: Sequence[str], bundles: Sequence[str]
) -> list[Policy]:
    """Reference policies by name and bundles by path; the oracle (the yardstick) last."""
    from cvm_rl.bundle import load_bundle
    from cvm_rl.registry import reference_policy
    from simulator.core import observation_feature_names

    unknown = [p for p in names if p not in REFERENCE_POLICIES]
    if unknown:
        raise CliError(f"--policies: unknown {unknown}; allowed {list(REFERENCE_POLICIES)}")
    policies = [reference_policy(name, scenario) for name in names if name != "oracle"]
    for path in bundles:
        bundle = load_bundle(bundle_dir(path))
        if bundle.feature_names != observation_feature_names(scenario) or (
            bundle.action_names != scenario.action_names()
        ):
            raise CliError(
                f"--bundles: {path} was trained on scenario '{bundle.scenario.name}' whose "
                f"features or actions differ from scenario '{scenario.name}'"
            )
        policies.append(bundle.policy)
    if "oracle" in names:
        policies.append(reference_policy("oracle", scenario))
    seen = [p.name for p in policies]
    dupes = sorted({n for n in seen if seen.count(n) > 1})
    if dupes:
        raise CliError(f"--bundles: two policies are called {dupes}; name runs apart")
    return policies


def write_evaluation_plots(results: Sequence[PolicyResult], out: str | Path) -> list[Path]:
    """The evaluation plots: values with CIs, value by segment and stage, action mix."""
    with needs_extra("plots", "--plots"):
        from cvm_rl.plots import plot_action_mix, plot_policy_values, plot_value_by_group

    out = Path(out)
    return [
        plot_policy_values(results, out / "policy_values.png"),
        plot_value_by_group(results, out / "value_by_segment.png", by="segment"),
        plot_value_by_group(results, out / "value_by_stage.png", by="stage"),
        plot_action_mix([r for r in results if r.policy != "no_contact"], out / "action_mix.png"),
    ]
