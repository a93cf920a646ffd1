"""Cross-fitted reward models q_hat(x, a) for the direct method and the doubly robust family.

The rows are split at random into K folds; the predictions for the rows of fold k come from
a model fitted on the other K - 1 folds only, so no row is predicted by a model that saw its
reward. Without this, a flexible model's in-sample fit would make the residuals
r_i - q_hat(x_i, a_i) that DR corrects with look smaller than they are, and its reported error
look better than it is (cross-fitting as in Chernozhukov et al. 2018).

Two regressors from scikit-learn:

* ``"ridge"``: one ridge regression per action on the features (a T-learner);
* ``"hist_gradient_boosting"``: one gradient-boosted tree model on the features plus the
  action as a categorical column.

Features are whatever (n, F) float array the caller passes (for the simulator's observations,
``FeatureTransform.from_scenario(scenario).scaled(obs)``). scikit-learn is imported when a
model is fitted, not with this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

import numpy as np

from .base import check_action, check_reward, check_same_length

RegressorKind = Literal["ridge", "hist_gradient_boosting"]
REGRESSOR_KINDS: tuple[str, ...] = get_args(RegressorKind)


class Regressor(Protocol):
    """What cross-fitting needs of a model (any scikit-learn regressor has it)."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> Any: ...

    def predict(self, X: np.ndarray) -> np.ndarray: ...


# Builds a fresh, unfitted regressor from a seed (one per fold, and per action for T-learners).
RegressorFactory = Callable[[int], Regressor]


@dataclass(frozen=True, eq=False)
class RewardModelFit:
    """Out-of-fold predictions and their error on the logged actions."""

    estimated_rewards: np.ndarray  # (n, A): q_hat(x_i, a) from the model that did not see row i
    fold: np.ndarray  # (n,): the fold of each row
    oof_rmse: float  # out-of-fold root mean squared error of q_hat(x_i, a_i) against r_i
    oof_r2: float  # out-of-fold 1 - SSE / SST (NaN when the rewards are constant)
    regressor: str
    n_folds: int

    def to_dict(self) -> dict[str, Any]:
        """The report's part (no arrays); NaN becomes None for JSON."""
        return {
            "regressor": self.regressor,
            "n_folds": self.n_folds,
            "oof_rmse": self.oof_rmse,
            "oof_r2": self.oof_r2 if math.isfinite(self.oof_r2) else None,
        }


@dataclass(frozen=True)
class CrossFittedRewardModel:
    """K-fold cross-fitted reward model; hyperparameters as fields, ``seed`` fixing the folds
    and every random choice of the regressors."""

    regressor: RegressorKind = "ridge"
    n_folds: int = 5
    ridge_alpha: float = 1.0  # ridge's L2 penalty
    max_iter: int = 100  # boosting iterations
    learning_rate: float = 0.1  # boosting step
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.regressor not in REGRESSOR_KINDS:
            raise ValueError(f"regressor must be one of {REGRESSOR_KINDS}, got {self.regressor!r}")
        _check_n_folds(self.n_folds)
        if not self.ridge_alpha >= 0:
            raise ValueError(f"ridge_alpha must be >= 0, got {self.ridge_alpha!r}")
        if (
            isinstance(self.max_iter, bool)
            or not isinstance(self.max_iter, int)
            or self.max_iter < 1
        ):
            raise ValueError(f"max_iter must be an int >= 1, got {self.max_iter!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")

    def factory(self, n_features: int) -> RegressorFactory:
        """Fresh regressors for ``n_features`` features (plus the action, for boosting)."""
        if self.regressor == "ridge":
            from sklearn.linear_model import Ridge

            return lambda seed: Ridge(alpha=self.ridge_alpha)
        from sklearn.ensemble import HistGradientBoostingRegressor

        def boosting(seed: int) -> Regressor:
            # The action is the last column; as a category it may interact with everything.
            return HistGradientBoostingRegressor(
                max_iter=self.max_iter,
                learning_rate=self.learning_rate,
                categorical_features=[n_features],
                random_state=seed,
            )

        return boosting

    def fit(
        self, features: np.ndarray, action: np.ndarray, reward: np.ndarray, n_actions: int
    ) -> RewardPredictor:
        """One model fitted on all the rows, without cross-fitting: for predicting rows it
        never saw (a log streamed past the sample the model was fitted on)."""
        x = np.asarray(features, dtype=np.float64)
        reward = check_reward(reward)
        check_same_length(features=x, action=np.asarray(action), reward=reward)
        action = check_action(np.asarray(action), n_actions)
        return _fit_predictor(
            x,
            action,
            reward,
            n_actions,
            self.factory(x.shape[1]),
            self.regressor == "ridge",
            np.random.default_rng(self.seed),
        )

    def fit_predict(
        self, features: np.ndarray, action: np.ndarray, reward: np.ndarray, n_actions: int
    ) -> RewardModelFit:
        """Out-of-fold ``estimated_rewards`` (n, n_actions) and their error."""
        return cross_fit(
            features,
            action,
            reward,
            n_actions,
            make_regressor=self.factory(np.shape(features)[1]),
            per_action=self.regressor == "ridge",
            n_folds=self.n_folds,
            seed=self.seed,
            name=self.regressor,
        )


