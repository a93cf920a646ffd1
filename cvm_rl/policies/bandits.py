"""Contextual bandits on immediate reward: LinUCB, linear Thompson sampling, epsilon-greedy.

The myopic family: each action ``a`` has its own ridge regression of the week's reward on
transformed features ``x`` (``A_a = ridge*I + sum x x^T``, ``b_a = sum r x``,
``theta_a = A_a^-1 b_a``), updated with whole batches at once (one matrix product per action,
no loop over rows). The three policies differ only in how they turn the per-action estimates
into action probabilities:

* :class:`LinUCBPolicy`: argmax of ``theta_a^T x + alpha * sqrt(x^T A_a^-1 x)``;
* :class:`LinTSPolicy`: argmax of a posterior draw ``theta_a ~ N(theta_a, v^2 A_a^-1)``;
* :class:`EpsilonGreedyPolicy`: argmax of ``theta_a^T x`` with probability ``1 - epsilon``,
  uniform over eligible actions otherwise.

Features: the fixed :class:`~cvm_rl.policies.features.FeatureTransform` of the scenario's
observation space with a constant 1 (bias) first.

A bandit can also run on raw feature vectors without a scenario
(``LinUCBPolicy(None, n_features=5, n_actions=5)``: identity features plus bias), which is
how the synthetic tests exercise the learning rules.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

from cvm_rl.policies.base import Policy, argmax_probabilities, check_number
from cvm_rl.policies.features import FeatureTransform
from simulator.config import Scenario

_CHUNK_ROWS = 2048  # rows per block in the (rows x actions x dim) computations (bounds memory)


def _chunks(n: int) -> Iterator[slice]:
    for start in range(0, n, _CHUNK_ROWS):
        yield slice(start, min(start + _CHUNK_ROWS, n))


class LinearBandit(Policy):
    """Shared machinery: features, per-action ridge statistics, batch updates, state.

    Arrays (float64): ``A`` (K, d, d), ``b`` (K, d), their derived ``A_inv`` and ``theta``
    (recomputed for the touched actions after every :meth:`update`), and ``counts`` (K,)
    observations per action. Subclasses implement ``_probabilities`` on top of
    :meth:`predict_mean` and :meth:`predict_width`.
    """

    name = "linear_bandit"
    _registry: ClassVar[dict[str, type[LinearBandit]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        LinearBandit._registry[cls.name] = cls

    def __init__(
        self,
        scenario: Scenario | None,
        *,
        ridge: float = 1.0,
        seed: int | None = None,
        n_features: int | None = None,
        n_actions: int | None = None,
    ) -> None:
        if scenario is not None:
            if n_features is not None or n_actions is not None:
                raise ValueError("n_features/n_actions: pass them only when scenario is None")
            super().__init__(scenario, seed=seed)
            self.transform = FeatureTransform.from_scenario(scenario)
        else:
            # Raw-feature mode (synthetic problems): no scenario, identity features.
            for arg, val in (("n_features", n_features), ("n_actions", n_actions)):
                if not isinstance(val, int | np.integer) or val < 1:
                    raise ValueError(
                        f"{arg} must be an int >= 1 when scenario is None, got {val!r}"
                    )
            assert n_features is not None and n_actions is not None
            self.scenario = None  # type: ignore[assignment]
            self._set_schema([f"x{i}" for i in range(n_features)], int(n_actions), seed)
            self.transform = FeatureTransform.identity(int(n_features))
        self.ridge = check_number("ridge", ridge, low=0.0, strict=True)
        k, d = self.n_actions, self.transform.dim
        self.A = np.broadcast_to(self.ridge * np.eye(d), (k, d, d)).copy()
        self.b = np.zeros((k, d))
        self.counts = np.zeros(k, dtype=np.int64)
        self.A_inv = np.empty_like(self.A)
        self.theta = np.empty_like(self.b)
        self._refresh(np.arange(k))

    # ----------------------------------------------------------------- model
    def hyperparameters(self) -> dict[str, float | int]:
        return {"ridge": self.ridge}

    def _refresh(self, arms: np.ndarray) -> None:
        A = self.A[arms]
        inv = np.linalg.inv(A)
        self.A_inv[arms] = 0.5 * (inv + np.swapaxes(inv, 1, 2))
        self.theta[arms] = np.linalg.solve(A, self.b[arms][..., None])[..., 0]

    def features(self, obs: np.ndarray) -> np.ndarray:
        """Validated (N, d) design matrix for ``obs``."""
        return self.transform(self.check_obs(obs, np.float64))

    def predict_mean(self, X: np.ndarray) -> np.ndarray:
        """(N, K) ridge estimates ``theta_a^T x`` for a design matrix ``X``."""
        return X @ self.theta.T

    def predict_width(self, X: np.ndarray) -> np.ndarray:
        """(N, K) ``sqrt(x^T A_a^-1 x)``: one matrix product per block of rows."""
        k, d = self.n_actions, self.transform.dim
        stacked = np.swapaxes(self.A_inv, 0, 1).reshape(d, k * d)  # [e, (a, f)]
        out = np.empty((len(X), k))
        for rows in _chunks(len(X)):
            Y = (X[rows] @ stacked).reshape(-1, k, d)
            out[rows] = np.einsum("nkf,nf->nk", Y, X[rows])
        return np.sqrt(np.maximum(out, 0.0))

    def update(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> None:
        """Add a batch of (observation, action taken, immediate reward) to the estimates."""
        X = self.features(obs)
        n = len(X)
        actions = np.asarray(actions)
        rewards = np.asarray(rewards)
        if actions.shape != (n,):
            raise ValueError(f"actions must have shape ({n},) to match obs, got {actions.shape}")
        if not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(f"actions must be integers, got dtype {actions.dtype}")
        if n and (actions.min() < 0 or actions.max() >= self.n_actions):
            raise ValueError(
                f"actions must be in [0, {self.n_actions}), got {actions.min()}..{actions.max()}"
            )
        if rewards.shape != (n,):
            raise ValueError(f"rewards must have shape ({n},) to match obs, got {rewards.shape}")
        if not np.issubdtype(rewards.dtype, np.number) or not np.isfinite(rewards).all():
            raise ValueError("rewards must be finite numbers (found NaN, inf or non-numeric)")
        rewards = rewards.astype(np.float64)
        counts = np.bincount(actions, minlength=self.n_actions)
        touched = np.flatnonzero(counts)
        for a in touched:
            rows = actions == a
            Xa = X[rows]
            self.A[a] += Xa.T @ Xa
            self.b[a] += Xa.T @ rewards[rows]
        self.counts += counts
        if len(touched):
            self._refresh(touched)

    def update_all(self, obs: np.ndarray, mask: np.ndarray, scores: np.ndarray) -> None:
        """Add a batch with a (pseudo-)reward for every eligible action of each row: ``scores``
        (N, K), read where ``mask`` (N, K) is True. With doubly robust scores from a log this
        is doubly robust policy learning (Dudik, Langford and Li 2011): each action's ridge
        fit on its estimated reward for every row, not only the rows that took it."""
        X = self.features(obs)
        n = len(X)
        mask = np.asarray(mask)
        scores = np.asarray(scores, dtype=np.float64)
        if mask.shape != (n, self.n_actions) or mask.dtype != bool:
            raise ValueError(f"mask must be a boolean ({n}, {self.n_actions}) array")
        if scores.shape != (n, self.n_actions):
            raise ValueError(f"scores must have shape ({n}, {self.n_actions}), got {scores.shape}")
        if not np.isfinite(scores[mask]).all():
            raise ValueError("scores must be finite where mask is True")
        touched = np.flatnonzero(mask.any(axis=0))
        for a in touched:
            rows = mask[:, a]
            Xa = X[rows]
            self.A[a] += Xa.T @ Xa
            self.b[a] += Xa.T @ scores[rows, a]
        self.counts += mask.sum(axis=0)
        if len(touched):
            self._refresh(touched)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Plain arrays and hyperparameters; :meth:`from_state_dict` rebuilds the model.

        The random generator's state is not included (reseed with :meth:`seed`)."""
        return {
            "policy": self.name,
            "hyperparameters": self.hyperparameters(),
            "features": "scenario" if self.scenario is not None else "identity",
            "feature_names": list(self.feature_names),
            "n_actions": self.n_actions,
            "A": self.A.copy(),
            "b": self.b.copy(),
            "counts": self.counts.copy(),
        }

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], scenario: Scenario | None = None, *, seed: int | None = None
    ) -> LinearBandit:
        """Rebuild from :meth:`state_dict` (``LinearBandit.from_state_dict`` dispatches on the
        stored policy name). Scenario-feature models need the same ``scenario`` back."""
        kind = state.get("policy")
        target = LinearBandit._registry.get(str(kind)) if cls is LinearBandit else cls
        if target is None or target.name != kind:
            raise ValueError(f"state: policy {kind!r} cannot be loaded by {cls.__name__}")
        names = list(state["feature_names"])
        n_actions = int(state["n_actions"])
        if state["features"] == "scenario":
            if scenario is None:
                raise ValueError("scenario: required for a model trained on scenario features")
            policy = target(scenario, seed=seed, **state["hyperparameters"])
            if policy.feature_names != names or policy.n_actions != n_actions:
                raise ValueError("scenario: its features or actions differ from the saved model")
        else:
            policy = target(
                None,
                seed=seed,
                n_features=len(names),
                n_actions=n_actions,
                **state["hyperparameters"],
            )
        A = np.asarray(state["A"], dtype=np.float64)
        b = np.asarray(state["b"], dtype=np.float64)
        if A.shape != policy.A.shape or b.shape != policy.b.shape:
            raise ValueError(f"state: A/b shapes {A.shape}/{b.shape} do not match the model")
        policy.A = A.copy()
        policy.b = b.copy()
        policy.counts = np.asarray(state["counts"], dtype=np.int64).copy()
        policy._refresh(np.arange(policy.n_actions))
        return policy


