"""Native vectorized environment: N customers stepped together by one kernel call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from simulator.config import Scenario, load_scenario
from simulator.core import Population, StepResult
from simulator.spaces import action_space, observation_space


class CustomerLifecycleVectorEnv(VectorEnv):
    """``num_envs`` customers of one population, the batched twin of ``CustomerLifecycleEnv``.

    Same dynamics, spaces and arguments as the single env (see its docstring); one call steps
    every customer with numpy array operations. All customers share the horizon, so all are
    truncated together; the next ``step`` then resets the population (gymnasium's
    ``NEXT_STEP`` autoreset) and ignores its actions.

    Infos are a dict of arrays of length ``num_envs``: ``action_mask`` (N, A), ``stage``,
    ``executed_action``, ``masked_action``, ``budget_refused``, ``purchases``, ``revenue``,
    ``margin``, ``discount_cost``, ``contact_cost``, ``opted_out`` (and ``oracle`` with the
    latent state when ``oracle_info=True``).
    """

    metadata: dict[str, Any] = {  # noqa: RUF012 (gymnasium API)
        "render_modes": [],
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        num_envs: int,
        scenario: str | Path | Scenario = "default",
        *,
        strict_masking: bool = False,
        oracle_info: bool = False,
    ) -> None:
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs = int(num_envs)
        self.scenario = load_scenario(scenario)
        self.strict_masking = strict_masking
        self.oracle_info = oracle_info
        self.single_observation_space = observation_space(self.scenario)
        self.single_action_space = action_space(self.scenario)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._population: Population | None = None
        self._autoreset = False

    @property
    def population(self) -> Population:
        if self._population is None:
            raise gym.error.ResetNeeded("call reset() before using the environment")
        return self._population

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._population = Population.create(
            self.scenario, self.num_envs, self.np_random, strict=self.strict_masking
        )
        self._autoreset = False
        return self.population.observe(), self._info(None)

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        n = self.num_envs
        if self._autoreset:
            obs, info = self.reset()
            zeros = np.zeros(n, dtype=bool)
            return obs, np.zeros(n), zeros, zeros.copy(), info
        actions = np.asarray(actions)
        if actions.shape != (n,):
            raise ValueError(f"actions must have shape ({n},), got {actions.shape}")
        result = self.population.step(actions)
        self._autoreset = result.truncated
        return (
            self.population.observe(),
            result.reward,
            np.zeros(n, dtype=bool),
            np.full(n, result.truncated),
            self._info(result),
        )

    def action_masks(self) -> np.ndarray:
        """(N, A) eligible actions now."""
        return self.population.action_mask().copy()

    def oracle_state(self) -> dict[str, np.ndarray]:
        return self.population.oracle_state()

    def _info(self, result: StepResult | None) -> dict[str, Any]:
        pop = self.population
        info: dict[str, Any] = {"action_mask": pop.action_mask().copy(), "stage": pop.stage()}
        if result is not None:
            info.update(
                executed_action=result.executed_action,
                masked_action=result.masked_action,
                budget_refused=result.budget_refused,
                purchases=result.purchases,
                revenue=result.revenue,
                margin=result.margin,
                discount_cost=result.discount_cost,
                contact_cost=result.contact_cost,
                opted_out=result.opted_out,
            )
        if self.oracle_info:
            info["oracle"] = pop.oracle_state()
            if result is not None:
                info["oracle"]["dropped_out"] = result.dropped_out
                if result.truncated and pop.present.all():
                    # What each customer carries out of the horizon (no contact after it).
                    info["oracle"]["residual_value"] = pop.expected_no_contact_margin()
        return info
