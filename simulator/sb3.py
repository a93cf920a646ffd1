"""Stable-Baselines3 ``VecEnv`` view of the native vectorized environment.

SB3 expects per-env info dicts and a same-step reset carrying ``terminal_observation``;
this adapter provides both on top of one :class:`Population`, so PPO/A2C/DQN and
sb3-contrib's MaskablePPO (``env_method("action_masks")``) train on the batched kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)

from simulator.config import Scenario
from simulator.vector_env import CustomerLifecycleVectorEnv


class CustomerLifecycleSB3VecEnv(VecEnv):
    """``num_envs`` simulated customers as an SB3 ``VecEnv``.

    ``seed(s)`` (or ``seed=`` here) fixes the population drawn at the next ``reset``; later
    populations continue the same random stream, so a seeded run is reproducible.

    ``terminal_value``: at the horizon, each customer's residual value (the expected margin of
    the next 52 weeks with no contact, from the latent state:
    ``Population.expected_no_contact_margin``) is added to the last reward and the episode ends
    there (``TimeLimit.truncated`` False), so SB3 does not bootstrap its critic at the cut:
    the learner then optimizes the long-run value that evaluation reports, not an
    infinite-horizon value of its own critic.
    """

    def __init__(
        self,
        num_envs: int,
        scenario: str | Path | Scenario = "default",
        *,
        seed: int | None = None,
        strict_masking: bool = False,
        terminal_value: bool = False,
    ) -> None:
        self.venv = CustomerLifecycleVectorEnv(num_envs, scenario, strict_masking=strict_masking)
        self.terminal_value = terminal_value
        super().__init__(
            num_envs, self.venv.single_observation_space, self.venv.single_action_space
        )
        self._next_seed = seed
        self._actions: np.ndarray | None = None
        self._episode_returns = np.zeros(num_envs)
        self.last_info: dict[str, Any] = {}

    @property
    def scenario(self) -> Scenario:
        return self.venv.scenario

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        self._next_seed = seed
        return [seed] * self.num_envs

    def reset(self) -> VecEnvObs:
        seed = self._next_seed if self._next_seed is not None else self._seeds[0]
        obs, _ = self.venv.reset(seed=seed)
        self._next_seed = None
        self._reset_seeds()
        self._episode_returns[:] = 0.0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async()")
        obs, reward, _terminated, truncated, info = self.venv.step(self._actions)
        self.last_info = info  # the batched step info (arrays), for wrappers that need it
        self._actions = None
        self._episode_returns += reward
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if truncated[0]:
            # Horizon reached for everyone: report episodes, then reset in the same step.
            length = self.venv.scenario.horizon_weeks
            if self.terminal_value:
                reward = reward + self.venv.population.expected_no_contact_margin()
            for i, ret in enumerate(self._episode_returns):
                infos[i] = {
                    "terminal_observation": obs[i],
                    "TimeLimit.truncated": not self.terminal_value,
                    "episode": {"r": float(ret), "l": length, "t": 0.0},
                }
            obs, _ = self.venv.reset()
            self._episode_returns[:] = 0.0
        return obs, reward.astype(np.float32), truncated.copy(), infos

    def action_masks(self) -> np.ndarray:
        """(N, A) eligible actions (sb3-contrib's ``get_action_masks`` finds this)."""
        return self.venv.action_masks()

    def close(self) -> None:
        self.venv.close()

    # SB3 asks the sub-envs for attributes and methods; they all live on the one population.
    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self.venv, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **kwargs: Any
    ) -> list[Any]:
        idx = list(self._get_indices(indices))
        if method_name == "action_masks":
            return list(self.venv.action_masks()[idx])
        result = getattr(self.venv, method_name)(*method_args, **kwargs)
        return [result for _ in idx]

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        return [False for _ in self._get_indices(indices)]
