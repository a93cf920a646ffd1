"""What each RL lever of the long-run issue does, measured one at a time.

Every lever is MaskablePPO trained on the long-run value (``--terminal-value``: the residual
value added at the horizon, no bootstrapped critic) plus one change: potential-based shaping
with the CLV planner's posterior CLV (``--shaping``), the week's expected reward instead of
the sampled one (``--expected-rewards``), or behaviour cloning of the CLV planner before PPO
(``--warm-start clv_planner``), and the warm start with an opt-out charge of 5 in the
training reward (``--optout-cost 5``). Each lever runs with training seeds 0..seeds-1.

Two measurements per run, never mixed:

* **validation**: the long-run value on the run's validation population (seed 10,000 +
  training seed, never used for training or held-out evaluation); choosing a seed or a lever
  uses this alone;
* **held-out**: the long-run lift over no contact and over the rules on the held-out
  populations (seeds 1000..), paired per population, for the report.

    .venv/bin/python experiments/rl_levers.py                 # trains what is missing
    .venv/bin/python experiments/rl_levers.py --quick         # a smoke run

Runs go to ``runs/experiments/rl_levers/<lever>-<steps>-seed<k>/`` (kept between calls: a run
whose bundle exists is evaluated, not retrained); the table to
``experiments/results/<run name>.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cvm_rl.bundle import load_bundle
from cvm_rl.evaluation import PolicyResult, evaluate_policies
from cvm_rl.policies import NoContactPolicy, RuleBasedPolicy
from cvm_rl.train_config import HELD_OUT_SEED_START, VALIDATION_SEED_OFFSET, TrainConfig
from cvm_rl.training import train
from simulator.config import load_scenario

RESULTS = Path(__file__).parent / "results"
RUNS = Path(__file__).parents[1] / "runs" / "experiments" / "rl_levers"

LEVERS: dict[str, dict[str, Any]] = {
    "terminal": {},
    "shaping": {"shaping": True},
    "expected": {"expected_rewards": True},
    "warm": {"warm_start": "clv_planner"},
    "warm_optout": {"warm_start": "clv_planner", "optout_cost": 5.0},
}
"""Each lever's change on top of MaskablePPO with ``terminal_value``."""


@dataclass
class Args:
    scenario: str = "default"
    levers: list[str] = field(default_factory=lambda: list(LEVERS))
    seeds: int = 3
    steps: int = 2_000_000
    eval_customers: int = 20_000
    eval_seeds: int = 5
    """Held-out populations 1000..1000+eval_seeds-1."""
    validation_customers: int = 20_000
    runs: Path = RUNS
    out: Path = RESULTS
    quick: bool = False

    @property
    def run_name(self) -> str:
        tag = "quick" if self.quick else f"{self.steps // 1_000_000}M"
        return f"rl_levers__{self.scenario}__{'-'.join(self.levers)}-{tag}__{self.seeds}seeds"


def parse_args() -> Args:
    defaults = Args()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default=defaults.scenario)
    parser.add_argument("--levers", nargs="+", choices=list(LEVERS), default=defaults.levers)
    parser.add_argument("--seeds", type=int, default=defaults.seeds)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--eval-customers", type=int, default=defaults.eval_customers)
    parser.add_argument("--eval-seeds", type=int, default=defaults.eval_seeds)
    parser.add_argument("--runs", type=Path, default=defaults.runs)
    parser.add_argument("--out", type=Path, default=defaults.out)
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run")
    args = Args(**vars(parser.parse_args()))
    if args.quick:
        args = replace(
            args,
            seeds=1,
            steps=106_496,
            eval_customers=1_000,
            eval_seeds=2,
            validation_customers=1_000,
            runs=args.runs / "quick",
        )
    return args


def run_dir(args: Args, lever: str, seed: int) -> Path:
    return args.runs / f"{lever}-{args.steps}-seed{seed}"


