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


@dataclass(frozen=True, eq=False)
class LoggedDecisions:
    """Logged decisions as arrays, with what identifies each row: the form off-policy
    evaluation builds per-customer trajectories from (:mod:`cvm_rl.logs.convert` makes it).

    ``data`` holds the arrays model fitting reads (:class:`LoggedData`); per row,
    ``event_ids``, ``customer_ids`` and ``model_ids`` (str) and ``decided_at_us`` (int64,
    microseconds since the Unix epoch, UTC); ``probabilities`` (N, A) is the logging policy's
    distribution, NaN in the rows where it was not logged (None when no row has one).
    ``feature_names`` and ``action_names`` say what the columns of ``data.obs`` and the action
    indices mean. Rows are in decision-time order (``decided_at_us`` never decreases), so one
    customer's rows, in order, are its trajectory.
    """

    data: LoggedData
    event_ids: np.ndarray
    customer_ids: np.ndarray
    decided_at_us: np.ndarray
    model_ids: np.ndarray
    probabilities: np.ndarray | None
    feature_names: tuple[str, ...]
    action_names: tuple[str, ...]

    def __post_init__(self) -> None:
        n, n_features, n_actions = len(self.data), self.data.obs.shape[1], self.data.mask.shape[1]
        for name in ("event_ids", "customer_ids", "model_ids"):
            value = np.asarray(getattr(self, name), dtype=object)
            if value.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {value.shape}")
            object.__setattr__(self, name, value)
        decided_at = np.asarray(self.decided_at_us)
        if decided_at.shape != (n,) or not np.issubdtype(decided_at.dtype, np.integer):
            raise ValueError(
                f"decided_at_us must be ({n},) integers, got {decided_at.dtype} {decided_at.shape}"
            )
        if (np.diff(decided_at) < 0).any():
            raise ValueError("decided_at_us must not decrease (rows in decision-time order)")
        object.__setattr__(self, "decided_at_us", decided_at.astype(np.int64, copy=False))
        if self.probabilities is not None:
            probabilities = np.asarray(self.probabilities, dtype=np.float64)
            if probabilities.shape != (n, n_actions):
                raise ValueError(
                    f"probabilities must have shape ({n}, {n_actions}), got {probabilities.shape}"
                )
            object.__setattr__(self, "probabilities", probabilities)
        for name, width, what in (
            ("feature_names", n_features, "data.obs columns"),
            ("action_names", n_actions, "data.mask columns"),
        ):
            names = tuple(getattr(self, name))
            if len(names) != width:
                raise ValueError(f"{name} must name the {width} {what}, got {len(names)} names")
            object.__setattr__(self, name, names)

    def __len__(self) -> int:
        return len(self.data)

    def take(self, rows: np.ndarray) -> LoggedDecisions:
        """The given rows (a boolean mask, or increasing indices to keep the time order), e.g.
        one model's or one customer's."""
        d = self.data
        return LoggedDecisions(
            data=LoggedData(
                obs=d.obs[rows],
                mask=d.mask[rows],
                actions=d.actions[rows],
                propensities=d.propensities[rows],
                rewards=d.rewards[rows],
                executed=d.executed_actions[rows],
            ),
            event_ids=self.event_ids[rows],
            customer_ids=self.customer_ids[rows],
            decided_at_us=self.decided_at_us[rows],
            model_ids=self.model_ids[rows],
            probabilities=None if self.probabilities is None else self.probabilities[rows],
            feature_names=self.feature_names,
            action_names=self.action_names,
        )
