"""How accurate is off-policy evaluation? Every estimator against the simulator's truth.

On the simulator the true value of any policy is known by running it. Two realistic loggers
log a year of weekly decisions of the same customers:

* ``rules+eps0.1``: the rule-based campaign with epsilon exploration
  (``EpsilonMixturePolicy(rules, 0.1)``);
* ``maskable_ppo-s0@T2``: a MaskablePPO bundle trained here (training seed 0) and served as
  the service would serve it with softmax exploration: its ``MLPPolicy`` at temperature 2,
  so every eligible action has some probability.

From each log every single-step estimator (DM, IPS, SNIPS, DR, SNDR, Switch-DR, DRos; the
cross-fitted ridge reward model on scaled features) and every long-run estimator (PDIS,
WPDIS, FQE, sequential DR, weighted DR, MIS, marginalized DR, weighted marginalized DR)
values four targets (a second MaskablePPO bundle, training seed 1, at temperature 1; LinUCB
trained online on its own populations; the rules; no contact), with 95 % bootstrap intervals.
They are compared with two truths on the same customers:

* single-step: the target's expected reward per decision on the logged states. Before each
  logged week the population is copied and each copy is stepped with the target's sampled
  actions on a separate generator (``--single-step-replicates`` copies per week and target);
* long-run: the target's value per customer over the 52 weeks, run on the same population
  seed (the same initial customers). Later random draws differ from the log's once the
  decisions differ, so the truth has its own noise: it is the mean of
  ``--truth-replicates`` runs (replicate 0 is exactly ``run_episode`` on the seed, the others
  redraw the dynamics), and its standard error is reported.

Sizes are logged decisions = customers x 52 weeks; seeds of everything are fixed, and no
training or validation seed is ever an evaluation seed (see SEEDS below).

    .venv/bin/python experiments/ope_accuracy.py            # the published tables
    .venv/bin/python experiments/ope_accuracy.py --quick    # a smoke run in under a minute
    .venv/bin/python experiments/ope_accuracy.py --summarize experiments/results/ope_accuracy.json
        # rewrite the summaries, tables and plot from a finished run's records (no runs)

Writes ``experiments/results/<run name>.{json,md}`` (the JSON holds every per-seed number)
and a PNG of the errors against the log size; the trained PPO bundles are cached under
``runs/experiments/ope_accuracy/`` so reruns reuse them.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: small solves, 2 cores
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from cvm_rl.ope.base import BanditInputs, bootstrap_intervals
from cvm_rl.ope.diagnostics import diagnose_weights
from cvm_rl.ope.estimators import (
    LONG_RUN_LABELS,
    SHRINKAGE_LAMBDA,
    SINGLE_STEP_LABELS,
    SWITCH_TAU,
    long_run_estimators,
    single_step_estimators,
)
from cvm_rl.ope.intervals import Interval
from cvm_rl.ope.reward_model import CrossFittedRewardModel
from cvm_rl.ope.sequential import (
    MarginalizedIS,
    cumulative_weight_diagnostics,
    step_ratios,
    step_weight_diagnostics,
)
from cvm_rl.ope.trajectories import Trajectories
from cvm_rl.policies import (
    EpsilonMixturePolicy,
    FeatureTransform,
    LinUCBPolicy,
    MLPPolicy,
    NoContactPolicy,
    Policy,
    RuleBasedPolicy,
    sample_actions,
)
from cvm_rl.rollout import policy_seed
from simulator.config import Scenario, load_scenario
from simulator.core import Population
from simulator.vector_env import CustomerLifecycleVectorEnv

RESULTS = Path(__file__).parent / "results"
RUNS = Path(__file__).parents[1] / "runs" / "experiments" / "ope_accuracy"
"""Cached training runs (PPO bundles); not committed."""

# --- SEEDS -----------------------------------------------------------------------------------
# Training: PPO bundles train on their SB3 environment seeded with the training seed (0 for the
# logger's bundle, 1 for the target's; validation populations 10_000 + seed); LinUCB learns
# online on populations 100 and 101. Evaluation: the logged population of size index j and
# seed index k is drawn with EVAL_SEED_BASE + 1000 j + k; the population reference runs use
# REFERENCE_SEED_BASE + k. The truths' and the logger's random draws are separate streams
# derived from the evaluation seed (SeedSequence), never a training seed.
EVAL_SEED_BASE = 20_000
REFERENCE_SEED_BASE = 30_000
SINGLE_STEP_TRUTH_STREAM = 1
LONG_RUN_TRUTH_STREAM = 2

ESS_STEPS = (1, 5, 10, 20, 52)
SINGLE_STEP = "single_step"
LONG_RUN = "long_run"
KINDS = (SINGLE_STEP, LONG_RUN)
KIND_TITLES = {
    SINGLE_STEP: "Single-step (expected reward per decision on the logged states)",
    LONG_RUN: "Long-run (value per customer over the logged weeks)",
}
SINGLE_STEP_NAMES = tuple(SINGLE_STEP_LABELS)
LONG_RUN_NAMES = tuple(LONG_RUN_LABELS)
ESTIMATOR_NAMES = {SINGLE_STEP: SINGLE_STEP_NAMES, LONG_RUN: LONG_RUN_NAMES}
DR_FAMILY = {
    SINGLE_STEP: ("dr", "sndr", "switch-dr", "dr-os"),
    LONG_RUN: ("dr", "wdr", "mdr", "wmdr"),
}
IPS_BASELINE = {SINGLE_STEP: "ipw", LONG_RUN: "pdis"}


@dataclass
class Args:
    scenario: str = "default"
    customers: list[int] = field(default_factory=lambda: [192, 1_923, 19_231])
    """Customers per log; x 52 weeks = 10k, 100k and 1M logged decisions."""
    seeds: int = 10
    """Evaluation seeds per size (each a fresh population logged by both loggers)."""
    epsilon: float = 0.1
    """Exploration of the rules logger: uniform over the eligible actions."""
    temperature: float = 2.0
    """Softmax temperature at which the PPO logger is served."""
    rl_steps: int = 2_000_000
    """Customer-weeks of MaskablePPO training per bundle (logger's and target's)."""
    logger_train_seed: int = 0
    target_train_seed: int = 1
    bandit_train_seeds: list[int] = field(default_factory=lambda: [100, 101])
    """Populations (one horizon each) LinUCB learns on online."""
    bandit_customers: int = 10_000
    single_step_replicates: int = 16
    """Copies of each logged week stepped with each target (single-step truth)."""
    truth_replicates: int = 8
    """Runs of each target on the logged customers (long-run truth)."""
    weeks: int = 52
    """Logged weeks per customer (the scenario's horizon; fewer only for smoke tests)."""
    reference_customers: int = 50_000
    reference_seeds: int = 4
    """Independent populations for each target's population value (context only)."""
    n_bootstrap: int = 200
    alpha: float = 0.05
    workers: int = 2
    """Processes evaluating (size, seed) jobs at once."""
    quick: bool = False
    out: Path = RESULTS

    @property
    def run_name(self) -> str:
        if self.quick:
            return "ope_accuracy__quick"
        defaults = Args()
        same = all(
            getattr(self, f.name) == getattr(defaults, f.name)
            for f in fields(self)
            if f.name not in ("workers", "out")
        )
        if same:
            return "ope_accuracy"
        sizes = "-".join(_decisions_label(n * self.weeks) for n in self.customers)
        return f"ope_accuracy__{self.scenario}__{sizes}__{self.seeds}seeds"


QUICK: dict[str, Any] = {
    "customers": [96, 384],
    "seeds": 3,
    "rl_steps": 53_248,
    "bandit_train_seeds": [100],
    "bandit_customers": 2_000,
    "single_step_replicates": 4,
    "truth_replicates": 2,
    "reference_customers": 2_000,
    "reference_seeds": 2,
    "n_bootstrap": 50,
}


def parse_args(argv: Sequence[str] | None = None) -> Args:
    defaults = Args()
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    for f in fields(Args):
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            parser.add_argument(flag, action="store_true", help="tiny budgets: a smoke run")
        elif isinstance(value, list):
            parser.add_argument(flag, type=int, nargs="+", default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    args = Args(**vars(parser.parse_args(argv)))
    return replace(args, **QUICK) if args.quick else args


# --- policies --------------------------------------------------------------------------------


@dataclass
class PolicySet:
    """The loggers and the candidate targets (unique names), and how each was made."""

    loggers: list[Policy]
    targets: list[Policy]
    provenance: dict[str, str]


def with_temperature(policy: MLPPolicy, temperature: float, name: str) -> MLPPolicy:
    """The same network served as a softmax at ``temperature``."""
    state = policy.state_dict()
    state["hyperparameters"] = {**state["hyperparameters"], "temperature": temperature}
    state["name"] = name
    return MLPPolicy.from_state_dict(state, policy.scenario)


def ppo_bundle(args: Args, seed: int) -> tuple[MLPPolicy, str]:
    """The MaskablePPO bundle of training seed ``seed``: loaded from the cache, or trained."""
    from cvm_rl.bundle import load_bundle

    scenario = "" if args.scenario == "default" else f"{args.scenario}-"
    run = RUNS / f"maskable_ppo-{scenario}{args.rl_steps}-seed{seed}"
    cached = (run / "bundle").is_dir()
    if not cached:
        from cvm_rl.training import TrainConfig, train

        started = time.perf_counter()
        config = TrainConfig(
            algo="maskable_ppo", scenario=args.scenario, steps=args.rl_steps, seed=seed
        )
        train(config, run)
        print(f"  trained maskable_ppo seed {seed}: {time.perf_counter() - started:.0f} s")
    policy = load_bundle(run / "bundle").policy
    if not isinstance(policy, MLPPolicy):
        raise TypeError(f"{run}: expected an MLP bundle, got {type(policy).__name__}")
    where = run.relative_to(RUNS.parents[2]) if run.is_relative_to(RUNS.parents[2]) else run
    note = f"MaskablePPO, {args.rl_steps:,} steps, training seed {seed} ({where}/bundle"
    return policy, note + (", cached)" if cached else ", trained now)")


def build_policies(args: Args, scenario: Scenario) -> PolicySet:
    from cvm_rl.training import train_bandit

    logger_net, logger_note = ppo_bundle(args, args.logger_train_seed)
    target_net, target_note = ppo_bundle(args, args.target_train_seed)
    linucb = LinUCBPolicy(scenario, seed=args.bandit_train_seeds[0])
    for seed in args.bandit_train_seeds:
        train_bandit(
            linucb,
            scenario,
            n_customers=args.bandit_customers,
            weeks=scenario.horizon_weeks,
            seed=seed,
        )
    rules_logger = EpsilonMixturePolicy(scenario, RuleBasedPolicy(scenario), args.epsilon)
    ppo_logger = with_temperature(
        logger_net,
        args.temperature,
        f"maskable_ppo-s{args.logger_train_seed}@T{args.temperature:g}",
    )
    ppo_target = with_temperature(target_net, 1.0, f"maskable_ppo-s{args.target_train_seed}")
    return PolicySet(
        loggers=[rules_logger, ppo_logger],
        targets=[ppo_target, linucb, RuleBasedPolicy(scenario), NoContactPolicy(scenario)],
        provenance={
            rules_logger.name: f"rule-based campaign, epsilon {args.epsilon:g} uniform "
            "over the eligible actions",
            ppo_logger.name: f"{logger_note}, softmax at temperature {args.temperature:g}",
            ppo_target.name: f"{target_note}, temperature 1",
            linucb.name: f"LinUCB (alpha 1), online on {len(args.bandit_train_seeds)} horizon(s) "
            f"of {args.bandit_customers:,} customers, populations {args.bandit_train_seeds}",
            "rules": "the rule-based campaign (deterministic)",
            "no_contact": "never contacts",
        },
    )


# --- truths ----------------------------------------------------------------------------------


def clone_population(population: Population) -> Population:
    """A deep copy sharing only the read-only scenario and lookup tables."""
    memo = {id(population.scenario): population.scenario, id(population.tables): population.tables}
    return copy.deepcopy(population, memo)


def _stream(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(keys)))


def _stream_seed(*keys: int) -> int:
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


@dataclass
class Truth:
    """A simulated truth, its standard error (the Monte Carlo noise given the customers'
    states) and the number of simulated draws behind it."""

    value: float
    standard_error: float
    replicates: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _replicate_mean(total: np.ndarray, squares: np.ndarray, replicates: int) -> Truth:
    """Truth from per-unit sums and sums of squares over ``replicates`` draws per unit."""
    units = len(total)
    mean = float(total.sum() / (units * replicates))
    if replicates < 2:
        return Truth(mean, math.nan, replicates)
    within = np.maximum(squares - total**2 / replicates, 0.0) / (replicates - 1)
    standard_error = math.sqrt(float(within.sum()) / replicates) / units
    return Truth(mean, standard_error, replicates)


@dataclass
class LoggedRun:
    """A logger's trajectories and each target's single-step truth on the logged states."""

    trajectories: Trajectories
    single_step_truth: dict[str, Truth]


def log_with_single_step_truth(
    logger: Policy,
    targets: Sequence[Policy],
    scenario: Scenario,
    *,
    n_customers: int,
    seed: int,
    replicates: int,
    stream: int,
    weeks: int | None = None,
) -> LoggedRun:
    """Log ``n_customers`` (population ``seed``) deciding with ``logger``, exactly as
    ``Trajectories.from_rollout`` would; before each week's step, step ``replicates`` copies
    of the population with each target's sampled actions on a generator of their own."""
    horizon = scenario.horizon_weeks if weeks is None else weeks
    env = CustomerLifecycleVectorEnv(n_customers, scenario)
    obs, info = env.reset(seed=seed)
    logger.seed(policy_seed(seed))  # as rollout does
    truth_rng = _stream(seed, SINGLE_STEP_TRUTH_STREAM, stream)
    totals = {t.name: np.zeros((n_customers, horizon)) for t in targets}
    squares = {t.name: np.zeros((n_customers, horizon)) for t in targets}
    columns: dict[str, list[np.ndarray]] = {
        k: [] for k in ("obs", "mask", "action", "pscore", "reward", "probabilities")
    }
    for week in range(horizon):
        mask = info["action_mask"]
        actions, propensities, probabilities = logger.act_with_distribution(obs, mask)
        for target in targets:
            target_probs = target.action_probabilities(obs, mask)
            for _ in range(replicates):
                replica = clone_population(env.population)
                replica.reseed(int(truth_rng.integers(2**63)))  # draws of its own
                result = replica.step(sample_actions(target_probs, truth_rng))
                totals[target.name][:, week] += result.reward
                squares[target.name][:, week] += result.reward**2
        next_obs, reward, _, _, next_info = env.step(actions)
        for key, value in (
            ("obs", obs),
            ("mask", mask),
            ("action", actions),
            ("pscore", propensities),
            ("reward", reward),
            ("probabilities", probabilities),
        ):
            columns[key].append(value)
        obs, info = next_obs, next_info

    def stack(key: str, dtype: type) -> np.ndarray:
        return np.stack(columns[key], axis=1).astype(dtype)

    trajectories = Trajectories(
        obs=stack("obs", np.float64),
        mask=stack("mask", bool),
        action=stack("action", np.int64),
        pscore=stack("pscore", np.float64),
        reward=stack("reward", np.float64),
        valid=np.ones((n_customers, horizon), dtype=bool),
        customer_id=np.arange(n_customers),
        logging_probabilities=stack("probabilities", np.float64),
    )
    truths = {
        name: _replicate_mean(totals[name].ravel(), squares[name].ravel(), replicates)
        for name in totals
    }
    return LoggedRun(trajectories, truths)


def long_run_values(
    policy: Policy,
    scenario: Scenario,
    *,
    n_customers: int,
    seed: int,
    replicates: int,
    weeks: int | None = None,
) -> np.ndarray:
    """(n_customers, replicates) each customer's value over ``weeks`` weeks under ``policy``,
    all replicates on the population drawn with ``seed``: replicate 0 is ``rollout``'s run on
    that seed (``run_episode``'s value), the others redraw the dynamics and the policy's
    sampling on streams derived from the seed."""
    horizon = scenario.horizon_weeks if weeks is None else weeks
    values = np.zeros((n_customers, replicates))
    for r in range(replicates):
        env = CustomerLifecycleVectorEnv(n_customers, scenario)
        obs, info = env.reset(seed=seed)
        if r == 0:
            policy.seed(policy_seed(seed))  # as rollout does
        else:
            env.population.reseed(_stream_seed(seed, LONG_RUN_TRUTH_STREAM, r))
            policy.seed(_stream_seed(seed, LONG_RUN_TRUTH_STREAM, r))
        for _ in range(horizon):
            actions, _ = policy.act(obs, info["action_mask"])
            obs, reward, _, _, info = env.step(actions)
            values[:, r] += reward
    return values


def long_run_truth(values: np.ndarray) -> Truth:
    return _replicate_mean(values.sum(axis=1), (values**2).sum(axis=1), values.shape[1])


# --- estimation ------------------------------------------------------------------------------


def _interval_dict(interval: Interval, seconds: float) -> dict[str, float]:
    return {
        "estimate": interval.estimate,
        "low": interval.low,
        "high": interval.high,
        "seconds": round(seconds, 3),
    }


def _finite_or_none(values: list[float]) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in values]


