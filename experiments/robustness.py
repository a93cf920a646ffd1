"""How does each policy degrade when the world differs from the scenario it was trained on?

The learners trained by ``bandit_vs_rl.py`` on the default scenario (read back from their
bundles) and the fixed policies are evaluated, unchanged, on perturbed copies of it: offer
uplift x0.5 and x1.5, dropout (churn) x0.5 and x1.5, channel costs x2. The oracle is rebuilt
on each perturbed scenario (it knows the true world), so "share of oracle lift" stays the
yardstick. Per-seed learners are paired with held-out populations as in ``bandit_vs_rl.py``.

    .venv/bin/python experiments/bandit_vs_rl.py             # first: trains and saves bundles
    .venv/bin/python experiments/robustness.py               # then: evaluates them perturbed

Writes ``experiments/results/<run name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from bandit_vs_rl import RESULTS, runs_dir  # the run layout that script writes

from cvm_rl.bundle import load_bundle
from cvm_rl.evaluation import PolicyResult, evaluate_policies, format_table, results_to_dict
from cvm_rl.policies import NoContactPolicy, Policy, RandomPolicy, RuleBasedPolicy
from cvm_rl.policies.greedy import GreedyUpliftPolicy
from cvm_rl.policies.oracle import OraclePolicy
from simulator.config import Scenario, load_scenario


@dataclass
class Args:
    source_run: str = "bandit_vs_rl__default__maskable_ppo-16M__5seeds"
    """Run name of ``bandit_vs_rl.py`` whose bundles to evaluate."""
    seeds: int = 5
    eval_customers: int = 20_000
    greedy_customers: int = 20_000
    out: Path = RESULTS

    @property
    def run_name(self) -> str:
        return f"robustness__{self.source_run}"


def perturbations(base: Scenario) -> dict[str, Scenario]:
    """The issue's perturbed worlds, as validated scenario copies."""

    def scaled(section: str, key: str, factor: float) -> dict[str, float]:
        items = getattr(base, section)
        return {f"{section}.{name}.{key}": getattr(v, key) * factor for name, v in items.items()}

    return {
        "default": base,
        "uplift x0.5": base.with_overrides(scaled("offers", "uplift", 0.5)),
        "uplift x1.5": base.with_overrides(scaled("offers", "uplift", 1.5)),
        "churn x0.5": base.with_overrides(scaled("segments", "dropout_multiplier", 0.5)),
        "churn x1.5": base.with_overrides(scaled("segments", "dropout_multiplier", 1.5)),
        "channel costs x2": base.with_overrides(scaled("channels", "cost", 2.0)),
    }


def learned_policies(args: Args) -> dict[str, list[Policy]]:
    run = runs_dir(args.source_run)
    if not run.is_dir():
        raise SystemExit(f"{run}: no such run; train it with experiments/bandit_vs_rl.py first")
    learned: dict[str, list[Policy]] = {}
    for seed in range(args.seeds):
        for bundle_dir in sorted(run.glob(f"*-seed{seed}/bundle")):
            bundle = load_bundle(bundle_dir, seed=seed)
            learned.setdefault(bundle.policy.name, []).append(bundle.policy)
    missing = {k: len(v) for k, v in learned.items() if len(v) != args.seeds}
    if not learned or missing:
        raise SystemExit(f"{run}: expected {args.seeds} seeds per learner, found {missing}")
    return learned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Args()
    parser.add_argument("--source-run", default=defaults.source_run)
    parser.add_argument("--seeds", type=int, default=defaults.seeds)
    parser.add_argument("--eval-customers", type=int, default=defaults.eval_customers)
    parser.add_argument("--out", type=Path, default=defaults.out)
    args = Args(**vars(parser.parse_args()))
    started = time.perf_counter()
    base = load_scenario("default")
    learned = learned_policies(args)
    train_seeds = list(range(args.seeds))
    eval_seeds = [1000 + s for s in train_seeds]
    greedy = [
        GreedyUpliftPolicy.fit_from_simulation(base, n_customers=args.greedy_customers, seed=s)
        for s in train_seeds
    ]
    tables: dict[str, list[PolicyResult]] = {}
    for label, world in perturbations(base).items():
        policies: list[Policy | list[Policy]] = [
            NoContactPolicy(base),
            RandomPolicy(base),
            RuleBasedPolicy(base),
            greedy,
            *learned.values(),
            OraclePolicy(world),
        ]
        tables[label] = evaluate_policies(
            policies, world, n_customers=args.eval_customers, seeds=eval_seeds
        )
        print(f"## {label}\n\n{format_table(tables[label])}\n", flush=True)
    summary = degradation_table(tables)
    print(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "run_name": args.run_name,
        "source_run": args.source_run,
        "eval_seeds": eval_seeds,
        "eval_customers": args.eval_customers,
        "total_seconds": round(time.perf_counter() - started, 1),
        "worlds": {label: results_to_dict(results) for label, results in tables.items()},
    }
    (args.out / f"{args.run_name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    body = "\n\n".join(f"## {label}\n\n{format_table(r)}" for label, r in tables.items())
    (args.out / f"{args.run_name}.md").write_text(
        f"# {args.run_name}\n\n`.venv/bin/python experiments/robustness.py` "
        f"({args.eval_customers} held-out customers per seed, seeds {eval_seeds}); policies "
        "trained on 'default', evaluated unchanged; the oracle knows each world.\n\n"
        f"## Lift over no contact by world (paired 95% CI)\n\n{summary}\n\n{body}\n"
        f"\nTotal time {payload['total_seconds']} s.\n"
    )
    print(f"wrote {args.out / args.run_name}.{{json,md}}")


def degradation_table(tables: dict[str, list[PolicyResult]]) -> str:
    """Rows = policies, columns = worlds: lift over no contact with its paired CI."""
    worlds = list(tables)
    names = [r.policy for r in tables[worlds[0]] if r.policy != "no_contact"]
    lines = [
        "| policy | " + " | ".join(worlds) + " |",
        "|---|" + "---:|" * len(worlds),
    ]
    for name in names:
        cells = []
        for world in worlds:
            by_name = {r.policy: r for r in tables[world]}
            mean, low, high = by_name[name].lift_interval(by_name["no_contact"])
            cells.append(f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
