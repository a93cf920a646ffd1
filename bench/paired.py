"""Common random numbers: how precisely the simulator compares two policies, and its speed.

Prints a table and writes ``bench/results/paired.json``. Run: ``make bench`` or
``.venv/bin/python -m bench.paired [--ref GIT_REF] [--customers 20000] [--seeds 5]``.

Two pairs of policies are run on the same held-out populations (the default scenario, 52
weeks, ``--seeds`` populations of ``--customers``):

* ``rules`` against ``rules+eps0.1`` (the rules with 10 % uniform exploration), which differ
  on about a tenth of the decisions (the share is measured);
* ``rules`` against a MaskablePPO bundle trained here (``--ppo-steps``, training seed 0), by
  each tree on its own default scenario (the worlds of two trees may differ: the table says
  which share of decisions differ in each).

For each pair, the paired difference of value per customer with two 95 % half-widths: over
the customers (the per-customer differences of all populations pooled) and over the
populations (a t interval of the ``--seeds`` population means). With per-customer random
streams a customer whose decisions agree under both policies gets the same draws, so the
difference carries the noise of the customers whose decisions differ only.

``--ref`` runs the same measurement on a git revision (checked out in a temporary worktree;
e.g. the commit before the streams) in the same run, and the table gives the ratio of the
half-widths. The simulator's speed (customer-weeks per second at ``--speed-customers``,
uniform random actions, median of ``--speed-repeats`` 52-week episodes) is measured in the
same processes. Each tree runs in a fresh process with its own packages first on the path.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class Args:
    customers: int = 20_000
    seeds: int = 5
    seed_start: int = 1000
    ppo_steps: int = 200_000
    speed_customers: int = 100_000
    speed_repeats: int = 3
    ref: str | None = None
    out: str = "bench/results/paired.json"


# --- the measurement, run in each tree's own process ------------------------------------------


def measure(args: dict[str, Any]) -> dict[str, Any]:
    """Paired differences and speed with the packages of the current working directory."""
    import numpy as np
    from scipy.stats import t as student_t

    from cvm_rl.bundle import load_bundle
    from cvm_rl.policies import EpsilonMixturePolicy, Policy, RuleBasedPolicy
    from simulator.config import load_scenario
    from simulator.vector_env import CustomerLifecycleVectorEnv

    scenario = load_scenario("default")
    n, weeks = args["customers"], scenario.horizon_weeks

    def run(policy: Policy, seed: int) -> tuple[np.ndarray, np.ndarray]:
        env = CustomerLifecycleVectorEnv(n, scenario)
        obs, info = env.reset(seed=seed)
        policy.seed(seed)
        values, actions_by_week = np.zeros(n), []
        for _ in range(weeks):
            actions, _ = policy.act(obs, info["action_mask"])
            actions_by_week.append(actions)
            obs, reward, _, _, info = env.step(actions)
            values += reward
        return values, np.stack(actions_by_week, axis=1)

    rules = RuleBasedPolicy(scenario)
    pairs = {
        "rules vs rules+eps0.1": (
            rules,
            EpsilonMixturePolicy(scenario, RuleBasedPolicy(scenario), 0.1),
        ),
        "rules vs maskable_ppo": (rules, load_bundle(args["bundle"]).policy),
    }
    results: dict[str, Any] = {}
    for name, (first, second) in pairs.items():
        differences, seed_means, differing = [], [], []
        for seed in range(args["seed_start"], args["seed_start"] + args["seeds"]):
            a, actions_a = run(first, seed)
            b, actions_b = run(second, seed)
            differences.append(b - a)
            seed_means.append(float((b - a).mean()))
            differing.append(float((actions_a != actions_b).mean()))
        pooled = np.concatenate(differences)
        k = len(seed_means)
        t = float(student_t.ppf(0.975, k - 1))
        results[name] = {
            "mean_difference": float(pooled.mean()),
            "half_width_customers": float(1.96 * pooled.std(ddof=1) / np.sqrt(pooled.size)),
            "half_width_populations": float(t * np.std(seed_means, ddof=1) / np.sqrt(k)),
            "seed_means": seed_means,
            "share_of_decisions_differing": float(np.mean(differing)),
        }

    env = CustomerLifecycleVectorEnv(args["speed_customers"], scenario)
    rng = np.random.default_rng(0)
    rates = []
    for r in range(args["speed_repeats"]):
        env.reset(seed=r)
        start = time.perf_counter()
        for _ in range(weeks):
            env.step(rng.integers(0, scenario.n_actions, size=args["speed_customers"]))
        rates.append(args["speed_customers"] * weeks / (time.perf_counter() - start))
    import simulator

    return {
        "pairs": results,
        "customer_weeks_per_s": statistics.median(rates),
        "rates": rates,
        "simulator": str(Path(simulator.__file__).parent),  # which tree was measured
    }


# --- the driver --------------------------------------------------------------------------------


def _in_tree(tree: Path, params: dict[str, Any]) -> dict[str, Any]:
    """``measure(params)`` in a fresh process whose first path entry is ``tree``."""
    code = (
        "import json, runpy, sys; "
        f"module = runpy.run_path({str(Path(__file__).resolve())!r}); "
        "print(json.dumps(module['measure'](json.loads(sys.argv[1]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(params)],
        cwd=tree,  # `python -c` puts the working directory first on sys.path
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the measurement failed in {tree}:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _train_bundle(steps: int, out: Path, tree: Path) -> Path:
    """A MaskablePPO bundle trained by ``cvm train`` of ``tree``, on that tree's default
    scenario (each tree gets its own: trees whose observation schemas differ, e.g. before
    and after segments became latent, cannot share one)."""
    subprocess.run(
        [
            *(sys.executable, "-m", "cvm_rl.cli", "train", "--algo", "maskable_ppo"),
            *("--steps", str(steps), "--seed", "0", "--out", str(out), "--no-progress"),
        ],
        cwd=tree,
        check=True,
        capture_output=True,
    )
    return out / "bundle"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    defaults = Args()
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=int if isinstance(value, int) else str, default=value)
    args = Args(**vars(parser.parse_args(argv)))
    if args.seeds < 2 or args.customers < 2:
        parser.error("--seeds and --customers: expected >= 2")
    # here, not at the top: measure() runs this file in older trees that lack these modules
    from bench.machine import machine_info, write_result
    from bench.trees import ROOT
    from bench.trees import trees as source_trees

    machine = machine_info("torch")
    with source_trees(args.ref) as trees, tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name, tree in trees.items():
            bundle = _train_bundle(args.ppo_steps, Path(tmp) / f"ppo-{name}", tree)
            results[name] = _in_tree(tree, {**asdict(args), "bundle": str(bundle)})

    print(
        f"paired difference of value per customer, {args.seeds} populations x "
        f"{args.customers:,} customers; 95 % half-widths over customers / over populations"
    )
    print("| pair | tree | decisions differing | difference | +- customers | +- populations |")
    print("|---|---|---:|---:|---:|---:|")
    for pair in results["current"]["pairs"]:
        for tree, result in results.items():
            cell = result["pairs"][pair]
            print(
                f"| {pair} | {tree} | {cell['share_of_decisions_differing']:.1%} | "
                f"{cell['mean_difference']:+.3f} | {cell['half_width_customers']:.3f} | "
                f"{cell['half_width_populations']:.3f} |"
            )
    ratios: dict[str, dict[str, float]] = {}
    if args.ref is not None:
        for pair, cell in results["current"]["pairs"].items():
            ref = results[args.ref]["pairs"][pair]
            ratios[pair] = {
                key: ref[key] / cell[key]
                for key in ("half_width_customers", "half_width_populations")
            }
            print(
                f"{pair}: half-widths {ratios[pair]['half_width_customers']:.1f}x (customers), "
                f"{ratios[pair]['half_width_populations']:.1f}x (populations) narrower than "
                f"at {args.ref}"
            )
    for tree, result in results.items():
        print(
            f"{tree}: {result['customer_weeks_per_s'] / 1e6:.2f}M customer-weeks/s at "
            f"N = {args.speed_customers:,} (median of {args.speed_repeats})"
        )
    write_result(
        {"machine": machine, "args": asdict(args), "results": results, "ratios": ratios},
        ROOT / args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
