"""PPO training throughput: the native vectorized env against SB3's DummyVecEnv of
single-customer envs, at the same hyperparameters.

Prints a table and writes ``bench/results/training.json``. Run:
``.venv/bin/python -m bench.training [--n-envs 64 1024] [--algos ppo maskable_ppo]``.

Both sides train the same SB3 model (:func:`cvm_rl.training.build_model`: same n_envs,
n_steps, batch size, epochs, network, seed) on the same observations and rewards:

* native: :func:`cvm_rl.training.make_training_env` (one numpy kernel steps every customer,
  scaled observations, reward-only ``VecNormalize``);
* DummyVecEnv: ``n_envs`` copies of ``gymnasium.make("cvm/CustomerLifecycle-v0")``, each
  seeing ``FeatureTransform.scaled`` observations (``TransformObservation``) and wrapped in
  SB3's ``Monitor`` (the episode returns the native env reports itself), under the same
  reward-only ``VecNormalize``.

So any difference comes from the environment. Each run does ``warmup`` PPO iterations (one
rollout of ``n_envs * n_steps`` customer-weeks, then ``n_epochs`` of updates) and then at
least ``iterations``, more for small ``n_envs`` so that at least ``min_steps`` are timed
(short iterations are noisy on a shared machine); figures are medians over the timed ones.
``env`` is the time inside the env's ``step`` (and ``env_method``, which MaskablePPO calls for
the action masks), ``rollout`` is all of ``collect_rollouts`` (env plus the policy's forward
passes and the buffer), ``learn`` is ``train``. Torch runs on one thread (faster than two on
a shared 2-core machine); for the record the native env is also measured with two threads,
for the first algorithm at the smallest ``n_envs`` only (two threads fighting other jobs for
two cores is very slow).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from bench.machine import machine_info, write_result
from cvm_rl.policies.features import FeatureTransform
from cvm_rl.training import TrainConfig, build_model, make_training_env
from simulator import ENV_ID
from simulator.config import Scenario, load_scenario

FLOOR = 4.0  # the floor: native at least this many times faster than DummyVecEnv


@dataclass
class Args:
    n_envs: list[int] = field(default_factory=lambda: [64, 1024])
    algos: list[str] = field(default_factory=lambda: ["ppo", "maskable_ppo"])
    iterations: int = 3
    min_steps: int = 30_000
    warmup: int = 1
    two_threads: bool = True
    seed: int = 0
    out: str = "bench/results/training.json"


def make_dummy_env(config: TrainConfig, scenario: Scenario) -> Any:
    """SB3's DummyVecEnv of single-customer envs with the native side's observations/rewards."""
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    transform = FeatureTransform.from_scenario(scenario)
    dim = len(transform.scale)
    space = gym.spaces.Box(-1.0, 1.0, (dim,), np.float32)

    def scale(obs: np.ndarray) -> np.ndarray:
        return transform.scaled(obs[None])[0].astype(np.float32)

    def make() -> gym.Env:
        env = gym.make(ENV_ID, scenario=scenario)
        return Monitor(gym.wrappers.TransformObservation(env, scale, space))

    venv = DummyVecEnv([make] * config.n_envs)
    venv.seed(config.seed)
    return VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=config.gamma)


def _timed(
    fn: Callable[..., Any], bucket: list[float], marks: tuple[list[int], list[float]] | None = None
) -> Callable[..., Any]:
    """``fn`` appending its duration to ``bucket``; with ``marks = (starts, calls)``, it also
    records where its own env calls begin in ``calls`` (to sum them per rollout)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if marks is not None:
            marks[0].append(len(marks[1]))
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        bucket.append(time.perf_counter() - start)
        return result

    return wrapper