class LinUCBPolicy(LinearBandit):
    """Deterministic optimism: one-hot on the eligible argmax of the upper confidence bound
    (exact ties split evenly, so ``act`` breaks them at random with the seeded generator)."""

    name = "linucb"

    def __init__(
        self,
        scenario: Scenario | None,
        *,
        alpha: float = 1.0,
        ridge: float = 1.0,
        seed: int | None = None,
        n_features: int | None = None,
        n_actions: int | None = None,
    ) -> None:
        self.alpha = check_number("alpha", alpha, low=0.0, strict=False)
        super().__init__(
            scenario, ridge=ridge, seed=seed, n_features=n_features, n_actions=n_actions
        )

    def hyperparameters(self) -> dict[str, float | int]:
        return {"alpha": self.alpha, "ridge": self.ridge}

    def _probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        X = self.transform(obs)
        scores = self.predict_mean(X)
        if self.alpha:
            scores = scores + self.alpha * self.predict_width(X)
        return argmax_probabilities(scores, mask)


class EpsilonGreedyPolicy(LinearBandit):
    """``(1 - epsilon) * onehot(greedy) + epsilon / |eligible|`` with the greedy choice the
    eligible argmax of the ridge estimate (exact ties split evenly)."""

    name = "epsilon_greedy"

    def __init__(
        self,
        scenario: Scenario | None,
        *,
        epsilon: float = 0.1,
        ridge: float = 1.0,
        seed: int | None = None,
        n_features: int | None = None,
        n_actions: int | None = None,
    ) -> None:
        self.epsilon = check_number("epsilon", epsilon, low=0.0, strict=False, high=1.0)
        super().__init__(
            scenario, ridge=ridge, seed=seed, n_features=n_features, n_actions=n_actions
        )

    def hyperparameters(self) -> dict[str, float | int]:
        return {"epsilon": self.epsilon, "ridge": self.ridge}

    def _probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        greedy = argmax_probabilities(self.predict_mean(self.transform(obs)), mask)
        return (1.0 - self.epsilon) * greedy + self.epsilon * mask / mask.sum(axis=1, keepdims=True)


