"""Single-customer gymnasium environment on the shared population kernel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from simulator.config import Scenario, load_scenario
from simulator.core import Population, StepResult
from simulator.spaces import action_space, observation_space


class CustomerLifecycleEnv(gym.Env[np.ndarray, np.int64]):
    """One customer of a simulated customer base, stepped weekly under marketing contact.

    ## Description
    The customer's purchases follow the BG/NBD model (latent purchase rate and per-purchase
    dropout) with Gamma-Gamma spend, calibrated on the CDNOW data; offers raise the purchase
    rate, cost margin on every purchase of the offer week, and pull purchases forward; contacts
    build channel fatigue and raise opt-out risk, and "sleeping dogs" may drop out when
    contacted. The business only sees purchase and contact history. See ``simulator.core``.

    ## Action Space
    ``Discrete(1 + n_offers * n_channels)``: 0 is no contact; action ``1 + o * n_channels + c``
    sends offer ``o`` through channel ``c`` (``scenario.action_names()`` lists them).

    ## Observation Space
    ``Box`` float32 of ``observation_features(scenario)`` (names, bounds, in order): recency,
    frequency (repeat purchases), average spend, tenure; per channel weeks since contact,
    contacts in the cap window and opt-in flag; lifecycle stage and segment one-hot; calendar
    week (sin, cos) and progress through the horizon. Latent state is never observed:
    ``oracle_state()`` exposes it for evaluation.

    ## Rewards
    Net margin of the week: ``margin_rate * revenue - discount cost - contact cost``.

    ## Starting State
    Latent traits are drawn from the scenario; an existing customer gets an exact no-contact
    purchase history over up to ``history_weeks``; some start as prospects (registered, no
    purchase) and, with ``acquisition.arrival_share``, some join later in the episode.

    ## Episode End
    Never terminated (the business cannot see a customer leave); truncated after
    ``horizon_weeks`` weeks (52 by default).

    ## Action masking
    ``info["action_mask"]`` and :meth:`action_masks` give the eligible actions (opt-in,
    frequency caps, budget). A masked action is executed as no contact and counted in
    ``info["masked_action"]``; with ``strict_masking=True`` it raises ``MaskedActionError``.

    ## Arguments
    * ``scenario``: a shipped scenario name, a TOML path or a :class:`Scenario` (``"default"``).
    * ``strict_masking``: raise on ineligible actions instead of skipping them.
    * ``oracle_info``: add the latent state under ``info["oracle"]`` (evaluation only).
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium API)

    def __init__(
        self,
        scenario: str | Path | Scenario = "default",
        *,
        strict_masking: bool = False,
        oracle_info: bool = False,
    ) -> None:
        self.scenario = load_scenario(scenario)
        self.strict_masking = strict_masking
        self.oracle_info = oracle_info
        self.action_space = action_space(self.scenario)
        self.observation_space = observation_space(self.scenario)
        self._population: Population | None = None

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
            self.scenario, 1, self.np_random, strict=self.strict_masking
        )
        return self.population.observe()[0], self._info(None)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        pop = self.population
        if pop.week >= self.scenario.horizon_weeks:
            raise gym.error.ResetNeeded("the episode is over (truncated); call reset()")
        if not self.action_space.contains(action):
            raise ValueError(
                f"action must be an int in [0, {self.scenario.n_actions}), got {action!r}"
            )
        result = pop.step(np.array([int(action)]))
        obs = pop.observe()[0]
        return obs, float(result.reward[0]), False, result.truncated, self._info(result)

    def action_masks(self) -> np.ndarray:
        """Eligible actions now (for sb3-contrib's MaskablePPO)."""
        return self.population.action_mask()[0].copy()

    def oracle_state(self) -> dict[str, Any]:
        """The customer's latent state (evaluation and oracle policies only)."""
        return {k: v[0] for k, v in self.population.oracle_state().items()}

    def _info(self, result: StepResult | None) -> dict[str, Any]:
        pop = self.population
        info: dict[str, Any] = {
            "action_mask": pop.action_mask()[0].copy(),
            "stage": int(pop.stage()[0]),
            "masked_actions_total": pop.masked_total,
        }
        if result is not None:
            info.update(
                executed_action=int(result.executed_action[0]),
                masked_action=bool(result.masked_action[0]),
                budget_refused=bool(result.budget_refused[0]),
                purchases=int(result.purchases[0]),
                revenue=float(result.revenue[0]),
                margin=float(result.margin[0]),
                discount_cost=float(result.discount_cost[0]),
                contact_cost=float(result.contact_cost[0]),
                opted_out=bool(result.opted_out[0]),
            )
        if self.oracle_info:
            info["oracle"] = self.oracle_state()
            if result is not None:
                info["oracle"]["dropped_out"] = bool(result.dropped_out[0])
        return info