RewardPredictor = Callable[[np.ndarray], np.ndarray]
"""Features (m, F) -> predicted rewards of every action (m, n_actions)."""


def _fit_predictor(
    x: np.ndarray,
    action: np.ndarray,
    reward: np.ndarray,
    n_actions: int,
    make_regressor: RegressorFactory,
    per_action: bool,
    rng: np.random.Generator,
) -> RewardPredictor:
    """Fit on the given rows (one model per action, or one on features plus the action) and
    return the predictor; each model's seed is drawn from ``rng``, in action order."""
    if per_action:
        fitted: list[Regressor | float] = []
        for a in range(n_actions):
            rows = action == a
            if not rows.any():  # the action never logged in these rows: predict their mean
                fitted.append(float(reward.mean()))
                continue
            model = make_regressor(int(rng.integers(2**31 - 1)))
            model.fit(x[rows], reward[rows])
            fitted.append(model)

        def per_action_predict(features: np.ndarray) -> np.ndarray:
            out = np.empty((len(features), n_actions))
            for a, model_or_mean in enumerate(fitted):
                out[:, a] = (
                    model_or_mean
                    if isinstance(model_or_mean, float)
                    else model_or_mean.predict(features)
                )
            return out

        return per_action_predict
    model = make_regressor(int(rng.integers(2**31 - 1)))
    model.fit(np.column_stack([x, action]), reward)

    def joint_predict(features: np.ndarray) -> np.ndarray:
        out = np.empty((len(features), n_actions))
        column = np.empty((len(features), 1))
        for a in range(n_actions):
            column.fill(a)
            out[:, a] = model.predict(np.hstack([features, column]))
        return out

    return joint_predict


def _check_n_folds(n_folds: int) -> int:
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
        raise ValueError(f"n_folds must be an int >= 2, got {n_folds!r}")
    return n_folds


def assign_folds(n: int, n_folds: int, seed: int | None) -> np.ndarray:
    """(n,) fold of each row: a seeded random split into folds of sizes differing by <= 1."""
    fold = np.empty(n, dtype=np.intp)
    fold[np.random.default_rng(seed).permutation(n)] = np.arange(n) % n_folds
    return fold


def cross_fit(
    features: np.ndarray,
    action: np.ndarray,
    reward: np.ndarray,
    n_actions: int,
    *,
    make_regressor: RegressorFactory,
    per_action: bool,
    n_folds: int = 5,
    seed: int | None = None,
    name: str = "custom",
) -> RewardModelFit:
    """Cross-fit any regressor: per action on ``features`` (``per_action``, a T-learner) or
    one model on ``features`` plus the action as the last column."""
    reward = check_reward(reward)
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must have shape (n, n_features), got {x.shape}")
    if isinstance(n_actions, bool) or not isinstance(n_actions, int) or n_actions < 1:
        raise ValueError(f"n_actions must be an int >= 1, got {n_actions!r}")
    action = np.asarray(action)
    n = check_same_length(features=x, action=action, reward=reward)
    action = check_action(action, n_actions)
    if not np.isfinite(x).all():
        row, col = (int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise ValueError(f"features must be finite, got {x[row, col]} at row {row}, column {col}")
    if _check_n_folds(n_folds) > n:
        raise ValueError(f"n_folds must be at most the number of rows ({n}), got {n_folds}")

    rng = np.random.default_rng(seed)
    fold = assign_folds(n, n_folds, int(rng.integers(2**31 - 1)))
    estimated = np.empty((n, n_actions))
    for k in range(n_folds):
        held_out = fold == k
        train = ~held_out
        predict = _fit_predictor(
            x[train], action[train], reward[train], n_actions, make_regressor, per_action, rng
        )
        estimated[held_out] = predict(x[held_out])

    predicted = estimated[np.arange(n), action]
    sse = float(np.sum((reward - predicted) ** 2))
    sst = float(np.sum((reward - reward.mean()) ** 2))
    return RewardModelFit(
        estimated_rewards=estimated,
        fold=fold,
        oof_rmse=math.sqrt(sse / n),
        oof_r2=1 - sse / sst if sst > 0 else math.nan,
        regressor=name,
        n_folds=n_folds,
    )
