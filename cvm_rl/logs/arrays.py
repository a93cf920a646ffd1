"""Logged feedback as arrays: the form model fitting and off-policy evaluation read.

:class:`LoggedData` is one row per decision. The logged action follows the log's one
convention: ``actions`` is what the logging policy chose and ``propensities`` the probability
with which it chose it; ``executed`` is what the environment then executed (the same action
unless, e.g., a budget turned a contact into no contact). Rewards follow the executed action.
:mod:`cvm_rl.logs.convert` builds it from a decision log or an export;
:func:`cvm_rl.logs.simulated.collect_logged_data` from the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class LoggedData:
    """Logged decisions: ``obs`` (N, D) at decision time, ``mask`` (N, A) eligible actions,
    ``actions`` (N,) chosen actions, ``propensities`` (N,) their logging probabilities,
    ``rewards`` (N,) the rewards that followed, and ``executed`` (N,) the executed actions
    (default: ``actions``)."""

    obs: np.ndarray
    mask: np.ndarray
    actions: np.ndarray
    propensities: np.ndarray
    rewards: np.ndarray
    executed: np.ndarray | None = None

    def __post_init__(self) -> None:
        obs = np.asarray(self.obs, dtype=np.float32)
        mask = np.asarray(self.mask)
        actions = np.asarray(self.actions)
        executed = actions if self.executed is None else np.asarray(self.executed)
        propensities = np.asarray(self.propensities, dtype=np.float64)
        rewards = np.asarray(self.rewards, dtype=np.float64)
        if obs.ndim != 2:
            raise ValueError(f"obs must have shape (N, D), got {obs.shape}")
        n = len(obs)
        if mask.ndim != 2 or len(mask) != n or mask.dtype != bool:
            raise ValueError(
                f"mask must be a boolean (N={n}, A) array, got {mask.dtype} {mask.shape}"
            )
        for name, value in (("actions", actions), ("executed", executed)):
            if value.shape != (n,) or not np.issubdtype(value.dtype, np.integer):
                raise ValueError(f"{name} must be ({n},) integers, got {value.dtype} {value.shape}")
            if n and (value.min() < 0 or value.max() >= mask.shape[1]):
                raise ValueError(f"{name} must be in [0, {mask.shape[1]}), got {value.min()}..")
        if n and not mask[np.arange(n), actions].all():
            raise ValueError("actions: every logged action must be eligible under mask")
        if propensities.shape != (n,) or not np.all((propensities >= 0) & (propensities <= 1)):
            raise ValueError(f"propensities must be ({n},) values in [0, 1]")
        if rewards.shape != (n,) or not np.isfinite(rewards).all():
            raise ValueError(f"rewards must be ({n},) finite numbers")
        if not np.isfinite(obs).all():
            raise ValueError("obs must be finite (found NaN or inf)")
        for name, value in (
            ("obs", obs),
            ("mask", mask),
            ("actions", actions.astype(np.int64, copy=False)),
            ("propensities", propensities),
            ("rewards", rewards),
            ("executed", executed.astype(np.int64, copy=False)),
        ):
            object.__setattr__(self, name, value)

    @property
    def executed_actions(self) -> np.ndarray:
        """``executed`` as a non-optional array (it is always filled after construction)."""
        assert self.executed is not None
        return self.executed

    def __len__(self) -> int:
        return len(self.obs)
