"""Single-step off-policy evaluation at scale: ``cvm_rl.ope`` against the straightforward numpy.

Prints a table and writes ``bench/results/ope.json``. Run:
``.venv/bin/python -m bench.ope [--n 1000000] [--n-actions 25] [--n-bootstrap 200]``.

A synthetic log (n rows x A actions: logger and target probabilities, rewards, a reward
model's predictions) is evaluated by all seven single-step estimators (DM, IPS, SNIPS, DR,
SNDR, Switch-DR, DRos). Timed, medians of ``repeats`` runs:

* point estimates: each estimator's ``estimate_policy_value`` on the arrays (each call
  validates the inputs), and all of them on one ``BanditInputs`` (validated once, the
  weights and reward-model terms shared);
* ``n_bootstrap``-resample percentile intervals of all of them over one set of resamples
  (validation included);
* the weight diagnostics.

The reference is the same estimators written the straightforward way: one full numpy pass per
estimator (recomputing the weights and the reward model's target value each time), and a
bootstrap that materializes each resample with fancy indexing and runs every estimator on it.
That bootstrap is timed on ``naive_resamples`` resamples and scaled to ``n_bootstrap``.

Memory: the peak traced by tracemalloc while validating, estimating and bootstrapping, plus
the inputs themselves; and the process's maximum resident set size before the reference runs
(it includes the chunked generation of the inputs).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.machine import machine_info, write_result
from cvm_rl.ope.base import BanditInputs, BaseOffPolicyEstimator, bootstrap_intervals
from cvm_rl.ope.diagnostics import diagnose_bandit_feedback
from cvm_rl.ope.single_step import (
    DirectMethod,
    DoublyRobust,
    DoublyRobustWithShrinkage,
    InverseProbabilityWeighting,
    SelfNormalizedDR,
    SelfNormalizedIPS,
    SwitchDR,
)

MB = 2**20


@dataclass
class Args:
    n: int = 1_000_000
    n_actions: int = 25
    n_bootstrap: int = 200
    repeats: int = 3
    naive_resamples: int = 5
    seed: int = 0
    out: str = "bench/results/ope.json"


ESTIMATORS: list[BaseOffPolicyEstimator] = [
    DirectMethod(),
    InverseProbabilityWeighting(),
    SelfNormalizedIPS(),
    DoublyRobust(),
    SelfNormalizedDR(),
    SwitchDR(tau=10.0),
    DoublyRobustWithShrinkage(lambda_=10.0),
]

Log = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def synthetic_log(n: int, n_actions: int, seed: int, chunk: int = 100_000) -> Log:
    """A logger exploring every action (softmax mixed with 10 % uniform), a target that is a
    sharper softmax of other scores with about a fifth of the actions ineligible (probability
    0), Bernoulli rewards and a noisy reward model. Built in chunks to bound temporaries."""
    rng = np.random.default_rng(seed)
    reward = np.empty(n)
    action = np.empty(n, dtype=np.int64)
    pscore = np.empty(n)
    action_dist = np.empty((n, n_actions))
    estimated_rewards = np.empty((n, n_actions))
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        m = rows.stop - rows.start
        scores = rng.normal(size=(m, n_actions))
        logger = np.exp(scores)
        logger /= logger.sum(axis=1, keepdims=True)
        logger = 0.9 * logger + 0.1 / n_actions
        target = np.exp(2 * (scores + rng.normal(size=(m, n_actions))))
        target[rng.random((m, n_actions)) < 0.2] = 0.0
        target[np.arange(m), scores.argmax(axis=1)] += 1e-3  # no row without an eligible action
        target /= target.sum(axis=1, keepdims=True)
        logged = (rng.random((m, 1)) > logger.cumsum(axis=1)).sum(axis=1)
        logged = np.minimum(logged, n_actions - 1)  # cumsum may fall short of 1 by rounding
        mean_reward = 1 / (1 + np.exp(-(0.5 * scores - 1)))
        action[rows] = logged
        pscore[rows] = logger[np.arange(m), logged]
        reward[rows] = rng.random(m) < mean_reward[np.arange(m), logged]
        action_dist[rows] = target
        estimated_rewards[rows] = np.clip(mean_reward + 0.1 * rng.normal(size=(m, n_actions)), 0, 1)
    return reward, action, pscore, action_dist, estimated_rewards


# --- the straightforward reference -----------------------------------------------------------


def _weights(action: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray) -> np.ndarray:
    return action_dist[np.arange(len(action)), action] / pscore


def _q_target(action_dist: np.ndarray, estimated_rewards: np.ndarray) -> np.ndarray:
    return (action_dist * estimated_rewards).sum(axis=1)


def _residual(reward: np.ndarray, action: np.ndarray, estimated_rewards: np.ndarray) -> np.ndarray:
    return reward - estimated_rewards[np.arange(len(action)), action]


def naive_dm(r: np.ndarray, a: np.ndarray, p: np.ndarray, pi: np.ndarray, q: np.ndarray) -> float:
    return float(np.mean(_q_target(pi, q)))


def naive_ips(r: np.ndarray, a: np.ndarray, p: np.ndarray, pi: np.ndarray, q: np.ndarray) -> float:
    return float(np.mean(_weights(a, p, pi) * r))


def naive_snips(
    r: np.ndarray, a: np.ndarray, p: np.ndarray, pi: np.ndarray, q: np.ndarray
) -> float:
    w = _weights(a, p, pi)
    return float(np.sum(w * r) / np.sum(w))


def naive_dr(r: np.ndarray, a: np.ndarray, p: np.ndarray, pi: np.ndarray, q: np.ndarray) -> float:
    return float(np.mean(_q_target(pi, q) + _weights(a, p, pi) * _residual(r, a, q)))


def naive_sndr(r: np.ndarray, a: np.ndarray, p: np.ndarray, pi: np.ndarray, q: np.ndarray) -> float:
    w = _weights(a, p, pi)
    return float(np.mean(_q_target(pi, q)) + np.sum(w * _residual(r, a, q)) / np.sum(w))


def naive_switch(
    r: np.ndarray, a: np.ndarray, p: np.ndarray, pi: np.ndarray, q: np.ndarray
) -> float:
    w = _weights(a, p, pi)
    return float(np.mean(_q_target(pi, q) + (w <= 10.0) * w * _residual(r, a, q)))


def naive_dros(r: np.ndarray, a: np.ndarray, p: np.ndarray, pi: np.ndarray, q: np.ndarray) -> float:
    w = _weights(a, p, pi)
    return float(np.mean(_q_target(pi, q) + 10.0 * w / (w**2 + 10.0) * _residual(r, a, q)))


NAIVE: list[Callable[..., float]] = [
    naive_dm,
    naive_ips,
    naive_snips,
    naive_dr,
    naive_sndr,
    naive_switch,
    naive_dros,
]


def naive_bootstrap(log: Log, resamples: int, seed: int) -> np.ndarray:
    """(resamples, estimators): every estimator on each materialized resample."""
    rng = np.random.default_rng(seed)
    n = len(log[0])
    out = np.empty((resamples, len(NAIVE)))
    for b in range(resamples):
        rows = rng.integers(0, n, n)
        resample = [arr[rows] for arr in log]
        out[b] = [fn(*resample) for fn in NAIVE]
    return out


# --- timing ----------------------------------------------------------------------------------


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def each_validating(log: Log) -> list[float]:
    return [est.estimate_policy_value(*log) for est in ESTIMATORS]


def shared_inputs(log: Log) -> list[float]:
    inputs = BanditInputs.validate(*log)
    return [est.policy_value(inputs) for est in ESTIMATORS]


def shared_bootstrap(log: Log, n_bootstrap: int, seed: int) -> list[Any]:
    inputs = BanditInputs.validate(*log)
    return bootstrap_intervals(ESTIMATORS, inputs, n_bootstrap=n_bootstrap, seed=seed)


def traced_peak(fn: Callable[[], Any]) -> float:
    """Peak bytes allocated (numpy included) while ``fn`` runs, above what existed before."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return float(peak - base)