class LinTSPolicy(LinearBandit):
    """Linear Thompson sampling with posterior ``theta_a ~ N(theta_a, v^2 A_a^-1)``.

    For one context the sampled score of action ``a`` is ``N(theta_a^T x, v^2 x^T A_a^-1 x)``,
    independent across actions, so draws cost one normal per eligible (row, action).

    ``action_probabilities`` estimates P(action is the argmax of a posterior draw) by Monte
    Carlo with ``n_propensity_samples`` draws from the seeded generator. ``act`` takes ONE
    draw per row and plays its argmax; the propensity it returns is the Monte-Carlo
    probability of that action estimated from that draw plus ``n_propensity_samples`` more,
    so it is always >= 1 / (n_propensity_samples + 1) > 0 and honest up to MC error
    (standard error about ``sqrt(p (1 - p) / (n + 1))``).
    """

    name = "lints"
    monte_carlo_probabilities = True

    def __init__(
        self,
        scenario: Scenario | None,
        *,
        v: float = 1.0,
        ridge: float = 1.0,
        n_propensity_samples: int = 64,
        seed: int | None = None,
        n_features: int | None = None,
        n_actions: int | None = None,
    ) -> None:
        self.v = check_number("v", v, low=0.0, strict=True)
        if not isinstance(n_propensity_samples, int | np.integer) or n_propensity_samples < 1:
            raise ValueError(
                f"n_propensity_samples must be an int >= 1, got {n_propensity_samples!r}"
            )
        self.n_propensity_samples = int(n_propensity_samples)
        super().__init__(
            scenario, ridge=ridge, seed=seed, n_features=n_features, n_actions=n_actions
        )

    def hyperparameters(self) -> dict[str, float | int]:
        return {"v": self.v, "ridge": self.ridge, "n_propensity_samples": self.n_propensity_samples}

    def _winners(self, obs: np.ndarray, mask: np.ndarray, n_draws: int) -> np.ndarray:
        """(n_draws, N) argmax over eligible actions of independent posterior draws."""
        X = self.transform(obs)
        # Draws in float32 (in place) for speed; the argmax needs no more precision.
        mean = self.predict_mean(X).astype(np.float32)
        sd = (self.v * self.predict_width(X)).astype(np.float32)
        out = np.empty((n_draws, len(X)), dtype=np.int64)
        for rows in _chunks(len(X)):
            # Normals only for the eligible (row, action) pairs, in row-major order.
            eligible = np.flatnonzero(mask[rows])
            noise = self.rng.standard_normal((n_draws, len(eligible)), dtype=np.float32)
            noise *= sd[rows].ravel()[eligible]
            noise += mean[rows].ravel()[eligible]
            scores = np.full((n_draws, mask[rows].size), -np.inf, dtype=np.float32)
            scores[:, eligible] = noise
            out[:, rows] = scores.reshape(n_draws, -1, self.n_actions).argmax(axis=2)
        return out

    def _frequencies(self, winners: np.ndarray) -> np.ndarray:
        n_draws, n = winners.shape
        flat = (winners + np.arange(n) * self.n_actions).ravel()
        counts = np.bincount(flat, minlength=n * self.n_actions).reshape(n, self.n_actions)
        return counts / n_draws

    def _probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._frequencies(self._winners(obs, mask, self.n_propensity_samples))

    def act_with_distribution(
        self, obs: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Actions (N,), their propensities (N,), and the full (N, A) MC probabilities
        (``n_propensity_samples + 1`` draws, the first of which chose the action)."""
        obs, mask = self.check_batch(obs, mask)
        winners = self._winners(obs, mask, self.n_propensity_samples + 1)
        probs = self._frequencies(winners)
        actions = winners[0]
        return actions, probs[np.arange(len(actions)), actions], probs
