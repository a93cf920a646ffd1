"""Simulator throughput: the native vectorized env against the single-customer env in a loop.

Prints a table and writes ``bench/results/simulator.json``. Run: ``make bench`` or
``.venv/bin/python -m bench.simulator [--sizes 1000 10000 100000 1000000]``
(as a module: run as a file, its name would shadow the ``simulator`` package).
Customer-steps per second are medians over repeated 52-week episodes (reset excluded) with a
uniform random policy over all actions (ineligible ones are executed as no contact).
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from dataclasses import dataclass, field

import numpy as np

from bench.machine import machine_info, write_result
from simulator.core import Population
from simulator.env import CustomerLifecycleEnv
from simulator.vector_env import CustomerLifecycleVectorEnv


@dataclass
class Args:
    sizes: list[int] = field(default_factory=lambda: [1_000, 10_000, 100_000, 1_000_000])
    repeats: int = 3
    single_episodes: int = 40
    seed: int = 0
    out: str = "bench/results/simulator.json"


def vector_throughput(n: int, repeats: int, seed: int) -> dict[str, float]:
    env = CustomerLifecycleVectorEnv(n)
    rng = np.random.default_rng(seed)
    n_actions = int(env.single_action_space.n)
    rates, resets = [], []
    for r in range(repeats):
        start = time.perf_counter()
        env.reset(seed=seed + r)
        resets.append(time.perf_counter() - start)
        steps = env.scenario.horizon_weeks
        start = time.perf_counter()
        for _ in range(steps):
            env.step(rng.integers(0, n_actions, size=n))
        rates.append(n * steps / (time.perf_counter() - start))
    return {"customer_steps_per_s": statistics.median(rates), "reset_s": statistics.median(resets)}


def single_throughput(episodes: int, seed: int) -> float:
    env = CustomerLifecycleEnv()
    rng = np.random.default_rng(seed)
    n_actions = int(env.action_space.n)
    steps = 0
    start = time.perf_counter()
    for ep in range(episodes):
        env.reset(seed=seed + ep)
        truncated = False
        while not truncated:
            _, _, _, truncated, _ = env.step(int(rng.integers(0, n_actions)))
            steps += 1
    return steps / (time.perf_counter() - start)


def memory_per_customer(n: int, seed: int) -> dict[str, float]:
    """State bytes per customer, and traced peak per customer while stepping once."""
    tracemalloc.start()
    env = CustomerLifecycleVectorEnv(n)
    env.reset(seed=seed)
    pop: Population = env.population
    state = sum(v.nbytes for v in vars(pop).values() if isinstance(v, np.ndarray))
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    env.step(np.random.default_rng(seed).integers(0, env.scenario.n_actions, size=n))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"state_bytes": state / n, "step_peak_bytes": (peak - base) / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=Args().sizes)
    parser.add_argument("--repeats", type=int, default=Args.repeats)
    parser.add_argument("--single-episodes", type=int, default=Args.single_episodes)
    parser.add_argument("--seed", type=int, default=Args.seed)
    parser.add_argument("--out", default=Args.out)
    args = Args(**vars(parser.parse_args()))

    single = single_throughput(args.single_episodes, args.seed)
    rows = []
    for n in args.sizes:
        result = vector_throughput(n, args.repeats if n < 1_000_000 else 2, args.seed)
        rows.append(
            {"n": n, **result, "speedup_vs_single": result["customer_steps_per_s"] / single}
        )
    memory = memory_per_customer(100_000, args.seed)

    print(f"single-customer Env in a Python loop: {single:,.0f} customer-steps/s")
    print("| customers | customer-steps/s | x single loop | reset (s) |")
    print("|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['n']:,} | {row['customer_steps_per_s']:,.0f} | "
            f"{row['speedup_vs_single']:.0f} | {row['reset_s']:.3f} |"
        )
    print(
        f"memory per customer (N=100k): state {memory['state_bytes']:.0f} B, "
        f"extra peak during a step {memory['step_peak_bytes']:.0f} B"
    )
    write_result(
        {
            "machine": machine_info("gymnasium"),
            "single_env_steps_per_s": single,
            "vector": rows,
            "memory_per_customer": memory,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
