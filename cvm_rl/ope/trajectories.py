"""Per-customer trajectories for long-run (sequential) off-policy evaluation.

A decision log is a flat table: one row per decision, with the customer, the decision time,
what the logger saw (observation, eligible actions), what it did (action and its propensity,
optionally its whole distribution) and the reward that followed. Sequential estimators need the
rows of each customer in time order, so :class:`Trajectories` holds them as arrays padded to
the longest history: step ``t`` of customer ``i`` is that customer's ``t``-th decision, and
``valid[i, t]`` says whether it exists (valid steps come first, padding after).

Padding is neutral by construction: a padded step has action 0 (no contact) as its only
eligible action, propensity 1, logger distribution one-hot on action 0, reward 0 and zero
observation, and :meth:`Trajectories.target_probabilities` gives it the same one-hot; so
importance ratios are 1 there and nothing is added. A customer's log ending early is read as
censoring that does not depend on the policy (a customer who joined late, the end of the log
window): the value estimated is the expected sum of rewards over the logged steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cvm_rl.ope.base import (
    SUM_TOLERANCE,
    check_action,
    check_probabilities,
    check_pscore,
    check_reward,
    check_same_length,
)
from cvm_rl.policies.base import Policy
from cvm_rl.rollout import rollout
from simulator.config import Scenario, load_scenario


@dataclass(frozen=True, eq=False)
class Trajectories:
    """Logged decisions of ``n`` customers as (n, H) arrays, padded after each customer's last
    step (see the module docstring).

    ``obs`` (n, H, F) float64, ``mask`` (n, H, A) bool, ``action`` (n, H) int64, ``pscore``
    (n, H) the logger's probability of ``action``, ``reward`` (n, H) float64, ``valid`` (n, H)
    bool, ``customer_id`` (n,), and optionally ``logging_probabilities`` (n, H, A), the
    logger's whole distribution, and ``row_index`` (n, H): the input row of each step (-1 on
    padding) when built by :meth:`from_rows`.
    """

    obs: np.ndarray
    mask: np.ndarray
    action: np.ndarray
    pscore: np.ndarray
    reward: np.ndarray
    valid: np.ndarray
    customer_id: np.ndarray
    logging_probabilities: np.ndarray | None = None
    row_index: np.ndarray | None = None

    def __post_init__(self) -> None:
        _check_trajectory_arrays(self)

    @property
    def n_customers(self) -> int:
        return int(self.valid.shape[0])

    @property
    def horizon(self) -> int:
        """H: the number of steps of the longest trajectory."""
        return int(self.valid.shape[1])

    @property
    def n_actions(self) -> int:
        return int(self.mask.shape[2])

    @property
    def n_features(self) -> int:
        return int(self.obs.shape[2])

    @property
    def lengths(self) -> np.ndarray:
        """(n,) number of logged steps of each customer."""
        lengths: np.ndarray = self.valid.sum(axis=1)
        return lengths

    def returns(self, gamma: float = 1.0) -> np.ndarray:
        """(n,) the logged discounted return ``sum_t gamma^t r_t`` of each customer."""
        discounts = float(gamma) ** np.arange(self.horizon)
        returns: np.ndarray = (self.reward * self.valid) @ discounts
        return returns

    def select(self, customers: np.ndarray) -> Trajectories:
        """The trajectories of ``customers`` (indices or a boolean mask over customers)."""
        index = np.arange(self.n_customers)[np.asarray(customers)]
        return Trajectories(
            obs=self.obs[index],
            mask=self.mask[index],
            action=self.action[index],
            pscore=self.pscore[index],
            reward=self.reward[index],
            valid=self.valid[index],
            customer_id=self.customer_id[index],
            logging_probabilities=None
            if self.logging_probabilities is None
            else self.logging_probabilities[index],
            row_index=None if self.row_index is None else self.row_index[index],
        )

    def target_probabilities(self, policy: Policy) -> np.ndarray:
        """(n, H, A) the distribution of ``policy`` at every step: the policy is called once
        on all valid steps; padded steps get the neutral one-hot on action 0. (A policy with
        Monte Carlo probabilities, like linear Thompson sampling, gives its estimate.)"""
        if getattr(policy, "uses_latent_state", False):
            raise ValueError(
                f"policy: {policy.name!r} reads the simulator's latent state, which a log does "
                "not hold; it cannot be evaluated off-policy"
            )
        out = _padding_distribution(self.valid.shape, self.n_actions)
        probs = policy.action_probabilities(self.obs[self.valid], self.mask[self.valid])
        out[self.valid] = probs
        return out

    @classmethod
    def from_rows(
        cls,
        customer_id: np.ndarray,
        decided_at: np.ndarray,
        obs: np.ndarray,
        mask: np.ndarray,
        action: np.ndarray,
        pscore: np.ndarray,
        reward: np.ndarray,
        *,
        logging_probabilities: np.ndarray | None = None,
    ) -> Trajectories:
        """Group flat decision rows by customer and order each customer's rows by
        ``decided_at`` (integer, e.g. microseconds, or datetime64); rows may come in any
        order. Two decisions of one customer at the same time are an error (their order,
        which every sequential estimator depends on, would be arbitrary)."""
        customer_id = np.asarray(customer_id)
        if customer_id.ndim != 1 or not len(customer_id):
            raise ValueError(f"customer_id must be a non-empty 1-D array, got {customer_id.shape}")
        if customer_id.dtype.kind == "f" and not np.isfinite(customer_id).all():
            raise ValueError("customer_id must not contain NaN or inf")
        decided_at = np.asarray(decided_at)
        if decided_at.dtype.kind == "M":
            decided_at = decided_at.astype("datetime64[us]").astype(np.int64)
        if decided_at.ndim != 1 or decided_at.dtype.kind not in "iu":
            raise ValueError(
                "decided_at must be a 1-D integer (microseconds) or datetime64 array, got "
                f"{decided_at.dtype} of shape {decided_at.shape}"
            )
        obs = np.asarray(obs, dtype=np.float64)
        mask = np.asarray(mask)
        if obs.ndim != 2:
            raise ValueError(f"obs must have shape (n_rows, n_features), got {obs.shape}")
        if mask.ndim != 2 or mask.dtype != bool:
            raise ValueError(
                f"mask must be boolean of shape (n_rows, n_actions), got {mask.dtype} {mask.shape}"
            )
        reward = check_reward(reward)
        pscore = check_pscore(pscore)
        action = np.asarray(action)
        if action.ndim != 1:
            raise ValueError(f"action must be a 1-D array, got shape {action.shape}")
        n_rows = check_same_length(
            customer_id=customer_id,
            decided_at=decided_at,
            obs=obs,
            mask=mask,
            action=action,
            pscore=pscore,
            reward=reward,
        )
        n_actions = mask.shape[1]
        action = check_action(action, n_actions)
        if logging_probabilities is not None:
            logging_probabilities = check_probabilities(
                logging_probabilities, n_rows, name="logging_probabilities"
            )
            if logging_probabilities.shape[1] != n_actions:
                raise ValueError(
                    f"logging_probabilities must have {n_actions} columns (mask's), got "
                    f"{logging_probabilities.shape[1]}"
                )

        # Sort by (customer, time); each customer's rows become a contiguous run whose
        # position in the run is the step index.
        ids, customer_index = np.unique(customer_id, return_inverse=True)
        order = np.lexsort((decided_at, customer_index))
        sorted_customer = customer_index[order]
        sorted_time = decided_at[order]
        same_customer = sorted_customer[1:] == sorted_customer[:-1]
        tied = same_customer & (sorted_time[1:] == sorted_time[:-1])
        if tied.any():
            first = int(np.flatnonzero(tied)[0])
            raise ValueError(
                f"decided_at: customer {ids[sorted_customer[first]]!r} has two decisions at "
                f"{sorted_time[first]}; their order is ambiguous"
            )
        run_start = np.flatnonzero(np.r_[True, ~same_customer])
        step = np.arange(n_rows) - run_start[sorted_customer]
        shape = (len(ids), int(step.max()) + 1)
        where = (sorted_customer, step)

        padded_obs = np.zeros((*shape, obs.shape[1]))
        padded_obs[where] = obs[order]
        padded_mask = _padding_distribution(shape, n_actions).astype(bool)
        padded_mask[where] = mask[order]
        padded_action = np.zeros(shape, dtype=np.int64)
        padded_action[where] = action[order]
        padded_pscore = np.ones(shape)
        padded_pscore[where] = pscore[order]
        padded_reward = np.zeros(shape)
        padded_reward[where] = reward[order]
        valid = np.zeros(shape, dtype=bool)
        valid[where] = True
        row_index = np.full(shape, -1, dtype=np.int64)
        row_index[where] = order
        padded_logging = None
        if logging_probabilities is not None:
            padded_logging = _padding_distribution(shape, n_actions)
            padded_logging[where] = logging_probabilities[order]
        return cls(
            obs=padded_obs,
            mask=padded_mask,
            action=padded_action,
            pscore=padded_pscore,
            reward=padded_reward,
            valid=valid,
            customer_id=ids,
            logging_probabilities=padded_logging,
            row_index=row_index,
        )

    @classmethod
    def from_rollout(
        cls,
        logger: Policy,
        scenario: Scenario | str,
        *,
        n_customers: int,
        seed: int | None,
        weeks: int | None = None,
    ) -> Trajectories:
        """Simulate ``n_customers`` (population drawn with ``seed``) for ``weeks`` weeks (at
        most the scenario's horizon: one population) deciding with ``logger``, and keep the
        log as trajectories with the logger's full distribution. Every customer has every
        week, so nothing is padded; ``customer_id`` is ``0..n-1``."""
        scenario = load_scenario(scenario)
        horizon = scenario.horizon_weeks if weeks is None else weeks
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"weeks must be an int >= 1, got {weeks!r}")
        if horizon > scenario.horizon_weeks:
            raise ValueError(
                f"weeks must be <= the scenario's horizon {scenario.horizon_weeks} (a longer "
                f"rollout draws a new population), got {weeks}"
            )
        steps = list(
            rollout(
                logger,
                scenario,
                n_customers=n_customers,
                seed=seed,
                weeks=horizon,
                with_probabilities=True,
            )
        )
        distributions = [t.decisions.probabilities for t in steps]
        if any(p is None for p in distributions):  # pragma: no cover - policies always give it
            raise ValueError("logger: the rollout gave no action distribution")

        def stack(arrays: list) -> np.ndarray:
            return np.stack(arrays, axis=1)

        shape = (n_customers, horizon)
        return cls(
            obs=stack([t.obs for t in steps]).astype(np.float64),
            mask=stack([t.mask for t in steps]),
            action=stack([t.decisions.actions for t in steps]).astype(np.int64),
            pscore=stack([t.decisions.propensities for t in steps]).astype(np.float64),
            reward=stack([t.reward for t in steps]).astype(np.float64),
            valid=np.ones(shape, dtype=bool),
            customer_id=np.arange(n_customers),
            logging_probabilities=stack(distributions).astype(np.float64),
        )


def check_action_dist(trajectories: Trajectories, action_dist: np.ndarray) -> np.ndarray:
    """``action_dist`` as an (n, H, A) float64 array of a target policy's distributions on
    ``trajectories``: finite, non-negative, summing to one and zero on ineligible actions at
    every valid step (padded steps are not read). Otherwise a ValueError naming it."""
    action_dist = np.asarray(action_dist, dtype=np.float64)
    expected = (*trajectories.valid.shape, trajectories.n_actions)
    if action_dist.shape != expected:
        raise ValueError(f"action_dist must have shape {expected}, got {action_dist.shape}")
    valid = trajectories.valid
    _require(valid, np.isfinite(action_dist).all(axis=2), "action_dist must be finite")
    _require(valid, (action_dist >= 0).all(axis=2), "action_dist must be non-negative")
    total = action_dist.sum(axis=2)
    _require(valid, np.abs(total - 1.0) <= SUM_TOLERANCE, "action_dist must sum to 1 over actions")
    ineligible = np.where(trajectories.mask, 0.0, action_dist).max(axis=2)
    _require(
        valid,
        ineligible <= SUM_TOLERANCE,
        "action_dist must be 0 on actions the mask makes ineligible",
    )
    return action_dist


def _require(valid: np.ndarray, ok: np.ndarray | np.bool_, message: str) -> None:
    """Raise ``message`` with the first (customer, step) where a valid step is not ``ok``."""
    bad = valid & ~np.asarray(ok, dtype=bool)
    if bad.any():
        customer, step = np.unravel_index(int(np.argmax(bad)), bad.shape)
        raise ValueError(f"{message} (customer {customer}, step {step})")


def _padding_distribution(shape: tuple[int, ...], n_actions: int) -> np.ndarray:
    """(*shape, A) one-hot on action 0: the distribution every padded step holds."""
    out = np.zeros((*shape, n_actions))
    out[..., 0] = 1.0
    return out


def _check_trajectory_arrays(traj: Trajectories) -> None:
    """Shapes, dtypes and, at valid steps, values of every field; errors name the field and
    the first offending (customer, step)."""
    valid = traj.valid
    if valid.ndim != 2 or valid.dtype != bool or 0 in valid.shape:
        raise ValueError(f"valid must be a non-empty boolean (n, H) array, got {valid.shape}")
    n, horizon = valid.shape
    if not valid[:, 0].all():
        raise ValueError("valid: every customer needs at least one step (step 0)")
    # Valid steps first: a valid step after a padded one would be a gap in the trajectory.
    if (valid[:, 1:] & ~valid[:, :-1]).any():
        raise ValueError("valid: each customer's valid steps must come before its padding")
    if traj.obs.ndim != 3 or traj.obs.shape[:2] != (n, horizon):
        raise ValueError(f"obs must have shape ({n}, {horizon}, F), got {traj.obs.shape}")
    if traj.mask.ndim != 3 or traj.mask.shape[:2] != (n, horizon) or traj.mask.dtype != bool:
        raise ValueError(
            f"mask must be boolean of shape ({n}, {horizon}, A), got {traj.mask.dtype} "
            f"{traj.mask.shape}"
        )
    n_actions = traj.mask.shape[2]
    for name in ("action", "pscore", "reward"):
        shape = getattr(traj, name).shape
        if shape != (n, horizon):
            raise ValueError(f"{name} must have shape ({n}, {horizon}), got {shape}")
    if traj.action.dtype.kind not in "iu":
        raise ValueError(f"action must hold integers, got dtype {traj.action.dtype}")
    if traj.customer_id.shape != (n,):
        raise ValueError(f"customer_id must have shape ({n},), got {traj.customer_id.shape}")
    if traj.row_index is not None and traj.row_index.shape != (n, horizon):
        raise ValueError(f"row_index must have shape ({n}, {horizon}), got {traj.row_index.shape}")
    _require(valid, np.isfinite(traj.obs).all(axis=2), "obs must be finite")
    _require(valid, traj.mask.any(axis=2), "mask needs at least one eligible action")
    in_range = (traj.action >= 0) & (traj.action < n_actions)
    _require(valid, in_range, f"action must be in [0, {n_actions})")
    logged = np.where(in_range, traj.action, 0)[..., None]
    eligible = np.take_along_axis(traj.mask, logged, axis=2)[..., 0]
    _require(valid, eligible, "action must be eligible under mask")
    _require(valid, (traj.pscore > 0) & (traj.pscore <= 1), "pscore must be in (0, 1]")
    _require(valid, np.isfinite(traj.reward), "reward must be finite")
    probs = traj.logging_probabilities
    if probs is None:
        return
    if probs.shape != traj.mask.shape:
        raise ValueError(
            f"logging_probabilities must have shape {traj.mask.shape}, got {probs.shape}"
        )
    _require(
        valid,
        np.isfinite(probs).all(axis=2) & (probs >= 0).all(axis=2),
        "logging_probabilities must be finite and non-negative",
    )
    _require(
        valid,
        np.abs(probs.sum(axis=2) - 1.0) <= SUM_TOLERANCE,
        "logging_probabilities must sum to 1 over actions",
    )
    at_logged = np.take_along_axis(probs, logged, axis=2)[..., 0]
    _require(
        valid,
        np.abs(at_logged - traj.pscore) <= SUM_TOLERANCE,
        "pscore must equal logging_probabilities at the logged action",
    )