def estimate_targets(
    trajectories: Trajectories,
    targets: Sequence[Policy],
    scenario: Scenario,
    *,
    seed: int,
    n_bootstrap: int,
    alpha: float,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Every estimator's estimate and interval for each target, with weight diagnostics;
    returns (the reward model's fit, {target: results})."""
    feature_map = FeatureTransform.from_scenario(scenario).scaled
    n, horizon = trajectories.valid.shape
    rows = n * horizon
    reward = trajectories.reward.reshape(rows)
    action = trajectories.action.reshape(rows)
    pscore = trajectories.pscore.reshape(rows)
    started = time.perf_counter()
    fit = CrossFittedRewardModel(regressor="ridge", seed=seed).fit_predict(
        feature_map(trajectories.obs.reshape(rows, -1)), action, reward, scenario.n_actions
    )
    reward_model = {**fit.to_dict(), "seconds": round(time.perf_counter() - started, 3)}
    steps = [s for s in ESS_STEPS if s <= horizon]
    results: dict[str, dict[str, Any]] = {}
    for target in targets:
        action_dist = trajectories.target_probabilities(target)
        inputs = BanditInputs.validate(
            reward, action, pscore, action_dist.reshape(rows, -1), fit.estimated_rewards
        )
        started = time.perf_counter()
        single = single_step_estimators()
        intervals = bootstrap_intervals(
            single, inputs, alpha=alpha, n_bootstrap=n_bootstrap, seed=seed
        )
        seconds = (time.perf_counter() - started) / len(single)
        single_step = {
            est.estimator_name: _interval_dict(interval, seconds)
            for est, interval in zip(single, intervals, strict=True)
        }
        long_run = {}
        for estimator in long_run_estimators(scenario, seed):
            started = time.perf_counter()
            interval = estimator.estimate_interval(
                trajectories, action_dist, alpha=alpha, n_bootstrap=n_bootstrap, seed=seed
            )
            long_run[estimator.estimator_name] = _interval_dict(
                interval, time.perf_counter() - started
            )
        # MIS's state ratios (same fields, folds and seed), for its weights' diagnostics.
        state = MarginalizedIS(feature_map=feature_map, seed=seed).state_ratios(
            trajectories, action_dist
        )
        weights = diagnose_weights(inputs.weight)
        cumulative = cumulative_weight_diagnostics(trajectories, action_dist).at_steps(steps)
        marginal = step_weight_diagnostics(
            state * step_ratios(trajectories, action_dist), trajectories.valid
        ).at_steps(steps)
        results[target.name] = {
            SINGLE_STEP: single_step,
            LONG_RUN: long_run,
            "diagnostics": {
                "single_step": {
                    "ess_share": weights.ess_share,
                    "max_weight": weights.max_weight,
                    "zero_weight_share": weights.zero_weight_share,
                },
                "steps": steps,
                "cumulative": {k: _finite_or_none(v) for k, v in cumulative.items()},
                "mis": {k: _finite_or_none(v) for k, v in marginal.items()},
            },
        }
    return reward_model, results


# --- one evaluation job: one population, both loggers ----------------------------------------


@dataclass
class Job:
    size_index: int
    seed_index: int
    n_customers: int
    seed: int
    policies: PolicySet
    scenario: str
    single_step_replicates: int
    truth_replicates: int
    n_bootstrap: int
    alpha: float
    weeks: int


def run_job(job: Job) -> dict[str, Any]:
    """Log the population of ``job.seed`` with each logger, compute the truths, and estimate
    every target from each log. Returns a JSON-ready record."""
    started = time.perf_counter()
    scenario = load_scenario(job.scenario)
    policies = job.policies
    long_run: dict[str, dict[str, Any]] = {}
    for target in policies.targets:
        values = long_run_values(
            target,
            scenario,
            n_customers=job.n_customers,
            seed=job.seed,
            replicates=job.truth_replicates,
            weeks=job.weeks,
        )
        truth = long_run_truth(values)
        long_run[target.name] = {
            **truth.to_dict(),
            "replicate_values": values.mean(axis=0).tolist(),
        }
    truth_seconds = time.perf_counter() - started
    loggers: dict[str, Any] = {}
    for index, logger in enumerate(policies.loggers):
        t0 = time.perf_counter()
        logged = log_with_single_step_truth(
            logger,
            policies.targets,
            scenario,
            n_customers=job.n_customers,
            seed=job.seed,
            replicates=job.single_step_replicates,
            stream=index,
            weeks=job.weeks,
        )
        t1 = time.perf_counter()
        reward_model, estimates = estimate_targets(
            logged.trajectories,
            policies.targets,
            scenario,
            seed=job.seed,
            n_bootstrap=job.n_bootstrap,
            alpha=job.alpha,
        )
        traj = logged.trajectories
        loggers[logger.name] = {
            "logged_value_per_customer": float(traj.returns().mean()),
            "logged_reward_per_decision": float(traj.reward.mean()),
            "reward_model": reward_model,
            "seconds": {
                "log_and_single_step_truth": round(t1 - t0, 2),
                "estimation": round(time.perf_counter() - t1, 2),
            },
            "targets": {
                name: {
                    "truth": {
                        SINGLE_STEP: logged.single_step_truth[name].to_dict(),
                        LONG_RUN: {k: long_run[name][k] for k in ("value", "standard_error")},
                    },
                    **estimates[name],
                }
                for name in estimates
            },
        }
    record = {
        "size_index": job.size_index,
        "seed_index": job.seed_index,
        "n_customers": job.n_customers,
        "decisions": job.n_customers * job.weeks,
        "seed": job.seed,
        "long_run_truth": long_run,
        "loggers": loggers,
        "seconds": {
            "long_run_truth": round(truth_seconds, 2),
            "total": round(time.perf_counter() - started, 2),
        },
    }
    print(
        f"  {record['decisions']:>9,} decisions, seed {job.seed}: "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return record


def reference_value(job: tuple[Policy, str, int, int, int]) -> dict[str, Any]:
    """A target's value per customer on ``runs`` independent populations (context only):
    ``run_episode``'s value when ``weeks`` is the horizon."""
    policy, scenario_name, customers, runs, weeks = job
    scenario = load_scenario(scenario_name)
    seeds = [REFERENCE_SEED_BASE + k for k in range(runs)]
    values = [
        float(
            long_run_values(
                policy, scenario, n_customers=customers, seed=seed, replicates=1, weeks=weeks
            ).mean()
        )
        for seed in seeds
    ]
    spread = float(np.std(values, ddof=1) / math.sqrt(runs)) if runs > 1 else math.nan
    return {
        "value": float(np.mean(values)),
        "standard_error": spread,
        "per_seed": values,
        "seeds": seeds,
        "customers": customers,
    }


# --- summaries -------------------------------------------------------------------------------


def _estimate(record: dict[str, Any], logger: str, target: str, kind: str, name: str) -> dict:
    estimate: dict[str, float] = record["loggers"][logger]["targets"][target][kind][name]
    return estimate


def _truth(record: dict[str, Any], logger: str, target: str, kind: str) -> float:
    value: float = record["loggers"][logger]["targets"][target]["truth"][kind]["value"]
    return value


def _relative(value: float, truth: float) -> float:
    """``value / |truth|``; NaN for a zero truth (possible in tiny smoke runs)."""
    return value / abs(truth) if truth != 0 else math.nan


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def error_cells(
    records: list[dict[str, Any]], logger: str, target: str, kind: str, name: str
) -> dict[str, Any]:
    """Relative errors and coverage of one estimator for one (logger, target) over seeds."""
    relative, covered, undefined = [], [], 0
    for record in records:
        est = _estimate(record, logger, target, kind, name)
        truth = _truth(record, logger, target, kind)
        if not _finite(est["estimate"]):
            undefined += 1
            covered.append(False)
            continue
        if truth != 0:  # a relative error of a zero truth is undefined (tiny smoke runs)
            relative.append((est["estimate"] - truth) / abs(truth))
        inside = _finite(est["low"]) and est["low"] <= truth <= est["high"]
        covered.append(bool(inside))
    rel = np.array(relative)
    return {
        "seeds": len(records),
        "undefined": undefined,
        "mean_abs_relative_error": float(np.mean(np.abs(rel))) if len(rel) else None,
        "median_abs_relative_error": float(np.median(np.abs(rel))) if len(rel) else None,
        "mean_relative_error": float(np.mean(rel)) if len(rel) else None,
        "sd_relative_error": float(np.std(rel, ddof=1)) if len(rel) > 1 else None,
        "coverage": float(np.mean(covered)),
        "covered": int(np.sum(covered)),
    }


def selection(
    records: list[dict[str, Any]], logger: str, targets: list[str], kind: str, name: str
) -> dict[str, Any]:
    """Regret (truth of the best target minus truth of the one picked) of picking the target
    with the highest estimate, and with the highest lower bound, per seed; and Spearman's
    rank correlation between the targets' scores and their truths (undefined scores rank
    last), per seed."""
    from scipy.stats import spearmanr

    out: dict[str, Any] = {}
    for rule in ("estimate", "low"):
        regrets, relative, best_picked, undefined = [], [], 0, 0
        correlations: list[float] = []
        for record in records:
            truths = np.array([_truth(record, logger, t, kind) for t in targets])
            scores = np.array(
                [_estimate(record, logger, t, kind, name)[rule] for t in targets], dtype=float
            )
            undefined += int((~np.isfinite(scores)).sum())
            scores = np.where(np.isfinite(scores), scores, -np.inf)
            picked = int(np.argmax(scores))
            regret = float(truths.max() - truths[picked])
            regrets.append(regret)
            best = abs(float(truths.max()))
            relative.append(regret / best if best > 0 else math.nan)
            best_picked += int(truths[picked] == truths.max())
            if np.ptp(scores) > 0 and np.ptp(truths) > 0:  # undefined when all are tied
                correlations.append(float(spearmanr(scores, truths).statistic))
        out[rule] = {
            "mean_regret": float(np.mean(regrets)),
            "mean_relative_regret": _mean_finite(relative),
            "best_picked": best_picked,
            "undefined_scores": undefined,
            "per_seed_regret": regrets,
            "mean_rank_correlation": float(np.mean(correlations)) if correlations else None,
            "per_seed_rank_correlation": correlations,
        }
    return out


def random_pick_regret(
    records: list[dict[str, Any]], logger: str, targets: list[str], kind: str
) -> float | None:
    """Mean relative regret of a uniformly random pick (context for the selection tables)."""
    regrets = []
    for record in records:
        truths = np.array([_truth(record, logger, t, kind) for t in targets])
        best = abs(float(truths.max()))
        regrets.append(float(np.mean(truths.max() - truths)) / best if best > 0 else math.nan)
    return _mean_finite(regrets)


def summarize(
    records: list[dict[str, Any]], loggers: list[str], targets: list[str], sizes: list[int]
) -> dict[str, Any]:
    """Errors, coverage, selection, truths and weight diagnostics by logger, kind and size."""
    by_size = {size: [r for r in records if r["decisions"] == size] for size in sizes}
    summary: dict[str, Any] = {}
    for logger in loggers:
        per_logger: dict[str, Any] = {}
        for kind in KINDS:
            per_kind: dict[str, Any] = {}
            for size, recs in by_size.items():
                errors = {
                    name: {t: error_cells(recs, logger, t, kind, name) for t in targets}
                    for name in ESTIMATOR_NAMES[kind]
                }
                pooled = {
                    name: {
                        "mean_abs_relative_error": _mean_defined(
                            [cells[t]["mean_abs_relative_error"] for t in targets]
                        ),
                        "coverage": float(np.mean([cells[t]["coverage"] for t in targets])),
                        "undefined": int(sum(cells[t]["undefined"] for t in targets)),
                    }
                    for name, cells in errors.items()
                }
                truths = {
                    t: {
                        "mean": float(np.mean([_truth(r, logger, t, kind) for r in recs])),
                        "mean_relative_standard_error": float(
                            np.mean(
                                [
                                    _relative(
                                        r["loggers"][logger]["targets"][t]["truth"][kind][
                                            "standard_error"
                                        ],
                                        _truth(r, logger, t, kind),
                                    )
                                    for r in recs
                                ]
                            )
                        ),
                    }
                    for t in targets
                }
                per_kind[str(size)] = {
                    "errors": errors,
                    "pooled": pooled,
                    "selection": {
                        name: selection(recs, logger, targets, kind, name)
                        for name in ESTIMATOR_NAMES[kind]
                    },
                    "random_pick_relative_regret": random_pick_regret(recs, logger, targets, kind),
                    "truths": truths,
                }
            per_logger[kind] = per_kind
        per_logger["diagnostics"] = {
            str(size): {
                t: _mean_diagnostics([r["loggers"][logger]["targets"][t] for r in recs])
                for t in targets
            }
            for size, recs in by_size.items()
        }
        summary[logger] = per_logger
    return summary


def _mean_finite(values: list[float]) -> float | None:
    """The mean of the finite values (None when there is none: every truth was 0)."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _mean_defined(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if len(defined) == len(values) and defined else None


def _mean_diagnostics(entries: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(values: list[float | None]) -> float | None:
        defined = [v for v in values if v is not None]
        return float(np.mean(defined)) if defined else None

    diagnostics = [e["diagnostics"] for e in entries]
    steps = diagnostics[0]["steps"]
    out: dict[str, Any] = {
        "single_step_ess_share": mean([d["single_step"]["ess_share"] for d in diagnostics]),
        "single_step_max_weight": mean([d["single_step"]["max_weight"] for d in diagnostics]),
        "steps": steps,
    }
    for weights in ("cumulative", "mis"):
        for key in ("ess", "ess_share", "zero_share", "max_weight_share"):
            out[f"{weights}_{key}"] = [
                mean([d[weights][key][i] for d in diagnostics]) for i in range(len(steps))
            ]
    return out


# --- Markdown --------------------------------------------------------------------------------


def _decisions_label(decisions: int) -> str:
    if decisions >= 1_000_000:
        return f"{decisions / 1_000_000:.3g}M"
    if decisions >= 1_000:
        return f"{decisions / 1_000:.3g}k"
    return str(decisions)


def _pct(x: float | None, digits: int = 1, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    value = 100 * x
    if abs(value) >= 1000:
        return f"{value:+.2g}" if signed else f"{value:.2g}"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "---|" + "---:|" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + align]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def pooled_tables(
    summary: dict[str, Any], loggers: list[str], n_targets: int, sizes: list[int]
) -> list[str]:
    """Mean |relative error| and coverage over the targets, estimator x (logger, size)."""
    header = ["estimator"] + [f"{lg} {_decisions_label(s)}" for lg in loggers for s in sizes]
    out = []
    for kind in KINDS:
        err_rows, cov_rows = [], []
        for name in ESTIMATOR_NAMES[kind]:
            err, cov = [name], [name]
            for logger in loggers:
                for size in sizes:
                    cell = summary[logger][kind][str(size)]["pooled"][name]
                    mark = f" ({cell['undefined']} undef.)" if cell["undefined"] else ""
                    err.append(_pct(cell["mean_abs_relative_error"]) + mark)
                    cov.append(_pct(cell["coverage"], 0) + mark)
            err_rows.append(err)
            cov_rows.append(cov)
        out.append(
            f"### {KIND_TITLES[kind]}: mean |relative error| (%), averaged over the "
            f"{n_targets} targets\n\n" + _table(header, err_rows)
        )
        out.append(
            f"### {KIND_TITLES[kind]}: coverage of the 95 % interval (%), pooled over the "
            f"{n_targets} targets\n\n" + _table(header, cov_rows)
        )
    return out


def detail_tables(
    summary: dict[str, Any], loggers: list[str], targets: list[str], sizes: list[int]
) -> list[str]:
    """Per (logger, kind): target x estimator rows; per size mean |err|, bias +- sd, coverage."""
    header = ["target", "estimator"]
    for size in sizes:
        label = _decisions_label(size)
        header += [f"{label} \\|err\\| %", f"{label} bias ± sd %", f"{label} cov"]
    out = []
    for logger in loggers:
        for kind in KINDS:
            rows = []
            for target in targets:
                for name in ESTIMATOR_NAMES[kind]:
                    row = [target, name]
                    for size in sizes:
                        c = summary[logger][kind][str(size)]["errors"][name][target]
                        undefined = f" ({c['undefined']} undef.)" if c["undefined"] else ""
                        row += [
                            _pct(c["mean_abs_relative_error"]) + undefined,
                            f"{_pct(c['mean_relative_error'], signed=True)} ± "
                            f"{_pct(c['sd_relative_error'])}",
                            f"{c['covered']}/{c['seeds']}",
                        ]
                    rows.append(row)
            out.append(
                f"### Logger {logger}: {KIND_TITLES[kind].split(' (')[0].lower()}, by target\n\n"
                + _table(header, rows, "---|---|" + "---:|" * (len(header) - 2))
            )
    return out


def selection_tables(summary: dict[str, Any], loggers: list[str], sizes: list[int]) -> list[str]:
    header = ["picks by"] + [f"{lg} {_decisions_label(s)}" for lg in loggers for s in sizes]
    out = []
    for kind in KINDS:
        for rule, title in (("estimate", "highest estimate"), ("low", "highest lower bound")):
            rows = []
            for name in ESTIMATOR_NAMES[kind]:
                row = [name]
                for logger in loggers:
                    for size in sizes:
                        block = summary[logger][kind][str(size)]
                        sel = block["selection"][name][rule]
                        seeds = len(sel["per_seed_regret"])
                        rho = sel.get("mean_rank_correlation")
                        row.append(
                            f"{_pct(sel['mean_relative_regret'], 2)} ({sel['best_picked']}/{seeds})"
                            f" {'n/a' if rho is None else f'{rho:+.2f}'}"
                        )
                rows.append(row)
            rows.append(
                ["(random pick)"]
                + [
                    _pct(summary[lg][kind][str(s)]["random_pick_relative_regret"], 2)
                    for lg in loggers
                    for s in sizes
                ]
            )
            out.append(
                f"### {KIND_TITLES[kind].split(' (')[0]} selection by the {title}: mean regret "
                "(% of the best target's true value), (seeds where the truly best was "
                "picked) and the mean Spearman rank correlation of the targets' scores with "
                "their truths\n\n" + _table(header, rows)
            )
    return out


def truth_table(
    summary: dict[str, Any],
    references: dict[str, dict[str, Any]],
    loggers: list[str],
    targets: list[str],
    sizes: list[int],
) -> str:
    header = ["target", "population value (reference)"]
    header += [f"long-run truth {_decisions_label(s)}" for s in sizes]
    header += [f"single-step truth, {lg}" for lg in loggers]
    rows = []
    largest = str(sizes[-1])
    for t in targets:
        ref = references[t]
        row = [t, f"{ref['value']:.3f} ± {ref['standard_error']:.3f}"]
        for s in sizes:
            truth = summary[loggers[0]][LONG_RUN][str(s)]["truths"][t]
            row.append(
                f"{truth['mean']:.3f} (SE {_pct(truth['mean_relative_standard_error'], 2)} %)"
            )
        for lg in loggers:
            truth = summary[lg][SINGLE_STEP][largest]["truths"][t]
            row.append(
                f"{truth['mean']:.4f} (SE {_pct(truth['mean_relative_standard_error'], 2)} %)"
            )
        rows.append(row)
    return _table(header, rows)


def diagnostics_table(
    summary: dict[str, Any], loggers: list[str], targets: list[str], size: int
) -> str:
    steps = summary[loggers[0]]["diagnostics"][str(size)][targets[0]]["steps"]
    header = ["logger", "target", "single-step ESS"]
    header += [f"W_t ESS t={s}" for s in steps] + [f"W_t zero t={steps[-1]}", "MIS ESS t=last"]
    rows = []
    for lg in loggers:
        for t in targets:
            d = summary[lg]["diagnostics"][str(size)][t]
            row = [lg, t, _share(d["single_step_ess_share"])]
            row += [_share(x) for x in d["cumulative_ess_share"]]
            row += [_pct(d["cumulative_zero_share"][-1], 1) + " %", _share(d["mis_ess_share"][-1])]
            rows.append(row)
    return _table(header, rows, "---|---|" + "---:|" * (len(header) - 2))


def _share(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.3g} %"


def headline_checks(
    summary: dict[str, Any], loggers: list[str], targets: list[str], sizes: list[int]
) -> list[str]:
    """The issue's expected pattern, checked rather than asserted."""
    lines = []
    for logger in loggers:
        for kind in KINDS:
            base = IPS_BASELINE[kind]
            at_or_below, above = [], []
            for name in DR_FAMILY[kind]:
                for size in sizes:
                    pooled = summary[logger][kind][str(size)]["pooled"]
                    mine, ips = (
                        pooled[name]["mean_abs_relative_error"],
                        pooled[base]["mean_abs_relative_error"],
                    )
                    label = f"{name}@{_decisions_label(size)}"
                    if mine is not None and (ips is None or mine <= ips):
                        at_or_below.append(label)
                    else:
                        above.append(label)
            lines.append(
                f"{logger}, {kind}: DR-family error at or below {base}'s in "
                f"{len(at_or_below)}/{len(at_or_below) + len(above)} (estimator, size) cells"
                + (f"; above in {', '.join(above)}" if above else "")
            )
            falling, not_falling = [], []
            for name in ESTIMATOR_NAMES[kind]:
                errs = [
                    summary[logger][kind][str(s)]["pooled"][name]["mean_abs_relative_error"]
                    for s in sizes
                ]
                if all(e is not None for e in errs) and errs[-1] < errs[0]:
                    falling.append(name)
                else:
                    not_falling.append(name)
            lines.append(
                f"{logger}, {kind}: error lower at {_decisions_label(sizes[-1])} than at "
                f"{_decisions_label(sizes[0])} for {', '.join(falling) or 'none'}"
                + (f"; not for {', '.join(not_falling)}" if not_falling else "")
            )
            largest = summary[logger][kind][str(sizes[-1])]["pooled"]
            poor = [
                f"{name} {_pct(largest[name]['coverage'], 0)} %"
                for name in ESTIMATOR_NAMES[kind]
                if largest[name]["coverage"] < 0.85
            ]
            lines.append(
                f"{logger}, {kind}: coverage below 85 % at {_decisions_label(sizes[-1])}: "
                + (", ".join(poor) if poor else "none")
            )
    return lines


NOTES = """\
- **Truths.** Single-step: each logged week the population is copied before the step and
  each copy is stepped with the target's sampled actions on a separate generator; the truth
  is the mean reward over all logged customer-weeks and copies. Long-run: the target run on
  the same population seed (the same initial customers); once decisions differ from the log,
  later random draws differ, so each truth is a mean over replicate runs and has a Monte
  Carlo standard error given the customers ("SE": relative to the truth, averaged over the
  seeds). Errors and coverage are against these same-customer truths, so they include the
  truths' own noise.
- **Relative error** = (estimate - truth) / truth, per seed; |err| is its mean absolute
  value over the seeds, bias ± sd its mean and standard deviation. "undef." counts seeds
  where the estimate is undefined (every cumulative weight of some step zero: WPDIS and WDR
  divide by their sum); an undefined estimate counts as not covering and is never picked.
- **Intervals** are 95 % percentile bootstraps ({n_bootstrap} resamples) with the fitted
  models held fixed: over rows for the single-step estimators (customer-weeks treated as
  independent), over customers for the long-run ones. They carry neither the models' fitting
  noise nor their bias.
- **Selection**: among the {n_targets} targets, the one with the highest estimate (or lower
  bound) is picked; regret = true value of the truly best target minus that of the pick,
  per seed (same-customer truths), as a share of the best value. "(random pick)" is the
  regret of a uniform pick, for scale.
"""


def write_markdown(
    args: Args,
    summary: dict[str, Any],
    references: dict[str, dict[str, Any]],
    provenance: dict[str, str],
    loggers: list[str],
    targets: list[str],
    sizes: list[int],
    headline: list[str],
    total_seconds: float,
    plot: Path | None,
) -> str:
    command = "experiments/ope_accuracy.py" + (" --quick" if args.quick else "")
    split = ", ".join(
        f"{_decisions_label(n * args.weeks)} = {n:,} customers x {args.weeks} weeks"
        for n in args.customers
    )
    eval_seeds = ", ".join(
        f"{EVAL_SEED_BASE + 1000 * j}..{EVAL_SEED_BASE + 1000 * j + args.seeds - 1}"
        for j in range(len(args.customers))
    )
    parts = [
        f"# {args.run_name}: off-policy estimators against the simulator's truth",
        f"`.venv/bin/python {command}` on scenario '{args.scenario}'; wall time "
        f"{total_seconds / 60:.1f} min on 2 shared cores ({args.workers} worker processes).",
        "## Design\n\n"
        + "\n".join(f"- **{name}**: {how}" for name, how in provenance.items())
        + f"\n- Loggers: {', '.join(loggers)}. Targets (the candidates): {', '.join(targets)}."
        f"\n- Sizes (logged decisions): {split}; {args.seeds} seeds per size, each a fresh "
        f"population (evaluation seeds {eval_seeds}) logged by both loggers, so the long-run "
        "truths are shared by the two loggers."
        f"\n- Truths: {args.single_step_replicates} stepped copies per logged week and target "
        f"(single-step); {args.truth_replicates} runs per target on the logged customers "
        f"(long-run). Population values: {args.reference_seeds} x "
        f"{args.reference_customers:,} other customers (seeds {REFERENCE_SEED_BASE}..), for "
        "context only."
        "\n- Training seeds (never evaluation seeds): PPO logger bundle "
        f"{args.logger_train_seed}, PPO target bundle {args.target_train_seed} (validation "
        f"populations 10000 + seed), LinUCB populations {args.bandit_train_seeds}."
        f"\n- Estimators: single-step {', '.join(SINGLE_STEP_NAMES)} (cross-fitted ridge "
        f"reward model, 5 folds, on FeatureTransform.scaled features; Switch-DR tau = "
        f"{SWITCH_TAU:g}, DRos lambda = {SHRINKAGE_LAMBDA:g}, as in the OPE report); long-run "
        f"{', '.join(LONG_RUN_NAMES)} (ridge Q and state-ratio models on the same features, "
        f"2-fold cross-fitting); {args.n_bootstrap} bootstrap resamples.",
        "## Reading the tables\n\n"
        + NOTES.format(n_bootstrap=args.n_bootstrap, n_targets=len(targets)),
        "## Truths\n\nPopulation value per customer (mean ± SE over the reference "
        "populations); mean same-customer long-run truth per size (its Monte Carlo SE relative "
        "to the truth); single-step truth per decision on each logger's states at the largest "
        "size.\n\n" + truth_table(summary, references, loggers, targets, sizes),
        "## Checks\n\n" + "\n".join(f"- {line}" for line in headline),
        "## Error and coverage, pooled over the targets",
        *pooled_tables(summary, loggers, len(targets), sizes),
        "## Selection regret",
        *selection_tables(summary, loggers, sizes),
        f"## Importance weights at {_decisions_label(sizes[-1])} (mean over seeds)\n\n"
        "Effective sample size as a share of the rows (single step) or customers: of the "
        "single-step weights, of the cumulative weights W_t = prod_{k<=t} rho_k after t "
        "decisions (what PDIS, WPDIS, DR and WDR rely on), the share of customers whose W_t is "
        "zero at the last step, and of MIS's marginal weights at the last step.\n\n"
        + diagnostics_table(summary, loggers, targets, sizes[-1]),
        "## Error and coverage by target",
        *detail_tables(summary, loggers, targets, sizes),
    ]
    if plot is not None:
        parts.append(f"Plot: [{plot.name}]({plot.parent.name}/{plot.name})")
    return "\n\n".join(parts) + "\n"


def plot_errors(
    summary: dict[str, Any], loggers: list[str], sizes: list[int], path: Path
) -> Path | None:
    """Mean |relative error| (over targets and seeds) against the logged decisions."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # the plots extra is not installed
        return None
    fig = Figure(figsize=(11, 4 * len(loggers)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(loggers), 2, squeeze=False)
    for row, logger in enumerate(loggers):
        for col, kind in enumerate(KINDS):
            ax = axes[row][col]
            for name in ESTIMATOR_NAMES[kind]:
                errs = [
                    summary[logger][kind][str(s)]["pooled"][name]["mean_abs_relative_error"]
                    for s in sizes
                ]
                xs = [s for s, e in zip(sizes, errs, strict=True) if e is not None]
                ys = [100 * e for e in errs if e is not None]
                ax.plot(xs, ys, marker="o", label=name)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("logged decisions")
            ax.set_ylabel("mean |relative error| (%)")
            ax.set_title(f"{logger}: {kind.replace('_', '-')}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


# --- main ------------------------------------------------------------------------------------


def make_jobs(args: Args, policies: PolicySet) -> list[Job]:
    jobs = [
        Job(
            size_index=j,
            seed_index=k,
            n_customers=n,
            seed=EVAL_SEED_BASE + 1000 * j + k,
            policies=policies,
            scenario=args.scenario,
            single_step_replicates=args.single_step_replicates,
            truth_replicates=args.truth_replicates,
            n_bootstrap=args.n_bootstrap,
            alpha=args.alpha,
            weeks=args.weeks,
        )
        for j, n in enumerate(args.customers)
        for k in range(args.seeds)
    ]
    # Largest first, so the small jobs fill the last free core.
    return sorted(jobs, key=lambda job: -job.n_customers)


def run(args: Args, policies: PolicySet | None = None) -> dict[str, Any]:
    """The whole experiment; returns the JSON payload (also written with the Markdown)."""
    started = time.perf_counter()
    code = code_state()  # at the start: the tree may change while the runs go on
    scenario = load_scenario(args.scenario)
    policies = policies or build_policies(args, scenario)
    prepared = time.perf_counter() - started
    jobs = make_jobs(args, policies)
    reference_jobs = [
        (t, args.scenario, args.reference_customers, args.reference_seeds, args.weeks)
        for t in policies.targets
    ]
    print(
        f"run {args.run_name}: {len(jobs)} jobs (sizes {args.customers} customers x "
        f"{args.seeds} seeds), {args.workers} workers",
        flush=True,
    )
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            references_list = list(pool.map(reference_value, reference_jobs))
            records = list(pool.map(run_job, jobs))
    else:
        references_list = [reference_value(job) for job in reference_jobs]
        records = [run_job(job) for job in jobs]
    records.sort(key=lambda r: (r["size_index"], r["seed_index"]))
    references = {t.name: ref for t, ref in zip(policies.targets, references_list, strict=True)}
    return write_results(
        args,
        records,
        references,
        provenance=policies.provenance,
        loggers=[p.name for p in policies.loggers],
        targets=[p.name for p in policies.targets],
        seconds={"policies": round(prepared, 1), "total": round(time.perf_counter() - started, 1)},
        code=code,
    )


def write_results(
    args: Args,
    records: list[dict[str, Any]],
    references: dict[str, Any],
    *,
    provenance: dict[str, str],
    loggers: list[str],
    targets: list[str],
    seconds: dict[str, float],
    code: dict[str, Any],
) -> dict[str, Any]:
    """Summaries, checks, plot, JSON and Markdown of the runs' records."""
    sizes = [n * args.weeks for n in args.customers]
    summary = summarize(records, loggers, targets, sizes)
    headline = headline_checks(summary, loggers, targets, sizes)
    for line in headline:
        print(line)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_errors(summary, loggers, sizes, out / args.run_name / "errors_by_size.png")
    payload = {
        "run_name": args.run_name,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(args).items()},
        "policies": provenance,
        "loggers": loggers,
        "targets": targets,
        "decisions": sizes,
        "eval_seed_base": EVAL_SEED_BASE,
        "reference_seed_base": REFERENCE_SEED_BASE,
        "references": references,
        "headline": headline,
        "seconds": seconds,
        "code": code,
        "summary": summary,
        "records": records,
    }
    (out / f"{args.run_name}.json").write_text(json.dumps(_jsonable(payload), indent=1) + "\n")
    (out / f"{args.run_name}.md").write_text(
        write_markdown(
            args,
            summary,
            references,
            provenance,
            loggers,
            targets,
            sizes,
            headline,
            seconds["total"],
            plot,
        )
    )
    print(f"wrote {out / args.run_name}.{{json,md}} ({seconds['total'] / 60:.1f} min of runs)")
    return payload


def summarize_again(path: Path, out: Path) -> dict[str, Any]:
    """Rewrite the summaries, tables and plot of a finished run from its JSON (its records
    and settings), without running anything: for new summaries of the same runs."""
    payload = json.loads(path.read_text())
    saved = payload["args"]
    args = Args(**{**saved, "out": out})
    return write_results(
        args,
        payload["records"],
        payload["references"],
        provenance=payload["policies"],
        loggers=payload["loggers"],
        targets=payload["targets"],
        seconds=payload["seconds"],
        code=payload["code"],
    )


def code_state() -> dict[str, Any]:
    """The commit and the uncommitted changes the estimators ran with (others edit them)."""
    import subprocess

    def git(*argv: str) -> str:
        try:
            done = subprocess.run(
                ["git", *argv], capture_output=True, text=True, check=True, cwd=RESULTS.parent
            )
        except (OSError, subprocess.CalledProcessError):
            return ""
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "uncommitted": git("status", "--porcelain", "--", "cvm_rl", "simulator").splitlines(),
    }


def _jsonable(value: Any) -> Any:
    """NaN and inf become None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--summarize"]:
        # --summarize RUN.json [OUT_DIR]: new summaries of a finished run's records.
        if len(argv) not in (2, 3):
            raise SystemExit("usage: ope_accuracy.py --summarize RUN.json [OUT_DIR]")
        source = Path(argv[1])
        summarize_again(source, Path(argv[2]) if len(argv) == 3 else source.parent)
        return
    run(parse_args(argv))


if __name__ == "__main__":
    main()
