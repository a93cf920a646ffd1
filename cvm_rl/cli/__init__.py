"""The ``cvm`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cvm_rl.bundle import BundleError, load_bundle
from cvm_rl.calibration import add_calibrate_arguments, run_calibrate
from cvm_rl.cli.common import (
    BASELINES,
    REFERENCE_POLICIES,
    CliError,
    bundle_dir,
    positive_int,
)
from cvm_rl.evaluation import PolicyResult, evaluate_policies, format_table, results_to_dict
from cvm_rl.cli.logs import add_logs_arguments, run_logs
from cvm_rl.plots import (
    plot_action_mix,
    plot_learning_curves,
    plot_policy_values,
    plot_value_by_group,
)
from cvm_rl.policies import Policy
from cvm_rl.training import ALGOS, TrainConfig, train
from cvm_rl.cli.serve import add_serve_arguments, run_serve
from cvm_rl.loop.engine import format_summary, run_serving_demo
from simulator.config import Scenario, ScenarioError, builtin_scenarios, load_scenario
from simulator.core import observation_feature_names

TRAIN_OPTIONS: tuple[str, ...] = (
    "steps",
    "n_envs",
    "gamma",
    "learning_rate",
    "ent_coef",
    "n_epochs",
    "batch_size",
    "net_arch",
    "no_contact_prior",
    "optout_cost",
)
DEMO_PPO_STEPS = 3_000_000


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


def _evaluation_policies(
    scenario: Scenario, names: Sequence[str], bundles: Sequence[str]
) -> list[Policy]:
    unknown = [p for p in names if p not in REFERENCE_POLICIES]
    if unknown:
        raise CliError(f"--policies: unknown {unknown}; allowed {list(REFERENCE_POLICIES)}")
    policies = [REFERENCE_POLICIES[name](scenario) for name in names if name != "oracle"]
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
    if "oracle" in names:  # last: the yardstick
        policies.append(REFERENCE_POLICIES["oracle"](scenario))
    seen = [p.name for p in policies]
    dupes = sorted({n for n in seen if seen.count(n) > 1})
    if dupes:
        raise CliError(f"--bundles: two policies are called {dupes}; name runs apart")
    return policies


def _run_evaluate(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario)
    policies = _evaluation_policies(scenario, args.policies, args.bundles)
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
            **results_to_dict(results),
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plots:
        for path in write_evaluation_plots(results, args.plots):
            print(f"wrote {path}")
    return 0


def write_evaluation_plots(results: Sequence[PolicyResult], out: str | Path) -> list[Path]:
    """The evaluation plots: values with CIs, value by segment and stage, action mix."""
    out = Path(out)
    return [
        plot_policy_values(results, out / "policy_values.png"),
        plot_value_by_group(results, out / "value_by_segment.png", by="segment"),
        plot_value_by_group(results, out / "value_by_stage.png", by="stage"),
        plot_action_mix([r for r in results if r.policy != "no_contact"], out / "action_mix.png"),
    ]


def _train_config(args: argparse.Namespace) -> TrainConfig:
    values = {k: getattr(args, k) for k in TRAIN_OPTIONS if getattr(args, k) is not None}
    return TrainConfig(algo=args.algo, scenario=args.scenario, seed=args.seed, **values)


def _run_train(args: argparse.Namespace) -> int:
    config = _train_config(args)
    try:
        config.validate()
    except ValueError as exc:  # names the field; the option is the same with dashes
        raise CliError(f"train: {exc}") from None
    out = Path(args.out or f"runs/{config.algo}-{Path(config.scenario).stem}-seed{config.seed}")
    print(f"training {config.algo} on '{config.scenario}' for {config.steps:,} customer-weeks")
    result = train(config, out, progress_bar=not args.no_progress)
    plot_learning_curves(
        {config.algo: [(result.curve_steps, result.curve_values)]},
        out / "learning_curve.png",
        title=f"{config.algo} on {config.scenario}: value per customer while training",
    )
    rate = config.steps / max(result.seconds, 1e-9)
    final = result.curve_values[-1] if len(result.curve_values) else float("nan")
    print(
        f"done in {result.seconds:.1f} s ({rate:,.0f} customer-weeks/s); validation value "
        f"{final:.3f} per customer; bundle {out / 'bundle'}"
    )
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    """Train a bandit and a short MaskablePPO run, compare them with the baselines, the
    greedy uplift model and the oracle on held-out customers, save bundles and plots."""
    out = Path(args.out)
    runs = {
        "linucb": TrainConfig(algo="linucb", steps=1_040_000, n_envs=10_000),
        "maskable_ppo": TrainConfig(algo="maskable_ppo", steps=args.ppo_steps),
    }
    for name, config in runs.items():
        print(f"[train] {name}: {config.steps:,} customer-weeks")
        result = train(config, out / name, progress_bar=not args.no_progress)
        print(f"[train] {name}: {result.seconds:.1f} s, bundle {out / name / 'bundle'}")
    eval_args = argparse.Namespace(
        scenario="default",
        policies=["no_contact", "random", "rules", "greedy", "oracle"],
        bundles=[str(out / name) for name in runs],
        customers=args.customers,
        seeds=args.seeds,
        json=str(out / "evaluation.json"),
        plots=str(out / "plots"),
    )
    _run_evaluate(eval_args)
    # The serving leg: the decision service on the trained bundle, a simulated campaign
    # engine deciding and reporting outcomes through the client, then a clean stop.
    print(f"[serve] starting cvm serve on {out / 'maskable_ppo' / 'bundle'}")
    summary = run_serving_demo(out / "maskable_ppo" / "bundle", out / "serve")
    print(format_summary(summary))
    return 0 if summary.exit_code == 0 and summary.replay_identical else 1


def _widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths like 128,128, got {text!r}") from None
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths, got {text!r}")
    return widths


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

    demo = sub.add_parser("demo", help="the main job: train, evaluate, save bundles and plots")
    demo.add_argument("--out", default="runs/demo", help="directory for runs, results, plots")
    demo.add_argument("--ppo-steps", type=positive_int, default=DEMO_PPO_STEPS)
    demo.add_argument("--customers", type=positive_int, default=10_000)
    demo.add_argument("--seeds", type=_seeds, default=_seeds("3"), help="count or comma list")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=_run_demo)

    for name, helptext in (
        ("evaluate", "evaluate policies and trained bundles on held-out simulated customers"),
        ("simulate", "alias of evaluate (baselines by default)"),
    ):
        ev = sub.add_parser(name, help=helptext)
        ev.add_argument("--scenario", default="default", help="built-in name or TOML path")
        ev.add_argument(
            "--policies",
            nargs="*",
            default=list(BASELINES) if name == "simulate" else [*BASELINES, "oracle"],
            metavar="NAME",
            help=f"reference policies: {', '.join(REFERENCE_POLICIES)}",
        )
        ev.add_argument(
            "--bundles", nargs="*", default=[], metavar="PATH", help="bundles or run directories"
        )
        ev.add_argument("--customers", type=positive_int, default=20_000)
        ev.add_argument("--seeds", type=_seeds, default=_seeds("5"), help="count or comma list")
        ev.add_argument("--json", help="also write per-seed metrics and summaries to this file")
        ev.add_argument("--plots", help="write PNG plots into this directory")
        ev.set_defaults(func=_run_evaluate)

    tr = sub.add_parser("train", help="train a bandit or RL policy and save a bundle")
    tr.add_argument("--algo", required=True, choices=ALGOS)
    tr.add_argument("--scenario", default="default", help="built-in name or TOML path")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--out", help="run directory (default runs/ALGO-SCENARIO-seedSEED)")
    tr.add_argument("--steps", type=positive_int, help="customer-weeks to train on")
    tr.add_argument("--n-envs", type=positive_int, help="customers simulated in parallel")
    tr.add_argument("--gamma", type=float)
    tr.add_argument("--learning-rate", type=float)
    tr.add_argument("--ent-coef", type=float)
    tr.add_argument("--n-epochs", type=positive_int)
    tr.add_argument("--batch-size", type=positive_int)
    tr.add_argument("--net-arch", type=_widths, help="hidden layer widths, e.g. 128,128")
    tr.add_argument("--no-contact-prior", type=float, help="initial logit bonus of no contact")
    tr.add_argument("--optout-cost", type=float, help="training-reward charge per opt-out")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.set_defaults(func=_run_train)

    cal = sub.add_parser("calibrate", help="fit BG/NBD + Gamma-Gamma on transactions")
    add_calibrate_arguments(cal)
    cal.set_defaults(func=run_calibrate)

    logs = sub.add_parser("logs", help="export a decision log to Parquet, or simulate one")
    add_logs_arguments(logs)
    logs.set_defaults(func=run_logs)

    srv = sub.add_parser("serve", help="run the gRPC decision service on a bundle")
    add_serve_arguments(srv)
    srv.set_defaults(func=run_serve)

    scen = sub.add_parser("scenario", help="list, check or show scenarios")
    scen.add_argument("action", choices=["list", "check", "show"])
    scen.add_argument("name", nargs="?", default="default", help="built-in name or TOML path")
    scen.set_defaults(func=_run_scenario)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ScenarioError, BundleError, CliError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