def main() -> None:
    args = parse_args()
    scenario = load_scenario(args.scenario)
    started = time.perf_counter()
    held_out = [HELD_OUT_SEED_START + s for s in range(args.eval_seeds)]
    base, rules = evaluate_policies(
        [NoContactPolicy(scenario), RuleBasedPolicy(scenario)],
        scenario,
        n_customers=args.eval_customers,
        seeds=held_out,
    )
    rows = []
    for lever in args.levers:
        for seed in range(args.seeds):
            run = run_dir(args, lever, seed)
            if not (run / "bundle" / "manifest.json").exists():
                config = TrainConfig(
                    algo="maskable_ppo",
                    scenario=args.scenario,
                    seed=seed,
                    steps=args.steps,
                    terminal_value=True,
                    **LEVERS[lever],
                )
                train(config, run)
            policy = load_bundle(run / "bundle").policy
            validation = evaluate_policies(
                [policy],
                scenario,
                n_customers=args.validation_customers,
                seeds=[VALIDATION_SEED_OFFSET + seed],
            )[0].mean("long_run_value")
            result = evaluate_policies(
                [policy], scenario, n_customers=args.eval_customers, seeds=held_out
            )[0]
            rows.append(summarize(lever, seed, validation, result, base, rules))
            print(format_row(rows[-1]), flush=True)
    picks = {
        lever: max((r for r in rows if r["lever"] == lever), key=lambda r: r["validation"])
        for lever in args.levers
    }
    table = format_table(rows, picks, base, rules)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "run_name": args.run_name,
        "args": json.loads(json.dumps(asdict(args), default=str)),
        "held_out_seeds": held_out,
        "rules_long_run_lift": list(rules.lift_interval(base, "long_run_value")),
        "runs": rows,
        "picked_on_validation": {lever: r["seed"] for lever, r in picks.items()},
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    (args.out / f"{args.run_name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    command = "experiments/rl_levers.py" + (" --quick" if args.quick else "")
    (args.out / f"{args.run_name}.md").write_text(
        f"# {args.run_name}\n\n`.venv/bin/python {command}`: MaskablePPO {args.steps:,} steps "
        f"with `--terminal-value` and one lever, training seeds 0..{args.seeds - 1}; validation "
        f"= long-run value on the run's validation population ({args.validation_customers:,} "
        f"customers, seed 10,000 + training seed); held-out = {args.eval_customers:,} customers "
        f"x seeds {held_out}, lifts paired by population (95 % intervals over the "
        f"populations).\n\n{table}\n\nTotal time {payload['total_seconds']} s.\n"
    )
    print(f"wrote {args.out / args.run_name}.{{json,md}}")


def summarize(
    lever: str,
    seed: int,
    validation: float,
    result: PolicyResult,
    base: PolicyResult,
    rules: PolicyResult,
) -> dict[str, Any]:
    return {
        "lever": lever,
        "seed": seed,
        "validation": validation,
        "lift": list(result.lift_interval(base, "long_run_value")),
        "vs_rules": list(result.lift_interval(rules, "long_run_value")),
        "value_vs_rules": list(result.lift_interval(rules, "value")),
        "contacts": result.mean("contacts"),
        "opt_out": result.mean("opt_out_rate"),
    }


def _ci(values: object) -> str:
    mean, low, high = np.asarray(values, dtype=float)
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def format_row(row: dict[str, Any]) -> str:
    return (
        f"| {row['lever']} | {row['seed']} | {row['validation']:.3f} | {_ci(row['lift'])} | "
        f"{_ci(row['vs_rules'])} | {_ci(row['value_vs_rules'])} | {row['contacts']:.2f} | "
        f"{row['opt_out']:.3f} |"
    )


def format_table(
    rows: list[dict[str, Any]],
    picks: dict[str, dict[str, Any]],
    base: PolicyResult,
    rules: PolicyResult,
) -> str:
    header = (
        "| lever | seed | validation long-run | held-out long-run lift vs no contact | "
        "long-run vs rules | year's value vs rules | contacts | opt-out |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [header, *(format_row(r) for r in rows)]
    lines.append(
        f"| rules | | | {_ci(rules.lift_interval(base, 'long_run_value'))} | 0 | 0 | "
        f"{rules.mean('contacts'):.2f} | {rules.mean('opt_out_rate'):.3f} |"
    )
    lines.append("")
    lines.append("Chosen on validation (one seed per lever):")
    for lever, row in picks.items():
        above = "above" if row["vs_rules"][1] > 0 else "not above"
        lines.append(
            f"- {lever}: seed {row['seed']}, long-run vs rules {_ci(row['vs_rules'])} "
            f"({above} zero)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
