"""Long-run off-policy evaluation on a simulated decision log: which estimators survive 52
weekly steps?

A population is logged for a year by an exploring logger (the rule-based campaign mixed with
``explore`` uniform over the eligible actions), then each sequential estimator values target
policies (the rules without exploration, no contact, and the logger itself as a check) from
that log alone. The truth is the target's own simulated value on the same population (same
seed), and, for reference, its mean value over larger independent populations.

    .venv/bin/python experiments/ope_sequential_demo.py
    .venv/bin/python experiments/ope_sequential_demo.py --n-customers 1000 --weeks 10  # quick

Prints one table per target (estimate, interval, error) and the effective sample size share
of the cumulative importance weights (what PDIS, WPDIS and DR rely on) and of the
marginalized weights (MIS), with the largest weight and the share of zero weights, after 1,
5, 10, 20 and 52 decisions.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: small solves, 2 cores
os.environ.setdefault("OMP_NUM_THREADS", "1")  # boosted trees' threads fight over the cores

import argparse
import time
from dataclasses import dataclass

import numpy as np

from cvm_rl.evaluation import run_episode
from cvm_rl.ope.sequential import (
    SEQUENTIAL_ESTIMATORS,
    FittedQEvaluation,
    MarginalizedIS,
    PerDecisionIS,
    SequentialEstimator,
    WeightedPerDecisionIS,
    cumulative_weight_diagnostics,
    step_weight_diagnostics,
)
from cvm_rl.ope.trajectories import Trajectories
from cvm_rl.policies import (
    EpsilonMixturePolicy,
    FeatureTransform,
    NoContactPolicy,
    Policy,
    RuleBasedPolicy,
)
from simulator.config import Scenario, load_scenario

ESS_STEPS = (1, 5, 10, 20, 52)


@dataclass
class Args:
    scenario: str = "default"
    n_customers: int = 5_000
    weeks: int = 52
    explore: float = 0.2
    """Share of the logger's decisions drawn uniformly over the eligible actions."""
    seed: int = 2026
    """Seed of the logged population (and of the target's simulated truth)."""
    n_bootstrap: int = 200
    alpha: float = 0.05
    truth_customers: int = 20_000
    truth_seeds: int = 3
    """Independent populations (seeds 10_000..) for the reference value of each target."""
    boosted: bool = False
    """Also run FQE and MIS with gradient-boosted trees (minutes rather than seconds)."""


def parse_args() -> Args:
    defaults = Args()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, value in vars(defaults).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, type=type(value), default=value)
    return Args(**vars(parser.parse_args()))


def estimators(scenario: Scenario, boosted: bool) -> list[SequentialEstimator]:
    features = FeatureTransform.from_scenario(scenario).scaled
    out: list[SequentialEstimator] = []
    for cls in SEQUENTIAL_ESTIMATORS:
        if cls in (PerDecisionIS, WeightedPerDecisionIS):
            out.append(cls())
        else:
            out.append(cls(feature_map=features))  # type: ignore[call-arg]
    if boosted:
        out.append(FittedQEvaluation(feature_map=features, q_model="hgb"))
        out.append(MarginalizedIS(feature_map=features, ratio_model="hgb"))
    return out


def label(estimator: SequentialEstimator) -> str:
    model = getattr(estimator, "q_model", None) if estimator.estimator_name == "fqe" else None
    model = getattr(estimator, "ratio_model", None) if estimator.estimator_name == "mis" else model
    return estimator.estimator_name + (f" ({model})" if model == "hgb" else "")


def main() -> None:
    args = parse_args()
    scenario = load_scenario(args.scenario)
    logger = EpsilonMixturePolicy(scenario, RuleBasedPolicy(scenario), args.explore)
    started = time.perf_counter()
    traj = Trajectories.from_rollout(
        logger, scenario, n_customers=args.n_customers, seed=args.seed, weeks=args.weeks
    )
    print(
        f"log: {args.n_customers} customers x {args.weeks} weeks by {logger.name} "
        f"(seed {args.seed}, {time.perf_counter() - started:.1f}s); logged value per customer "
        f"{traj.returns().mean():.3f}"
    )
    steps = [s for s in ESS_STEPS if s <= traj.horizon]
    ess_rows: list[str] = []
    for target in (RuleBasedPolicy(scenario), NoContactPolicy(scenario), logger):
        action_dist = traj.target_probabilities(target)
        # The simulated truth: the target itself on the logged population, for the same weeks.
        same_seed = _value(target, scenario, args.n_customers, args.seed, args.weeks)
        reference = np.mean(
            [
                _value(target, scenario, args.truth_customers, 10_000 + k, args.weeks)
                for k in range(args.truth_seeds)
            ]
        )
        print(
            f"\n## target {target.name}: truth {same_seed:.3f} on the logged population, "
            f"{reference:.3f} over {args.truth_seeds} x {args.truth_customers} other customers"
        )
        print(
            f"| estimator | estimate | {1 - args.alpha:.0%} interval | error | covers | seconds |"
        )
        print("|---|---:|---|---:|:---:|---:|")
        for estimator in estimators(scenario, args.boosted):
            started = time.perf_counter()
            interval = estimator.estimate_interval(
                traj, action_dist, alpha=args.alpha, n_bootstrap=args.n_bootstrap, seed=0
            )
            seconds = time.perf_counter() - started
            print(
                f"| {label(estimator)} | {interval.estimate:.3f} | "
                f"[{interval.low:.3f}, {interval.high:.3f}] | "
                f"{interval.estimate - same_seed:+.3f} | "
                f"{'yes' if same_seed in interval else 'no'} | {seconds:.1f} |"
            )
        cumulative = cumulative_weight_diagnostics(traj, action_dist)
        marginal = step_weight_diagnostics(
            MarginalizedIS(
                feature_map=FeatureTransform.from_scenario(scenario).scaled
            ).marginal_weights(traj, action_dist),
            traj.valid,
        )
        for name, diagnostics in (("cumulative W_t", cumulative), ("MIS w_t rho_t", marginal)):
            index = [s - 1 for s in steps]
            cells = zip(
                diagnostics.ess_share[index],
                diagnostics.max_weight[index],
                diagnostics.zero_share[index],
                strict=True,
            )
            ess_rows.append(
                f"| {target.name} | {name} | "
                + " | ".join(f"{e:.3f} ({m:.3g}; {z:.0%})" for e, m, z in cells)
                + " |"
            )
    print("\n## ESS share of n (max weight; share of zero weights) after t decisions")
    print("| target | weights | " + " | ".join(f"t = {s}" for s in steps) + " |")
    print("|---|---|" + "---:|" * len(steps))
    print("\n".join(ess_rows))


def _value(policy: Policy, scenario: Scenario, n_customers: int, seed: int, weeks: int) -> float:
    """The policy's simulated value per customer over ``weeks`` weeks (run_episode's value
    when ``weeks`` is the whole horizon)."""
    if weeks == scenario.horizon_weeks:
        return run_episode(policy, scenario, n_customers, seed)["value"]
    log = Trajectories.from_rollout(
        policy, scenario, n_customers=n_customers, seed=seed, weeks=weeks
    )
    return float(log.returns().mean())


if __name__ == "__main__":
    main()
