"""The ``cvm`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cvm_rl.calibration import add_calibrate_arguments, run_calibrate
from cvm_rl.evaluation import evaluate_policies, format_table
from cvm_rl.policies import NoContactPolicy, Policy, RandomPolicy, RuleBasedPolicy
from simulator.config import Scenario, ScenarioError, builtin_scenarios, load_scenario

BASELINES: dict[str, type[Policy]] = {
    "no_contact": NoContactPolicy,
    "random": RandomPolicy,
    "rules": RuleBasedPolicy,
}


def _seeds(text: str) -> list[int]:
    """``"5"`` means seeds 0..4 offset by 1000 (held out from training seeds); ``"1,2,3"`` lists."""
    try:
        if "," in text:
            return [int(s) for s in text.split(",") if s.strip()]
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a count or a comma list of ints, got {text!r}"
        ) from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"seed count must be >= 1, got {count}")
    return [1000 + i for i in range(count)]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _run_simulate(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario)
    unknown = [p for p in args.policies if p not in BASELINES]
    if unknown:
        print(f"error: --policies: unknown {unknown}; allowed {sorted(BASELINES)}", file=sys.stderr)
        return 2
    policies = [BASELINES[name](scenario) for name in args.policies]
    print(
        f"scenario '{scenario.name}': {args.customers} customers x {scenario.horizon_weeks} weeks, "
        f"{len(args.seeds)} held-out seeds {args.seeds}"
    )
    start = time.perf_counter()
    results = evaluate_policies(policies, scenario, n_customers=args.customers, seeds=args.seeds)
    print(format_table(results))
    print(
        f"({time.perf_counter() - start:.1f} s; value = net margin per customer over the horizon)"
    )
    if args.json:
        payload = {
            "scenario": scenario.name,
            "customers": args.customers,
            "seeds": args.seeds,
            "results": {r.policy: {m: r.per_seed[m].tolist() for m in r.per_seed} for r in results},
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2))
    return 0


def _run_scenario(args: argparse.Namespace) -> int:
    if args.action == "list":
        print("\n".join(builtin_scenarios()))
        return 0
    scenario: Scenario = load_scenario(args.name)
    print(
        f"{args.name}: valid ({len(scenario.segments)} segments, {len(scenario.offers)} offers, "
        f"{len(scenario.channels)} channels, {scenario.n_actions} actions, "
        f"{scenario.horizon_weeks} weeks)"
    )
    if args.action == "show":
        print(json.dumps(scenario.model_dump(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the main job on embedded defaults")
    demo.set_defaults(
        func=_run_simulate,
        scenario="default",
        policies=list(BASELINES),
        customers=20_000,
        seeds=_seeds("5"),
        json=None,
    )

    sim = sub.add_parser("simulate", help="run baseline policies on a scenario, print values")
    sim.add_argument("--scenario", default="default", help="built-in name or TOML path")
    sim.add_argument("--policies", nargs="+", default=list(BASELINES), metavar="NAME")
    sim.add_argument("--customers", type=_positive_int, default=20_000)
    sim.add_argument("--seeds", type=_seeds, default=_seeds("5"), help="count or comma list")
    sim.add_argument("--json", help="also write per-seed metrics to this JSON file")
    sim.set_defaults(func=_run_simulate)

    cal = sub.add_parser("calibrate", help="fit BG/NBD + Gamma-Gamma on transactions")
    add_calibrate_arguments(cal)
    cal.set_defaults(func=run_calibrate)

    scen = sub.add_parser("scenario", help="list, check or show scenarios")
    scen.add_argument("action", choices=["list", "check", "show"])
    scen.add_argument("name", nargs="?", default="default", help="built-in name or TOML path")
    scen.set_defaults(func=_run_scenario)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
