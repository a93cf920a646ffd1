"""Policy throughput and latency: contextual-bandit batches, and a trained network served from
its bundle (numpy) against Stable-Baselines3 (torch) on the same inputs.

Prints two tables and writes ``bench/results/policies.json``. Run:
``.venv/bin/python -m bench.policies [--batch 10000] [--repeats 7]``.

Inputs are realistic: observations and masks of simulated customers after some weeks of
random contact, and the executed actions and rewards of the following week.

* Bandits (LinUCB, LinTS, epsilon-greedy with default hyperparameters, fitted on one batch
  first): rows per second of ``update``, ``action_probabilities`` and ``act`` on a batch,
  median over repeats.
* MLP: a MaskablePPO with the default training network (``TrainConfig().net_arch``) trained
  for a few thousand steps, saved as a bundle in a temporary directory and loaded back.
  Latency, in microseconds per call (median and p99), of the bundle's
  ``action_probabilities`` against SB3's ``model.predict(..., action_masks=...)`` and
  ``model.policy.get_distribution(...)`` probabilities, for one row and for 1k rows. Every
  path starts from the same raw observations and masks, so the SB3 paths include
  ``FeatureTransform.scaled`` (the training env's wrapper applies it; serving must too).
  Torch runs on one thread.

numpy's OpenBLAS uses every core by default, which is slow when other jobs hold them (and
slower still once torch is loaded in the same process), so the numpy side (bandits and the
bundle) is also measured in fresh interpreters without torch, as a server runs it: once with
OpenBLAS's default threads and once with ``OPENBLAS_NUM_THREADS=1``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import machine_info, write_result
from cvm_rl.bundle import load_bundle, save_bundle
from cvm_rl.policies.bandits import EpsilonGreedyPolicy, LinearBandit, LinTSPolicy, LinUCBPolicy
from cvm_rl.policies.mlp import MLPPolicy
from cvm_rl.training import TrainConfig, build_model, make_training_env
from simulator.config import Scenario, load_scenario
from simulator.vector_env import CustomerLifecycleVectorEnv

BLAS_VAR = "OPENBLAS_NUM_THREADS"


@dataclass
class Args:
    batch: int = 10_000
    repeats: int = 7
    weeks: int = 12
    train_steps: int = 64 * 52 * 2
    latency_rows: list[int] = field(default_factory=lambda: [1, 1_000])
    latency_calls: list[int] = field(default_factory=lambda: [3_000, 300])
    seed: int = 0
    out: str = "bench/results/policies.json"


@dataclass
class Batch:
    obs: np.ndarray
    mask: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray


def simulated_batch(scenario: Scenario, n: int, weeks: int, seed: int) -> Batch:
    """Customers after ``weeks`` weeks of uniform random contact, and their next week."""
    env = CustomerLifecycleVectorEnv(n, scenario)
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    for _ in range(weeks + 1):
        prev_obs, mask = obs, info["action_mask"]
        obs, reward, _, _, info = env.step(rng.integers(0, scenario.n_actions, size=n))
    return Batch(prev_obs, mask, info["executed_action"], reward)


def rows_per_s(fn: Callable[[], Any], rows: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return rows / statistics.median(times)


def bandit_throughput(
    scenario: Scenario, batch: Batch, repeats: int, seed: int
) -> list[dict[str, Any]]:
    rows = []
    classes: list[type[LinearBandit]] = [LinUCBPolicy, LinTSPolicy, EpsilonGreedyPolicy]
    n = len(batch.obs)
    for cls in classes:
        policy = cls(scenario, seed=seed)
        policy.update(batch.obs, batch.actions, batch.rewards)
        rows.append(
            {
                "policy": policy.name,
                "rows": n,
                "update_rows_per_s": rows_per_s(
                    partial(policy.update, batch.obs, batch.actions, batch.rewards), n, repeats
                ),
                "probabilities_rows_per_s": rows_per_s(
                    partial(policy.action_probabilities, batch.obs, batch.mask), n, repeats
                ),
                "act_rows_per_s": rows_per_s(
                    partial(policy.act, batch.obs, batch.mask), n, repeats
                ),
            }
        )
    return rows


def train_tiny(scenario: Scenario, steps: int, seed: int) -> Any:
    """A MaskablePPO with the default network, trained briefly (its weights don't matter)."""
    base = TrainConfig(algo="maskable_ppo", n_envs=64, steps=steps, seed=seed)
    config = base.replace(batch_size=min(base.batch_size, base.n_envs * base.n_steps))
    env = make_training_env(config, scenario)
    model = build_model(config, env)
    model.learn(total_timesteps=config.steps)
    env.close()
    return model


def latency_us(fn: Callable[[], Any], calls: int) -> dict[str, float]:
    for _ in range(min(calls, 20)):  # warm caches and torch's first-call setup
        fn()
    times = np.empty(calls)
    for i in range(calls):
        start = time.perf_counter_ns()
        fn()
        times[i] = time.perf_counter_ns() - start
    times /= 1_000.0
    return {"median_us": float(np.median(times)), "p99_us": float(np.percentile(times, 99))}


def save_tiny_bundle(scenario: Scenario, model: Any, path: Path) -> MLPPolicy:
    """Bundle ``model`` at ``path`` and return the policy loaded back from it."""
    policy = MLPPolicy.from_sb3(model, scenario, name="maskable_ppo")
    save_bundle(policy, path, algo="maskable_ppo", training_config={})
    served = load_bundle(path).policy
    assert isinstance(served, MLPPolicy)
    return served


def bundle_latency(
    served: MLPPolicy, batch: Batch, sizes: list[int], calls: list[int]
) -> list[dict[str, Any]]:
    rows = []
    for n, n_calls in zip(sizes, calls, strict=True):
        obs, mask = batch.obs[:n], batch.mask[:n]
        timing = latency_us(partial(served.action_probabilities, obs, mask), n_calls)
        rows.append({"rows": n, "calls": n_calls, **timing})
    return rows


def numpy_side(
    scenario: Scenario,
    batch: Batch,
    bundle: str,
    sizes: list[int],
    calls: list[int],
    repeats: int,
    seed: int,
) -> dict[str, Any]:
    """Bandit throughput and bundle latency (run in a fresh interpreter, see module doc)."""
    served = load_bundle(bundle).policy
    assert isinstance(served, MLPPolicy)
    return {
        "torch_loaded": "torch" in sys.modules,
        "bandits": bandit_throughput(scenario, batch, repeats, seed),
        "bundle": bundle_latency(served, batch, sizes, calls),
    }


def in_fresh_process(blas_threads: int | None, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a new interpreter with ``OPENBLAS_NUM_THREADS`` set (None: unset),
    which OpenBLAS reads once, when numpy loads."""
    saved = os.environ.pop(BLAS_VAR, None)
    if blas_threads is not None:
        os.environ[BLAS_VAR] = str(blas_threads)
    try:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            return pool.submit(fn, *args).result()
    finally:
        os.environ.pop(BLAS_VAR, None)
        if saved is not None:
            os.environ[BLAS_VAR] = saved


def sb3_latency(
    model: Any, served: MLPPolicy, batch: Batch, sizes: list[int], calls: list[int]
) -> list[dict[str, Any]]:
    """SB3's two inference paths, and the bundle in the same process (torch loaded)."""
    import torch

    transform = served.transform
    sb3 = model.policy
    sb3.set_training_mode(False)

    def sb3_probabilities(obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            tensor, _ = sb3.obs_to_tensor(transform.scaled(obs).astype(np.float32))
            dist = sb3.get_distribution(tensor, action_masks=mask)
            return dist.distribution.probs.numpy()

    def predict(obs: np.ndarray, mask: np.ndarray) -> Any:
        scaled = transform.scaled(obs).astype(np.float32)
        return model.predict(scaled, deterministic=True, action_masks=mask)

    rows = []
    for n, n_calls in zip(sizes, calls, strict=True):
        obs, mask = batch.obs[:n], batch.mask[:n]
        # Same probabilities on both sides (float32 networks): the comparison is like for like.
        np.testing.assert_allclose(
            served.action_probabilities(obs, mask), sb3_probabilities(obs, mask), atol=1e-4
        )
        paths: dict[str, Callable[[np.ndarray, np.ndarray], Any]] = {
            "SB3 model.predict (torch)": predict,
            "SB3 get_distribution probs (torch)": sb3_probabilities,
            "bundle, same process (torch loaded)": served.action_probabilities,
        }
        for name, fn in paths.items():
            timing = latency_us(partial(fn, obs, mask), n_calls)
            rows.append({"rows": n, "path": name, "calls": n_calls, **timing})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=Args.batch)
    parser.add_argument("--repeats", type=int, default=Args.repeats)
    parser.add_argument("--weeks", type=int, default=Args.weeks)
    parser.add_argument("--train-steps", type=int, default=Args.train_steps)
    parser.add_argument("--latency-rows", type=int, nargs="+", default=Args().latency_rows)
    parser.add_argument("--latency-calls", type=int, nargs="+", default=Args().latency_calls)
    parser.add_argument("--seed", type=int, default=Args.seed)
    parser.add_argument("--out", default=Args.out)
    args = Args(**vars(parser.parse_args()))
    if len(args.latency_calls) != len(args.latency_rows):
        raise ValueError("latency_calls must give one count per entry of latency_rows")
    if max(args.latency_rows) > args.batch:
        raise ValueError(f"latency_rows must be <= batch ({args.batch}), got {args.latency_rows}")

    import torch

    torch.set_num_threads(1)
    machine = machine_info("torch", "stable_baselines3") | {"torch_threads": 1}
    scenario = load_scenario("default")
    batch = simulated_batch(scenario, args.batch, args.weeks, args.seed)
    model = train_tiny(scenario, args.train_steps, args.seed)
    sizes, calls = args.latency_rows, args.latency_calls
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bundle"
        served = save_tiny_bundle(scenario, model, path)
        latency = sb3_latency(model, served, batch, sizes, calls)
        fresh = {
            blas: in_fresh_process(
                blas, numpy_side, scenario, batch, str(path), sizes, calls, args.repeats, args.seed
            )
            for blas in (None, 1)
        }
    machine["loadavg_1_5_15_after"] = machine_info()["loadavg_1_5_15"]
    bandits = [
        {"openblas_threads": "default" if blas is None else blas} | row
        for blas, result in fresh.items()
        for row in result["bandits"]
    ]
    for blas, result in fresh.items():
        threads = "default" if blas is None else str(blas)
        latency += [
            {"path": f"bundle, fresh process (no torch), OpenBLAS threads {threads}"} | row
            for row in result["bundle"]
        ]
    latency.sort(key=lambda r: r["rows"])

    print(
        f"bandits, batches of {args.batch:,} simulated customers, median of {args.repeats}, "
        f"fresh processes; load average {machine['loadavg_1_5_15']} -> "
        f"{machine['loadavg_1_5_15_after']}"
    )
    print(
        "| bandit | OpenBLAS threads | update rows/s | action_probabilities rows/s | act rows/s |"
    )
    print("|---|---|---:|---:|---:|")
    for r in bandits:
        print(
            f"| {r['policy']} | {r['openblas_threads']} | {r['update_rows_per_s']:,.0f} | "
            f"{r['probabilities_rows_per_s']:,.0f} | {r['act_rows_per_s']:,.0f} |"
        )
    print(f"MLP {TrainConfig().net_arch} (MaskablePPO), torch 1 thread, latency per call")
    print("| rows | path | median µs | p99 µs | calls |")
    print("|---:|---|---:|---:|---:|")
    for r in latency:
        print(
            f"| {r['rows']:,} | {r['path']} | {r['median_us']:,.0f} | {r['p99_us']:,.0f} | "
            f"{r['calls']:,} |"
        )
    write_result(
        {
            "machine": machine,
            "batch_rows": args.batch,
            "repeats": args.repeats,
            "bandits": bandits,
            "mlp_net_arch": TrainConfig().net_arch,
            "mlp_latency": latency,
            "fresh_processes_loaded_torch": any(r["torch_loaded"] for r in fresh.values()),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