def measure(
    config: TrainConfig, env: Any, iterations: int, warmup: int, threads: int
) -> dict[str, float]:
    """Seconds per PPO iteration (median over the timed ones) and its split."""
    import torch

    torch.set_num_threads(threads)
    with warnings.catch_warnings():
        # A batch size that does not divide the rollout is the same on both sides.
        warnings.filterwarnings("ignore", message=".*mini-batch size.*")
        model = build_model(config, env)
    rollout: list[float] = []
    learn: list[float] = []
    env_calls: list[float] = []
    starts: list[int] = []
    # Instance attributes shadow the methods learn() calls, so they are timed in place.
    model.collect_rollouts = _timed(model.collect_rollouts, rollout, (starts, env_calls))
    model.train = _timed(model.train, learn)
    env.step = _timed(env.step, env_calls)
    env.env_method = _timed(env.env_method, env_calls)
    steps_per_iteration = config.n_envs * config.n_steps
    total = warmup + iterations
    model.learn(total_timesteps=total * steps_per_iteration)
    env.close()
    if len(rollout) != total or len(learn) != total:
        raise RuntimeError(f"expected {total} PPO iterations, got {len(rollout)}")
    # Env calls after the last rollout (none expected) are not part of any iteration.
    bounds = [*starts, len(env_calls)]
    env_s = [sum(env_calls[bounds[i] : bounds[i + 1]]) for i in range(total)]
    per_iteration = [r + t for r, t in zip(rollout, learn, strict=True)]
    seconds = statistics.median(per_iteration[warmup:])
    return {
        "steps_per_iteration": steps_per_iteration,
        "iteration_s": seconds,
        "steps_per_s": steps_per_iteration / seconds,
        "rollout_s": statistics.median(rollout[warmup:]),
        "env_s": statistics.median(env_s[warmup:]),
        "learn_s": statistics.median(learn[warmup:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-envs", type=int, nargs="+", default=Args().n_envs)
    parser.add_argument("--algos", nargs="+", choices=["ppo", "maskable_ppo"], default=Args().algos)
    parser.add_argument("--iterations", type=int, default=Args.iterations)
    parser.add_argument("--min-steps", type=int, default=Args.min_steps)
    parser.add_argument("--warmup", type=int, default=Args.warmup)
    parser.add_argument(
        "--two-threads", action=argparse.BooleanOptionalAction, default=Args.two_threads
    )
    parser.add_argument("--seed", type=int, default=Args.seed)
    parser.add_argument("--out", default=Args.out)
    args = Args(**vars(parser.parse_args()))
    if args.iterations < 1 or args.warmup < 0:
        raise ValueError("iterations must be >= 1 and warmup >= 0")

    machine_before = machine_info("torch", "stable_baselines3")
    scenario = load_scenario("default")
    rows: list[dict[str, Any]] = []
    for algo in args.algos:
        for n in args.n_envs:
            base = TrainConfig(algo=algo, n_envs=n, seed=args.seed)
            # The default mini-batch is larger than a small rollout: one batch per epoch then.
            config = base.replace(batch_size=min(base.batch_size, n * base.n_steps))
            runs = [("native", 1), ("dummy", 1)]
            if args.two_threads and (algo, n) == (args.algos[0], min(args.n_envs)):
                runs.append(("native", 2))  # once: slow when the cores are busy
            for env_kind, threads in runs:
                make = make_training_env if env_kind == "native" else make_dummy_env
                # Two threads are measured for the record only: the minimum keeps them cheap.
                iterations = args.iterations
                if threads == 1:
                    iterations = max(iterations, -(-args.min_steps // (n * config.n_steps)))
                env = make(config, scenario)
                result = measure(config, env, iterations, args.warmup, threads)
                rows.append(
                    {"algo": algo, "n_envs": n, "env": env_kind, "torch_threads": threads}
                    | {"iterations": iterations}
                    | result
                )
    machine = machine_before | {"loadavg_1_5_15_after": list(machine_info()["loadavg_1_5_15"])}

    ratios: list[dict[str, Any]] = []
    for algo in args.algos:
        for n in args.n_envs:
            native, dummy = (
                next(
                    r
                    for r in rows
                    if (r["algo"], r["n_envs"], r["env"], r["torch_threads"]) == (algo, n, e, 1)
                )
                for e in ("native", "dummy")
            )
            ratio = native["steps_per_s"] / dummy["steps_per_s"]
            ratios.append({"algo": algo, "n_envs": n, "native_over_dummy": ratio})

    config = TrainConfig()
    print(
        f"PPO iterations: n_steps {config.n_steps}, n_epochs {config.n_epochs}, "
        f"batch min({config.batch_size}, n_envs*n_steps), net {config.net_arch}; "
        f"median of >= {args.iterations} iterations and >= {args.min_steps:,} steps after "
        f"{args.warmup} warm-up; "
        f"load average {machine['loadavg_1_5_15']} -> {machine['loadavg_1_5_15_after']}"
    )
    print(
        "| algo | n_envs | env | torch threads | steps/s | s/iteration | rollout s "
        "| of which env s | learn s |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['algo']} | {r['n_envs']:,} | {r['env']} | {r['torch_threads']} | "
            f"{r['steps_per_s']:,.0f} | {r['iteration_s']:.2f} | {r['rollout_s']:.2f} | "
            f"{r['env_s']:.2f} | {r['learn_s']:.2f} |"
        )
    for r in ratios:
        verdict = "met" if r["native_over_dummy"] >= FLOOR else "NOT met"
        print(
            f"{r['algo']} n_envs={r['n_envs']:,}: native / DummyVecEnv = "
            f"{r['native_over_dummy']:.1f}x (floor {FLOOR:.0f}x: {verdict})"
        )
    write_result(
        {
            "machine": machine,
            "hyperparameters": {
                "n_steps": config.n_steps,
                "n_epochs": config.n_epochs,
                "batch_size": f"min({config.batch_size}, n_envs * n_steps)",
                "net_arch": config.net_arch,
                "iterations": args.iterations,
                "min_steps": args.min_steps,
                "warmup": args.warmup,
            },
            "runs": rows,
            "ratios": ratios,
            "floor": FLOOR,
            "floor_met": all(r["native_over_dummy"] >= FLOOR for r in ratios),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