def max_rss_bytes() -> float:
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=Args.n)
    parser.add_argument("--n-actions", type=int, default=Args.n_actions)
    parser.add_argument("--n-bootstrap", type=int, default=Args.n_bootstrap)
    parser.add_argument("--repeats", type=int, default=Args.repeats)
    parser.add_argument("--naive-resamples", type=int, default=Args.naive_resamples)
    parser.add_argument("--seed", type=int, default=Args.seed)
    parser.add_argument("--out", default=Args.out)
    args = Args(**vars(parser.parse_args()))

    log = synthetic_log(args.n, args.n_actions, args.seed)
    input_bytes = float(sum(arr.nbytes for arr in log))

    fast_each = median_time(lambda: each_validating(log), args.repeats)
    fast_shared = median_time(lambda: shared_inputs(log), args.repeats)
    fast_boot = median_time(
        lambda: shared_bootstrap(log, args.n_bootstrap, args.seed), args.repeats
    )
    diagnostics_s = median_time(lambda: diagnose_bandit_feedback(*log[1:4]), args.repeats)
    fast_values = shared_inputs(log)
    intervals = shared_bootstrap(log, args.n_bootstrap, args.seed)
    fast_peak = traced_peak(lambda: shared_bootstrap(log, args.n_bootstrap, args.seed))
    rss_after_fast = max_rss_bytes()
    diagnostics = diagnose_bandit_feedback(*log[1:4])

    naive_point = median_time(lambda: [fn(*log) for fn in NAIVE], args.repeats)
    naive_values = [fn(*log) for fn in NAIVE]
    naive_resample_s = median_time(lambda: naive_bootstrap(log, args.naive_resamples, args.seed), 1)
    naive_boot = naive_resample_s * args.n_bootstrap / args.naive_resamples
    naive_peak = traced_peak(lambda: naive_bootstrap(log, 1, args.seed))

    rows = [
        ("point estimates, each call validating", fast_each, naive_point),
        ("point estimates, one validated BanditInputs", fast_shared, naive_point),
        (f"bootstrap intervals, {args.n_bootstrap} resamples", fast_boot, naive_boot),
    ]
    print(
        f"n = {args.n:,} rows x {args.n_actions} actions, {len(ESTIMATORS)} estimators "
        f"({', '.join(est.estimator_name for est in ESTIMATORS)}); medians of {args.repeats} runs"
    )
    print("| step | cvm_rl.ope (s) | straightforward numpy (s) | speed-up |")
    print("|---|---:|---:|---:|")
    for name, fast, naive in rows:
        print(f"| {name} | {fast:.3f} | {naive:.2f} | {naive / fast:.1f}x |")
    print(f"| weight diagnostics | {diagnostics_s:.3f} | | |")
    print(
        f"(straightforward bootstrap: {args.naive_resamples} materialized resamples timed, "
        f"{naive_resample_s:.2f} s, scaled to {args.n_bootstrap})"
    )
    print(
        f"memory: inputs {input_bytes / MB:,.0f} MiB + traced peak of validation, estimates and "
        f"bootstrap {fast_peak / MB:,.0f} MiB = {(input_bytes + fast_peak) / MB:,.0f} MiB; "
        f"process max RSS {rss_after_fast / MB:,.0f} MiB "
        f"(straightforward, one resample: +{naive_peak / MB:,.0f} MiB traced)"
    )
    max_diff = max(abs(a - b) for a, b in zip(fast_values, naive_values, strict=True))
    print(f"largest difference between the two implementations' estimates: {max_diff:.1e}")
    print("| estimator | estimate | 95 % bootstrap interval |")
    print("|---|---:|---|")
    for est, interval in zip(ESTIMATORS, intervals, strict=True):
        print(f"| {est!r} | {interval.estimate:.4f} | [{interval.low:.4f}, {interval.high:.4f}] |")
    print(f"diagnostics: {diagnostics.to_dict()}")

    write_result(
        {
            "machine": machine_info(),
            "args": vars(args),
            "estimators": [repr(est) for est in ESTIMATORS],
            "seconds": {
                "point_each_validating": fast_each,
                "point_shared_inputs": fast_shared,
                "bootstrap": fast_boot,
                "diagnostics": diagnostics_s,
                "naive_point": naive_point,
                "naive_bootstrap_scaled": naive_boot,
                "naive_bootstrap_measured": naive_resample_s,
            },
            "memory_bytes": {
                "inputs": input_bytes,
                "traced_peak": fast_peak,
                "inputs_plus_traced_peak": input_bytes + fast_peak,
                "max_rss_before_reference": rss_after_fast,
                "naive_one_resample_traced_peak": naive_peak,
            },
            "max_estimate_difference": max_diff,
            "intervals": [
                {"estimator": repr(est), "estimate": i.estimate, "low": i.low, "high": i.high}
                for est, i in zip(ESTIMATORS, intervals, strict=True)
            ],
            "diagnostics": diagnostics.to_dict(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
