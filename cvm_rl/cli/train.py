"""``cvm train``: train a bandit or an RL policy and save a run directory with its bundle.

The run directory holds the bundle (``bundle/``), the SB3 checkpoint, TensorBoard logs, the
training config and metrics, and a learning curve measured on a fixed validation population
(seed 10,000 + the training seed).

  cvm train --algo maskable_ppo --steps 6000000 --seed 0 --out runs/mppo
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cvm_rl.cli.common import (
    CliError,
    add_scenario_argument,
    layer_widths,
    needs_extra,
    positive_int,
)
from cvm_rl.registry import ALGOS
from cvm_rl.train_config import TrainConfig

HELP = "train a bandit or RL policy and save a bundle"
TRAIN_OPTIONS: tuple[tuple[str, Callable[[str], Any], str], ...] = (
    ("steps", positive_int, "customer-weeks to train on"),
    ("n_envs", positive_int, "customers simulated in parallel"),
    ("gamma", float, "discount factor of the RL learners"),
    ("learning_rate", float, "optimizer step size of the RL learners"),
    ("ent_coef", float, "entropy bonus (PPO, A2C)"),
    ("n_epochs", positive_int, "passes over each rollout (PPO)"),
    ("batch_size", positive_int, "minibatch size (PPO, DQN)"),
    ("no_contact_prior", float, "initial logit bonus of no contact"),
    ("optout_cost", float, "training-reward charge per opt-out (never in evaluation)"),
)
"""Options that set the :class:`~cvm_rl.train_config.TrainConfig` field of the same name;
left out, the field keeps its default."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algo", required=True, choices=ALGOS, help="what to train")
    add_scenario_argument(parser)
    parser.add_argument("--seed", type=int, default=0, help="training seed (0..999)")
    parser.add_argument("--out", help="run directory (default runs/ALGO-SCENARIO-seedSEED)")
    for name, kind, text in TRAIN_OPTIONS:
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind,
            help=f"{text} (default: {TrainConfig.model_fields[name].default:,})",
        )
    parser.add_argument(
        "--net-arch",
        type=layer_widths,
        help="hidden layer widths of the RL networks (default: 64,64)",
    )
    parser.add_argument(
        "--terminal-value",
        action="store_true",
        default=None,
        help="RL: add each customer's residual value at the horizon to the last reward and end "
        "the episode there (train on the long-run value; default: bootstrap the critic)",
    )
    parser.add_argument(
        "--shaping",
        action="store_true",
        default=None,
        help="RL: potential-based reward shaping with the CLV planner's posterior long-run "
        "value of each customer (leaves the optimal policy unchanged)",
    )
    parser.add_argument(
        "--expected-rewards",
        action="store_true",
        default=None,
        help="RL: train on each customer-week's expected net margin given the latent state "
        "instead of the sampled one (the policy still sees observations only)",
    )
    parser.add_argument(
        "--warm-start",
        choices=["none", "rules", "clv_planner"],
        help="PPO: clone this teacher's decisions into the policy before RL (default: none)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from cvm_rl.config import error_message

    with needs_extra("train", "train"):
        from cvm_rl.training import train
    with needs_extra("plots", "train"):
        from cvm_rl.plots import plot_learning_curves

    names = [name for name, _, _ in TRAIN_OPTIONS] + [
        "net_arch",
        "terminal_value",
        "shaping",
        "expected_rewards",
        "warm_start",
    ]
    values = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    try:
        config = TrainConfig(algo=args.algo, scenario=args.scenario, seed=args.seed, **values)
    except ValidationError as exc:  # names the field; the option is the same with dashes
        raise CliError(f"train: {error_message(exc)}") from None
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
