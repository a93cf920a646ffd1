"""The one protocol every policy follows: probabilities over eligible actions, then sampling."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from simulator.config import Scenario
from simulator.core import observation_feature_names

TIE_RTOL = 1e-9
"""Scores this close (relative) to the best count as tied in :func:`argmax_probabilities`."""


class Policy(ABC):
    """Maps a batch of observations and action masks to action probabilities.

    ``action_probabilities(obs, mask)`` returns an (N, A) array whose rows sum to one and are
    zero wherever ``mask`` is False; ``act`` samples from it with the policy's seeded generator
    and returns the actions with their propensities (the probability of the sampled action).
    """

    name: str = "policy"
    monte_carlo_probabilities: bool = False
    """True when ``action_probabilities`` is a Monte Carlo estimate from ``self.rng`` (so it
    changes from call to call unless the generator is re-seeded)."""

    def __init__(self, scenario: Scenario, *, seed: int | None = None) -> None:
        self.scenario = scenario
        self._set_schema(observation_feature_names(scenario), scenario.n_actions, seed)

    def _set_schema(self, feature_names: list[str], n_actions: int, seed: int | None) -> None:
        """Feature order, action count and the seeded generator that ``act`` samples with."""
        self.feature_names = feature_names
        self.feature_index = {name: i for i, name in enumerate(feature_names)}
        self.n_actions = n_actions
        self.rng = np.random.default_rng(seed)

    def seed(self, seed: int | None) -> None:
        self.rng = np.random.default_rng(seed)

    @abstractmethod
    def _probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(N, A) probabilities for validated inputs; must respect ``mask``."""

    def action_probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        obs, mask = self.check_batch(obs, mask)
        return self._probabilities(obs, mask)

    def act(self, obs: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sampled actions (N,) and their propensities (N,)."""
        actions, propensities, _ = self.act_with_distribution(obs, mask)
        return actions, propensities

    def act_with_distribution(
        self, obs: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sampled actions (N,), their propensities (N,) and the distribution (N, A) they
        were drawn from, in one draw of the policy's generator (what a decision log stores).
        Policies whose sampling is not a draw from ``action_probabilities`` (Thompson
        sampling) override this and ``act`` together."""
        probs = self.action_probabilities(obs, mask)
        actions = sample_actions(probs, self.rng)
        return actions, probs[np.arange(len(actions)), actions], probs

    def check_obs(self, obs: np.ndarray, dtype: type = np.float32) -> np.ndarray:
        """``obs`` as an (N, n_features) finite array of ``dtype``, or a ValueError naming it."""
        obs = np.asarray(obs, dtype=dtype)
        if obs.ndim != 2 or obs.shape[1] != len(self.feature_names):
            raise ValueError(f"obs must have shape (N, {len(self.feature_names)}), got {obs.shape}")
        if not np.isfinite(obs).all():
            raise ValueError("obs must be finite (found NaN or inf)")
        return obs

    def check_batch(self, obs: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        obs = self.check_obs(obs)
        mask = np.asarray(mask)
        if mask.shape != (obs.shape[0], self.n_actions):
            raise ValueError(
                f"mask must have shape ({obs.shape[0]}, {self.n_actions}), got {mask.shape}"
            )
        if mask.dtype != bool:
            raise ValueError(f"mask must be boolean, got dtype {mask.dtype}")
        if not mask.any(axis=1).all():
            raise ValueError("mask: every row needs at least one eligible action")
        return obs, mask

    def feature(self, obs: np.ndarray, name: str) -> np.ndarray:
        return obs[:, self.feature_index[name]]


def check_number(
    name: str, value: float, *, low: float, strict: bool, high: float = np.inf
) -> float:
    """``value`` as a finite float above ``low`` (``strict``: ``> low``) and at most ``high``;
    otherwise a ValueError naming ``name`` and the allowed range."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    too_low = out <= low if strict else out < low
    if not np.isfinite(out) or too_low or out > high:
        bound = f"> {low}" if strict else f">= {low}"
        allowed = f"in [{low}, {high}]" if np.isfinite(high) else f"finite and {bound}"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return out


def argmax_probabilities(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """One-hot on the best eligible score, split evenly among (near-)exact ties."""
    masked = np.where(mask, scores, -np.inf)
    best = masked.max(axis=1, keepdims=True)
    ties = mask & (masked >= best - TIE_RTOL * np.maximum(1.0, np.abs(best)))
    return ties / ties.sum(axis=1, keepdims=True)


def explored(probs: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Whether each drawn action is exploration: its probability is below its row's maximum
    (drawing any of several tied best actions is not)."""
    chosen = probs[np.arange(len(actions)), actions]
    return chosen < probs.max(axis=1) * (1.0 - TIE_RTOL)


def sample_actions(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One action per row of ``probs`` by inverse CDF (vectorized)."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(probs.shape[0]) * cdf[:, -1]
    actions = (cdf <= u[:, None]).sum(axis=1)
    # Guard against rounding at the top of the CDF landing on a zero-probability action.
    return np.minimum(actions, probs.shape[1] - 1)


def one_hot(actions: np.ndarray, n_actions: int) -> np.ndarray:
    probs = np.zeros((len(actions), n_actions))
    probs[np.arange(len(actions)), actions] = 1.0
    return probs
