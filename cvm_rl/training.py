"""Train a policy on simulated customers and save it as a model bundle.

One entry point, :func:`train`, for both families:

* **contextual bandits** (``linucb``, ``lints``, ``egreedy``) learn online from each week's
  immediate reward (:func:`train_bandit`);
* **RL** (``ppo``, ``maskable_ppo``, ``a2c``, ``dqn``) are Stable-Baselines3 / sb3-contrib
  learners on the native vectorized environment (one numpy kernel steps every customer;
  :class:`~simulator.sb3.CustomerLifecycleSB3VecEnv`), with a discount close to 1 so they
  optimize value over the horizon rather than this week's reward.

Every learner sees the same fixed feature scaling
(:class:`~cvm_rl.policies.features.FeatureTransform`), applied by
:class:`ScaledObservations` for SB3, so the exported network needs nothing fitted beside its
weights. Rewards are scaled by SB3's ``VecNormalize`` (reward only) during training, which
leaves the policy itself unchanged.

A run directory holds ``bundle/`` (what the server loads), ``config.json``,
``learning_curve.csv`` and ``learning_curve.png``, the SB3 checkpoint (``sb3_model.zip``)
and TensorBoard logs (``tensorboard/``).
"""

from __future__ import annotations

import csv
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm import TqdmExperimentalWarning
from tqdm.rich import tqdm

from cvm_rl.bundle import save_bundle
from cvm_rl.evaluation import run_episode
from cvm_rl.policies.bandits import LinearBandit
from cvm_rl.policies.base import Policy
from cvm_rl.policies.features import FeatureTransform
from cvm_rl.policies.mlp import MLPPolicy
from cvm_rl.policies.planner import CLVPlannerPolicy
from cvm_rl.registry import BANDIT_ALGOS, policy_class
from cvm_rl.registry import sb3_algorithm as sb3_algorithm_class
from cvm_rl.rollout import rollout
from cvm_rl.train_config import VALIDATION_SEED_OFFSET, TrainConfig
from simulator.config import Scenario, load_scenario


@dataclass
class TrainResult:
    policy: Policy
    config: TrainConfig
    curve_steps: np.ndarray
    curve_values: np.ndarray
    seconds: float
    out: Path | None = None

    @property
    def bundle_path(self) -> Path | None:
        return None if self.out is None else self.out / "bundle"


def _vec_env_wrapper() -> type:
    from stable_baselines3.common.vec_env import VecEnvWrapper

    class _Scaled(VecEnvWrapper):
        """Applies the fixed :class:`FeatureTransform` to observations (also the
        ``terminal_observation`` SB3 bootstraps from), passes the action masks through, and
        shapes the training reward (opt-out charge, potential-based shaping)."""

        def __init__(
            self,
            venv: Any,
            transform: FeatureTransform,
            optout_cost: float,
            potential: Callable[[np.ndarray], np.ndarray] | None,
            gamma: float,
            expected_rewards: bool = False,
        ) -> None:
            dim = venv.observation_space.shape[0]
            space = gym.spaces.Box(-1.0, 1.0, (dim,), np.float32)
            super().__init__(venv, observation_space=space)
            self.transform = transform
            self.optout_cost = optout_cost
            self.potential = potential
            self.gamma = gamma
            self.expected_rewards = expected_rewards
            self._last_potential: np.ndarray | None = None
            self._expected: tuple[np.ndarray, np.ndarray] | None = None

        def _scale(self, obs: Any) -> np.ndarray:
            return self.transform.scaled(obs).astype(np.float32)

        def reset(self) -> np.ndarray:
            obs: Any = self.venv.reset()
            if self.potential is not None:
                self._last_potential = self.potential(obs)
            return self._scale(obs)

        def step_async(self, actions: np.ndarray) -> None:
            if self.expected_rewards:
                adapter: Any = self.venv  # a CustomerLifecycleSB3VecEnv
                self._expected = expected_week_rewards(adapter.venv.population, actions)
            self.venv.step_async(actions)

        def step_wait(self) -> Any:
            venv: Any = self.venv  # the native env's adapter (or a wrapper of it)
            obs, reward, done, infos = venv.step_wait()
            if self._expected is not None:
                # The week's expected net margin given the latent state replaces the draw;
                # the residual value added at the horizon stays (it is an expectation too).
                rows, expected = self._expected
                info = venv.last_info
                sampled = info["margin"] - info["discount_cost"] - info["contact_cost"]
                reward = reward.copy()
                reward[rows] += expected - sampled[rows]
                self._expected = None
            if self.optout_cost:
                reward = reward - self.optout_cost * venv.last_info["opted_out"]
            if self.potential is not None:
                # F = gamma * phi(s') - phi(s), with phi = 0 once the episode is over: every
                # policy's return moves by -phi(s0), so the ranking of policies is unchanged.
                assert self._last_potential is not None
                potential = self.potential(obs)
                after = np.where(done, 0.0, self.gamma * potential)
                reward = (reward + after - self._last_potential).astype(np.float32)
                # After a same-step reset, obs is the next episode's first observation.
                self._last_potential = potential
            for info in infos:
                if "terminal_observation" in info:
                    terminal = info["terminal_observation"][None]
                    info["terminal_observation"] = self._scale(terminal)[0]
            return self._scale(obs), reward, done, infos

        def action_masks(self) -> np.ndarray:
            venv: Any = self.venv  # the native env (or a wrapper passing masks on)
            return venv.action_masks()

    return _Scaled


def ScaledObservations(
    venv: Any,
    transform: FeatureTransform,
    optout_cost: float = 0.0,
    *,
    potential: Callable[[np.ndarray], np.ndarray] | None = None,
    gamma: float = 1.0,
    expected_rewards: bool = False,
) -> Any:
    """SB3 ``VecEnvWrapper`` feeding scaled features (SB3 is imported only when used); with
    ``optout_cost``, charging that much in the training reward per opt-out; with
    ``potential`` (a function of raw observations), adding the potential-based shaping
    ``gamma * potential(s') - potential(s)`` (Ng, Harada and Russell 1999); with
    ``expected_rewards`` (``venv`` a :class:`~simulator.sb3.CustomerLifecycleSB3VecEnv`),
    training on each present customer's expected net margin of the week given the latent
    state instead of the sampled one (the policy still sees observations only)."""
    return _vec_env_wrapper()(venv, transform, optout_cost, potential, gamma, expected_rewards)


def expected_week_rewards(population: Any, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, values): the present customers and the expected net margin of this week under
    ``actions`` (masked ones executed as no contact) from the latent state."""
    from cvm_rl.policies.lifecycle_value import Horizon, plan_values
    from cvm_rl.policies.oracle import latent_belief

    rows = np.flatnonzero(population.present)
    executed = np.where(population.action_mask()[rows, actions[rows]], actions[rows], 0)
    week = Horizon(week_of_year=population.week_of_year, weeks_left=1)
    values = plan_values(
        latent_belief(population, rows), population.scenario, population.tables, week
    )
    return rows, values[np.arange(rows.size), executed]


def make_training_env(config: TrainConfig, scenario: Scenario) -> Any:
    """The SB3 view of the native vectorized env: scaled observations, normalized reward."""
    from stable_baselines3.common.vec_env import VecNormalize

    from simulator.sb3 import CustomerLifecycleSB3VecEnv

    env = CustomerLifecycleSB3VecEnv(
        config.n_envs, scenario, seed=config.seed, terminal_value=config.terminal_value
    )
    potential = CLVPlannerPolicy(scenario).customer_value if config.shaping else None
    scaled = ScaledObservations(
        env,
        FeatureTransform.from_scenario(scenario),
        config.optout_cost,
        potential=potential,
        gamma=config.gamma,
        expected_rewards=config.expected_rewards,
    )
    return VecNormalize(scaled, norm_obs=False, norm_reward=True, gamma=config.gamma)


def build_model(config: TrainConfig, env: Any, tensorboard_log: str | None = None) -> Any:
    """The SB3 learner for ``config.algo`` with flat hyperparameters from ``config``."""
    import torch

    algorithm = sb3_algorithm_class(config.algo)
    policy_kwargs = {"net_arch": list(config.net_arch), **config.policy_kwargs}
    common: dict[str, Any] = {
        "gamma": config.gamma,
        "learning_rate": config.learning_rate,
        "seed": config.seed,
        "verbose": 0,
        "tensorboard_log": tensorboard_log,
        "device": "cpu",
    }
    model: Any
    if config.algo in ("ppo", "maskable_ppo"):
        model = algorithm(
            "MlpPolicy",
            env,
            n_steps=config.n_steps,
            batch_size=config.batch_size,
            n_epochs=config.n_epochs,
            gae_lambda=config.gae_lambda,
            ent_coef=config.ent_coef,
            policy_kwargs=policy_kwargs,
            **common,
        )
    elif config.algo == "a2c":
        model = algorithm(
            "MlpPolicy",
            env,
            n_steps=config.n_steps,
            gae_lambda=config.gae_lambda,
            ent_coef=config.ent_coef,
            policy_kwargs=policy_kwargs,
            **common,
        )
    else:
        model = algorithm(
            "MlpPolicy",
            env,
            batch_size=config.batch_size,
            buffer_size=max(100_000, 4 * config.n_envs * config.n_steps),
            learning_starts=config.n_envs * 4,
            train_freq=1,
            gradient_steps=max(1, config.n_envs // config.batch_size),
            target_update_interval=max(1, 20 * config.n_envs),
            exploration_fraction=0.3,
            policy_kwargs=policy_kwargs,
            **common,
        )
    if config.no_contact_prior:
        with torch.no_grad():
            head = model.policy.q_net.q_net[-1] if config.algo == "dqn" else model.policy.action_net
            head.bias[0] += config.no_contact_prior
            if config.algo == "dqn":
                model.policy.q_net_target.load_state_dict(model.policy.q_net.state_dict())
    return model


def _curve_callback(curve: list[tuple[int, float]], scenario: Scenario, config: TrainConfig) -> Any:
    from stable_baselines3.common.callbacks import BaseCallback

    class _ValidationValue(BaseCallback):
        """After every ``validation_every`` finished horizons, the current policy's value per
        customer on one fixed validation population (its own seed, never used for training
        or evaluation), so the curve shows learning rather than population noise."""

        def __init__(self) -> None:
            super().__init__()
            self.horizons = 0
            self.pending = False

        def _on_step(self) -> bool:
            infos = self.locals["infos"]
            if not any("episode" in i for i in infos):
                return True
            train_value = float(np.mean([i["episode"]["r"] for i in infos if "episode" in i]))
            self.logger.record("rollout/value_per_customer", train_value)
            self.horizons += 1
            self.pending |= self.horizons % config.validation_every == 0
            return True

        def _on_rollout_start(self) -> None:
            # After the update that followed the horizon, so the point shows its effect.
            if self.pending:
                self.pending = False
                self.validate()

        def _on_training_start(self) -> None:
            self.validate()

        def _on_training_end(self) -> None:
            if not curve or curve[-1][0] != self.num_timesteps:
                self.validate()

        def validate(self) -> None:
            policy = MLPPolicy.from_sb3(self.model, scenario, name=config.algo)
            value = validation_value(policy, scenario, config)
            curve.append((self.num_timesteps, value))
            self.logger.record("validation/value_per_customer", value)

    return _ValidationValue()


def train_bandit(
    policy: LinearBandit,
    scenario: Scenario | str = "default",
    *,
    n_customers: int = 10_000,
    weeks: int = 52,
    seed: int = 0,
) -> list[float]:
    """Online learning on simulated customers: each week act, step, and update with the
    immediate reward of the action actually executed. Runs ``weeks`` weeks (a fresh
    population is drawn whenever the horizon ends) and returns the learning curve: mean
    reward per customer for each week. The policy keeps its own seeded generator."""
    if n_customers < 1 or weeks < 1:
        raise ValueError(f"n_customers and weeks must be >= 1, got {n_customers}, {weeks}")
    curve = []
    steps = rollout(
        policy, scenario, n_customers=n_customers, weeks=weeks, seed=seed, reseed_policy=False
    )
    for t in steps:
        policy.update(t.obs, t.executed, t.reward)
        curve.append(float(np.mean(t.reward)))
    return curve


def validation_value(policy: Policy, scenario: Scenario, config: TrainConfig) -> float:
    """Value per customer of ``policy`` on the run's fixed validation population."""
    seed = VALIDATION_SEED_OFFSET + config.seed
    return run_episode(policy, scenario, config.validation_customers, seed)["value"]


def train(
    config: TrainConfig, out: str | Path | None = None, *, progress_bar: bool = False
) -> TrainResult:
    """Train ``config.algo`` and, with ``out``, write the run directory and its bundle."""
    scenario = load_scenario(config.scenario)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if config.algo in BANDIT_ALGOS:
        policy, steps, values = _train_bandit(config, scenario, progress_bar)
    else:
        policy, steps, values = _train_rl(config, scenario, out_dir, progress_bar)
    seconds = time.perf_counter() - start
    result = TrainResult(policy, config, steps, values, seconds, out_dir)
    if out_dir is not None:
        _write_run(result, scenario)
    return result


def _train_bandit(
    config: TrainConfig, scenario: Scenario, progress_bar: bool
) -> tuple[Policy, np.ndarray, np.ndarray]:
    """Online learning, one horizon of ``n_envs`` fresh customers at a time, validated
    like the RL learners every ``validation_every`` horizons."""
    bandit_type: Any = policy_class(config.algo)
    policy = bandit_type(scenario, seed=config.seed, **config.bandit_kwargs)
    n_customers = min(config.n_envs, config.steps)
    horizon = scenario.horizon_weeks
    total_weeks = max(1, config.steps // n_customers)
    curve = [(0, validation_value(policy, scenario, config))]
    done = 0
    with warnings.catch_warnings():  # tqdm.rich calls itself experimental; SB3 uses it too
        warnings.simplefilter("ignore", TqdmExperimentalWarning)
        progress = tqdm(total=total_weeks * n_customers, disable=not progress_bar, unit="step")
    for index in range(-(-total_weeks // horizon)):
        weeks = min(horizon, total_weeks - index * horizon)
        # A distinct population per horizon, derived from the training seed.
        seed = int(np.random.SeedSequence([config.seed, index]).generate_state(1)[0])
        train_bandit(policy, scenario, n_customers=n_customers, weeks=weeks, seed=seed)
        done += weeks * n_customers
        progress.update(weeks * n_customers)
        if (index + 1) % config.validation_every == 0 or done >= total_weeks * n_customers:
            curve.append((done, validation_value(policy, scenario, config)))
    progress.close()
    steps = np.array([s for s, _ in curve], dtype=np.int64)
    return policy, steps, np.array([v for _, v in curve])


def _train_rl(
    config: TrainConfig, scenario: Scenario, out: Path | None, progress_bar: bool
) -> tuple[Policy, np.ndarray, np.ndarray]:
    import torch
    from stable_baselines3.common.utils import set_random_seed

    torch.set_num_threads(config.torch_threads)
    set_random_seed(config.seed)
    env = make_training_env(config, scenario)
    tensorboard = str(out / "tensorboard") if out is not None else None
    model = build_model(config, env, tensorboard)
    if config.warm_start != "none":
        clone_policy(model, config, scenario)
    curve: list[tuple[int, float]] = []
    model.learn(
        total_timesteps=config.steps,
        callback=_curve_callback(curve, scenario, config),
        progress_bar=progress_bar,
        tb_log_name=config.algo,
    )
    if out is not None:
        model.save(out / "sb3_model.zip")
    policy = MLPPolicy.from_sb3(model, scenario, name=config.algo)
    env.close()
    steps = np.array([s for s, _ in curve], dtype=np.int64)
    values = np.array([v for _, v in curve])
    return policy, steps, values


WARM_START_CUSTOMERS = 10_000
"""Customers of the population whose year of a teacher's decisions a warm start clones."""


def clone_policy(model: Any, config: TrainConfig, scenario: Scenario, epochs: int = 3) -> float:
    """Behaviour cloning before RL: the SB3 policy's action distribution is fitted (cross
    entropy, the eligibility mask applied as in training) to the decisions of the teacher
    ``config.warm_start`` (``rules`` or ``clv_planner``) over one year of a population of its
    own seed; returns the final epoch's mean loss. PPO then starts from the teacher."""
    import torch

    from cvm_rl.registry import reference_policy

    teacher = reference_policy(config.warm_start, scenario, seed=config.seed)
    transform = FeatureTransform.from_scenario(scenario)
    obs, masks, actions = [], [], []
    seed = int(np.random.SeedSequence([config.seed, 0x3A7]).generate_state(1)[0])
    for t in rollout(teacher, scenario, n_customers=WARM_START_CUSTOMERS, seed=seed):
        obs.append(transform.scaled(t.obs).astype(np.float32))
        masks.append(t.mask)
        actions.append(t.decisions.actions)
    x = torch.as_tensor(np.concatenate(obs))
    m = np.concatenate(masks)
    a = torch.as_tensor(np.concatenate(actions))
    policy = model.policy
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(config.seed)
    loss_value = float("nan")
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        losses = []
        for start in range(0, len(x), config.batch_size):
            batch = order[start : start + config.batch_size]
            kwargs = {"action_masks": m[batch.numpy()]} if config.algo == "maskable_ppo" else {}
            distribution = policy.get_distribution(x[batch], **kwargs)
            loss = -distribution.log_prob(a[batch]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        loss_value = float(np.mean(losses))
    return loss_value


def _write_run(result: TrainResult, scenario: Scenario) -> None:
    out = result.out
    assert out is not None
    config = result.config.model_dump()
    metrics = {
        "train_seconds": round(result.seconds, 2),
        "env_steps": int(result.config.steps),
        "final_train_value_per_customer": (
            float(result.curve_values[-1]) if len(result.curve_values) else None
        ),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    with (out / "learning_curve.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["env_steps", "value_per_customer"])
        writer.writerows(
            zip(result.curve_steps.tolist(), result.curve_values.tolist(), strict=True)
        )
    save_bundle(
        result.policy,
        out / "bundle",
        algo=result.config.algo,
        training_config=config,
        metrics=metrics,
    )


def load_learning_curve(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(env_steps, value per customer) written by :func:`train`."""
    path = Path(run_dir) / "learning_curve.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no learning curve (is this a `cvm train` run directory?)")
    data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return data[:, 0].astype(np.int64), data[:, 1]
