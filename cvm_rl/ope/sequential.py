"""Long-run (sequential) off-policy value per customer: the expected sum of a customer's
weekly rewards, ``V(pi) = E[sum_t gamma^t r_t]``, had the target policy pi made every
decision, estimated from :class:`~cvm_rl.ope.trajectories.Trajectories` logged under mu.

Notation (customer i, step t): state s_it, logged action a_it, reward r_it, propensity
``pscore`` mu(a_it | s_it), target distribution ``action_dist`` pi(. | s_it), one-step ratio
rho_it = pi(a_it | s_it) / mu(a_it | s_it), cumulative weight W_it = prod_{k <= t} rho_ik
(W_i,-1 = 1), and a fitted action value Q_t(s, a) with V_t(s) = sum_a pi(a | s) Q_t(s, a).
``gamma`` defaults to 1: the product's value is the undiscounted 52-week sum.

* :class:`PerDecisionIS` (PDIS) and :class:`WeightedPerDecisionIS` (WPDIS) weight each
  reward by the product of the ratios so far. Unbiased (PDIS) or consistent (WPDIS), but
  the product's variance grows exponentially with the horizon (``step_weight_diagnostics``
  shows the effective sample size collapsing over 52 weekly steps).
* :class:`FittedQEvaluation` (FQE) needs no weights: a regression per step, by backward
  induction. Low variance, biased by the regression.
* :class:`SequentialDoublyRobust` (DR) and :class:`WeightedSequentialDoublyRobust` (WDR)
  correct FQE with the weighted residuals: unbiased if either the weights or Q are right,
  but they inherit the cumulative weights' variance.
* :class:`MarginalizedIS` (MIS) and :class:`MarginalizedDoublyRobust` (MDR) replace the
  product of past ratios by an estimate of the state-distribution ratio
  d^pi_t(s) / d^mu_t(s), whose variance does not compound with t: built for long horizons.

Nuisance models (Q, the state ratio) are cross-fitted over customers: each fold's values
come from models fitted on the other folds (``n_folds=1`` fits and predicts on everyone,
which overfits). Intervals are a percentile bootstrap over customers with the nuisance
models held fixed: they include the sampling noise of the weights and rewards, not the
models' own fitting noise. scikit-learn is imported when a model is fitted, not with this
module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, get_args

import numpy as np

from cvm_rl.ope.diagnostics import WeightDiagnostics, diagnose_weights
from cvm_rl.ope.intervals import (
    Interval,
    bootstrap_multiplicities,
    check_alpha,
    check_n_bootstrap,
    percentile_interval,
)
from cvm_rl.ope.reward_model import Regressor, assign_folds
from cvm_rl.ope.trajectories import Trajectories, check_action_dist

RegressorName = Literal["ridge", "hgb"]
REGRESSORS: tuple[str, ...] = get_args(RegressorName)

FeatureMap = Callable[[np.ndarray], np.ndarray]
"""Maps (m, F) observations to (m, D) regression features, e.g.
``FeatureTransform.from_scenario(scenario).scaled``."""

Replicates = Callable[[np.ndarray], np.ndarray]
"""Customer multiplicities (b, n) -> the estimate on each of the b reweighted samples (b,)."""


# --- weights and their diagnostics -----------------------------------------------------------


def step_ratios(trajectories: Trajectories, action_dist: np.ndarray) -> np.ndarray:
    """(n, H) one-step ratios rho_it = pi(a_it | s_it) / mu(a_it | s_it); 1 on padding."""
    at_logged = np.take_along_axis(action_dist, trajectories.action[..., None], axis=2)[..., 0]
    return np.where(trajectories.valid, at_logged / trajectories.pscore, 1.0)


def cumulative_weights(trajectories: Trajectories, action_dist: np.ndarray) -> np.ndarray:
    """(n, H) cumulative importance weights W_it = prod_{k <= t} rho_ik (constant over
    padding)."""
    action_dist = check_action_dist(trajectories, action_dist)
    weights: np.ndarray = np.cumprod(step_ratios(trajectories, action_dist), axis=1)
    return weights


@dataclass(frozen=True)
class StepWeightDiagnostics:
    """:func:`~cvm_rl.ope.diagnostics.diagnose_weights` of each step's weights over the
    customers with that step (``steps[t]``, warnings included), and their headline numbers as
    (H,) arrays: the effective sample size ``ess`` = (sum_i w_it)^2 / sum_i w_it^2 (Kong 1992)
    and its ``ess_share`` of ``n_valid``, the largest weight and its share of the step's
    total, and the share of zero weights (trajectories the target could not have produced)."""

    steps: tuple[WeightDiagnostics, ...]

    def _array(self, name: str) -> np.ndarray:
        return np.array([getattr(step, name) for step in self.steps], dtype=np.float64)

    @property
    def n_valid(self) -> np.ndarray:
        return self._array("n")

    @property
    def ess(self) -> np.ndarray:
        return self._array("ess")

    @property
    def ess_share(self) -> np.ndarray:
        return self._array("ess_share")

    @property
    def max_weight(self) -> np.ndarray:
        return self._array("max_weight")

    @property
    def max_weight_share(self) -> np.ndarray:
        total = self._array("mean_weight") * self.n_valid
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(total > 0, self.max_weight / total, np.nan)

    @property
    def zero_share(self) -> np.ndarray:
        return self._array("zero_weight_share")

    def at_steps(self, steps: list[int]) -> dict[str, list[float]]:
        """The headline numbers after ``steps`` decisions (1-based: step 1 is the first)."""
        index = [s - 1 for s in steps]
        return {
            name: getattr(self, name)[index].tolist()
            for name in ("ess", "ess_share", "max_weight", "max_weight_share", "zero_share")
        }


def step_weight_diagnostics(weights: np.ndarray, valid: np.ndarray) -> StepWeightDiagnostics:
    """:class:`StepWeightDiagnostics` of any (n, H) per-step weights (cumulative products,
    or MIS's marginal weights) over the ``valid`` steps."""
    if weights.shape != valid.shape:
        raise ValueError(f"weights must have the shape of valid {valid.shape}, got {weights.shape}")
    return StepWeightDiagnostics(
        tuple(diagnose_weights(weights[valid[:, t], t]) for t in range(valid.shape[1]))
    )


def cumulative_weight_diagnostics(
    trajectories: Trajectories, action_dist: np.ndarray
) -> StepWeightDiagnostics:
    """Diagnostics of the cumulative weights W_t that PDIS, WPDIS and DR rely on."""
    return step_weight_diagnostics(
        cumulative_weights(trajectories, action_dist), trajectories.valid
    )


# --- the base class --------------------------------------------------------------------------


@dataclass(frozen=True)
class SequentialEstimator(ABC):
    """An estimator of the target's value per customer, ``sum_t gamma^t`` of the expected
    reward at step t. Hyperparameters are dataclass fields.

    Subclasses implement :meth:`_replicates`: fit whatever the estimator needs once, and
    return the estimate as a function of customer multiplicities, so the point estimate is
    its value at all-ones and the bootstrap reweights the customers without refitting
    (ratio estimators are recomputed from multiplicity-weighted sums)."""

    gamma: float = 1.0

    estimator_name: ClassVar[str]

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if isinstance(self.gamma, bool) or not (
            isinstance(self.gamma, int | float) and 0.0 <= self.gamma <= 1.0
        ):
            raise ValueError(f"{owner}.gamma must be in [0, 1], got {self.gamma!r}")

    @abstractmethod
    def _replicates(self, trajectories: Trajectories, action_dist: np.ndarray) -> Replicates:
        """The estimate as a function of customer multiplicities, on validated inputs."""

    def replicates(self, trajectories: Trajectories, action_dist: np.ndarray) -> Replicates:
        """The estimate as a function of customer multiplicities (b, n) -> (b,), nuisance
        models fitted once: at all-ones it is the point estimate, on
        :func:`~cvm_rl.ope.intervals.bootstrap_multiplicities` the bootstrap replicates. Lets
        a caller pair it with another statistic (the logged return) on the same resamples."""
        if not isinstance(trajectories, Trajectories):
            raise ValueError(
                f"trajectories must be a Trajectories, got {type(trajectories).__name__}"
            )
        return self._replicates(trajectories, check_action_dist(trajectories, action_dist))

    def discounts(self, horizon: int) -> np.ndarray:
        """(H,) gamma^t."""
        return float(self.gamma) ** np.arange(horizon)

    def estimate_policy_value(self, trajectories: Trajectories, action_dist: np.ndarray) -> float:
        """The estimated value per customer of the policy whose distribution at each logged
        step is ``action_dist`` (n, H, A), e.g. ``trajectories.target_probabilities(p)``."""
        replicates = self.replicates(trajectories, action_dist)
        return float(replicates(np.ones((1, trajectories.n_customers)))[0])

    def estimate_interval(
        self,
        trajectories: Trajectories,
        action_dist: np.ndarray,
        *,
        alpha: float = 0.05,
        n_bootstrap: int = 200,
        seed: int | None = None,
    ) -> Interval:
        """The estimate with a ``1 - alpha`` percentile bootstrap interval over customers
        (seeded; nuisance models held fixed). Replicates that are undefined (every weight of
        a step zero in the resample) are dropped."""
        alpha = check_alpha(alpha)
        check_n_bootstrap(n_bootstrap)
        replicates = self.replicates(trajectories, action_dist)
        n = trajectories.n_customers
        estimate = float(replicates(np.ones((1, n)))[0])
        draws = np.concatenate(
            [replicates(m) for m in bootstrap_multiplicities(n, n_bootstrap, seed)]
        )
        return percentile_interval(estimate, draws, alpha)


def _mean_of_terms(terms: np.ndarray) -> Replicates:
    """Replicates of a mean of per-customer terms (n,)."""

    def replicates(multiplicities: np.ndarray) -> np.ndarray:
        result: np.ndarray = multiplicities @ terms / multiplicities.sum(axis=1)
        return result

    return replicates


def _self_normalized_steps(
    multiplicities: np.ndarray,
    weights: np.ndarray,
    values: np.ndarray,
    valid: np.ndarray,
    discounts: np.ndarray,
) -> np.ndarray:
    """(b,) ``sum_t gamma^t (n_t / n) sum_i w_it v_it / sum_i w_it`` over the customers with
    a step t (n_t of the n), each customer counted as often as its multiplicity. The n_t / n
    factor keeps padded steps at zero reward, as in the unnormalized estimators. A step whose
    weights all vanish is undefined (NaN); a step no customer reached adds nothing."""
    valid_float = valid.astype(np.float64)
    numerator = multiplicities @ np.where(valid, weights * values, 0.0)
    denominator = multiplicities @ np.where(valid, weights, 0.0)
    reached = multiplicities @ valid_float
    total = multiplicities.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        step_value = np.where(reached > 0, numerator / denominator * reached / total, 0.0)
    result: np.ndarray = step_value @ discounts
    return result


# --- importance sampling ---------------------------------------------------------------------


@dataclass(frozen=True)
class PerDecisionIS(SequentialEstimator):
    """Per-decision importance sampling (PDIS):
    V = 1/n sum_i sum_t gamma^t W_it r_it, with W_it = prod_{k <= t} rho_ik.

    Unbiased when mu > 0 wherever pi > 0, since a reward depends only on the decisions before
    it; its variance grows like the product of the per-step second moments of rho.
    Precup, Sutton & Singh 2000."""

    estimator_name = "pdis"

    def _replicates(self, trajectories: Trajectories, action_dist: np.ndarray) -> Replicates:
        weights = np.cumprod(step_ratios(trajectories, action_dist), axis=1)
        weighted = np.where(trajectories.valid, weights * trajectories.reward, 0.0)
        return _mean_of_terms(weighted @ self.discounts(trajectories.horizon))


@dataclass(frozen=True)
class WeightedPerDecisionIS(SequentialEstimator):
    """Weighted (self-normalized) PDIS:
    V = sum_t gamma^t sum_i W_it r_it / sum_i W_it (times n_t / n, the share of customers
    with a step t, when trajectories have different lengths).

    Biased but consistent; each step's estimate is a weighted mean of observed rewards, so it
    stays within their range however large the weights. Precup, Sutton & Singh 2000;
    Thomas 2015 (Ph.D. thesis, "weighted per-decision importance sampling")."""

    estimator_name = "wpdis"

    def _replicates(self, trajectories: Trajectories, action_dist: np.ndarray) -> Replicates:
        weights = np.cumprod(step_ratios(trajectories, action_dist), axis=1)
        discounts = self.discounts(trajectories.horizon)

        def replicates(multiplicities: np.ndarray) -> np.ndarray:
            return _self_normalized_steps(
                multiplicities, weights, trajectories.reward, trajectories.valid, discounts
            )

        return replicates


# --- regression models -----------------------------------------------------------------------


class _ActionValueModel(Protocol):
    def fit(self, features: np.ndarray, action: np.ndarray, target: np.ndarray) -> None: ...

    def predict(self, features: np.ndarray, action: np.ndarray) -> np.ndarray:
        """Predictions at (row, action) pairs: features (m, D), action (m,)."""
        ...


class _RidgeActionValues:
    """Q(x, a) = a scikit-learn ridge on [x, onehot(a)] (shared slopes, action offsets) plus
    per-action slopes fitted to its residuals by ridge without intercept, so rarely logged
    actions keep the shared model (their own slopes are shrunk towards zero). The per-action
    ridges are solved in closed form, all actions in one batched solve: a scikit-learn fit
    per action and step costs more in input checks than in arithmetic."""

    def __init__(self, n_actions: int, alpha: float) -> None:
        self.n_actions = n_actions
        self.alpha = alpha
        self.coef = np.zeros((n_actions, 0))
        self.intercept = np.zeros(n_actions)

    def fit(self, features: np.ndarray, action: np.ndarray, target: np.ndarray) -> None:
        from sklearn.linear_model import Ridge

        n_features = features.shape[1]
        one_hot = np.eye(self.n_actions)[action]
        design = np.hstack([features, one_hot])
        shared = Ridge(alpha=self.alpha).fit(design, target)
        residual = target - shared.predict(design)
        # Per action a: (X_a'X_a + alpha I) beta_a = X_a' residual_a; the one-hot product
        # sums each action's rows.
        outer = (features[:, :, None] * features[:, None, :]).reshape(len(features), -1)
        gram = (one_hot.T @ outer).reshape(self.n_actions, n_features, n_features)
        moment = one_hot.T @ (features * residual[:, None])
        gram += self.alpha * np.eye(n_features)
        own = np.linalg.solve(gram, moment[:, :, None])[:, :, 0]
        self.coef = shared.coef_[:n_features] + own
        self.intercept = shared.intercept_ + shared.coef_[n_features:]

    def predict(self, features: np.ndarray, action: np.ndarray) -> np.ndarray:
        result: np.ndarray = (
            np.einsum("ij,ij->i", features, self.coef[action]) + self.intercept[action]
        )
        return result


class _BoostedActionValues:
    """Q(x, a) = gradient-boosted trees on [x, a] with the action as a categorical feature."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self.model: Any = None

    def fit(self, features: np.ndarray, action: np.ndarray, target: np.ndarray) -> None:
        from sklearn.ensemble import HistGradientBoostingRegressor

        self.model = HistGradientBoostingRegressor(
            categorical_features=[features.shape[1]], early_stopping=False, random_state=self.seed
        ).fit(np.column_stack([features, action]), target)

    def predict(self, features: np.ndarray, action: np.ndarray) -> np.ndarray:
        assert self.model is not None
        result: np.ndarray = self.model.predict(np.column_stack([features, action]))
        return result


def _state_regressor(name: RegressorName, alpha: float, seed: int | None) -> Regressor:
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import Ridge

    if name == "ridge":
        return Ridge(alpha=alpha)
    return HistGradientBoostingRegressor(early_stopping=False, random_state=seed)


def _state_values(
    model: _ActionValueModel, features: np.ndarray, probabilities: np.ndarray
) -> np.ndarray:
    """(m,) V(s) = sum_a pi(a | s) Q(s, a), predicting Q only where pi(a | s) > 0."""
    rows, actions = np.nonzero(probabilities > 0)
    q = model.predict(features[rows], actions)
    values: np.ndarray = np.bincount(
        rows, weights=probabilities[rows, actions] * q, minlength=len(features)
    )
    return values


def _folds(n: int, n_folds: int, seed: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, predict) customer indices: K-fold cross-fitting, or everyone twice for K = 1."""
    everyone = np.arange(n)
    if n_folds == 1:
        return [(everyone, everyone)]
    if n < 2 * n_folds:
        raise ValueError(f"n_folds={n_folds} needs at least {2 * n_folds} customers, got {n}")
    fold = assign_folds(n, n_folds, seed)
    return [(everyone[fold != k], everyone[fold == k]) for k in range(n_folds)]


@dataclass(frozen=True)
class _CrossFitted(SequentialEstimator):
    """Hyperparameters shared by the estimators with fitted nuisance models.

    ``feature_map`` turns observations into regression features (default: sign(x) log1p|x|
    per observation column, scaled into [-1, 1] over the logged steps; pass
    ``FeatureTransform.from_scenario(scenario).scaled`` when the scenario is known). The step
    needs no feature of its own: every model is fitted per step. ``ridge_alpha`` is the
    penalty of every ridge (features in [-1, 1]); ``seed`` seeds the fold split and the
    boosted trees."""

    ridge_alpha: float = 10.0
    n_folds: int = 2
    feature_map: FeatureMap | None = None
    seed: int | None = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        if isinstance(self.ridge_alpha, bool) or not (
            isinstance(self.ridge_alpha, int | float) and self.ridge_alpha > 0
        ):
            raise ValueError(f"{owner}.ridge_alpha must be > 0, got {self.ridge_alpha!r}")
        if isinstance(self.n_folds, bool) or not isinstance(self.n_folds, int) or self.n_folds < 1:
            raise ValueError(f"{owner}.n_folds must be an int >= 1, got {self.n_folds!r}")
        for name in ("q_model", "ratio_model"):
            value = getattr(self, name, "ridge")
            if value not in REGRESSORS:
                raise ValueError(f"{owner}.{name} must be one of {REGRESSORS}, got {value!r}")

    def features(self, trajectories: Trajectories) -> np.ndarray:
        """(n, H, D) regression features (zero on padding)."""
        valid = trajectories.valid
        observed = trajectories.obs[valid]
        if self.feature_map is None:
            # sign(x) log1p(|x|) tames heavy tails (spend, counts, recency in weeks) without
            # knowing which features have them; then each column is scaled into [-1, 1].
            compressed = np.sign(observed) * np.log1p(np.abs(observed))
            scale = np.abs(compressed).max(axis=0)
            mapped = compressed / np.where(scale > 0, scale, 1.0)
        else:
            mapped = np.asarray(self.feature_map(observed), dtype=np.float64)
            if mapped.ndim != 2 or len(mapped) != len(observed):
                raise ValueError(
                    f"feature_map must return shape ({len(observed)}, D), got {mapped.shape}"
                )
            if not np.isfinite(mapped).all():
                raise ValueError("feature_map must return finite features")
        out = np.zeros((*valid.shape, mapped.shape[1]))
        out[valid] = mapped
        return out


# --- fitted Q evaluation and doubly robust ---------------------------------------------------


@dataclass(frozen=True)
class FittedActionValues:
    """Cross-fitted Q at each customer's logged steps: ``q_logged`` (n, H) Q_t(s_it, a_it)
    and ``v_target`` (n, H) V_t(s_it) = sum_a pi(a | s_it) Q_t(s_it, a), zero on padding."""

    q_logged: np.ndarray
    v_target: np.ndarray


def _backward_induction(
    features: np.ndarray,
    trajectories: Trajectories,
    action_dist: np.ndarray,
    train: np.ndarray,
    predict: np.ndarray,
    gamma: float,
    make_model: Callable[[], _ActionValueModel],
) -> tuple[np.ndarray, np.ndarray]:
    """Q_t fitted on the ``train`` customers from t = H-1 down to 0 with targets
    r_t + gamma V_{t+1}(s_{t+1}) (V_H = 0, and 0 past a customer's last step); returns
    (Q at the logged action, V) of the ``predict`` customers, each (len(predict), H)."""
    valid, action, reward = trajectories.valid, trajectories.action, trajectories.reward
    horizon = trajectories.horizon
    q_logged = np.zeros((len(predict), horizon))
    v_target = np.zeros((len(predict), horizon))
    next_value = np.zeros(len(train))  # V_{t+1} at the train customers' step t+1
    for t in reversed(range(horizon)):
        fit_rows = valid[train, t]
        if not fit_rows.any():  # no training customer reached step t: nothing to learn
            next_value = np.zeros(len(train))
            continue
        customers = train[fit_rows]
        model = make_model()
        model.fit(
            features[customers, t],
            action[customers, t],
            reward[customers, t] + gamma * next_value[fit_rows],
        )
        next_value = np.where(
            valid[train, t], _state_values(model, features[train, t], action_dist[train, t]), 0.0
        )
        here = valid[predict, t]
        v_target[:, t] = np.where(
            here, _state_values(model, features[predict, t], action_dist[predict, t]), 0.0
        )
        q_logged[:, t] = np.where(
            here, model.predict(features[predict, t], action[predict, t]), 0.0
        )
    return q_logged, v_target


@dataclass(frozen=True)
class FittedQEvaluation(_CrossFitted):
    """Fitted Q evaluation (FQE), finite horizon: for t = H-1, ..., 0 regress
    y_it = r_it + gamma * sum_a' pi(a' | s_i,t+1) Q_{t+1}(s_i,t+1, a')
    on (s_it, a_it), then V = 1/n sum_i sum_a pi(a | s_i0) Q_0(s_i0, a).

    One regression per step, no importance weights: low variance, biased by the model
    (``q_model``: ``"ridge"``, shared linear slopes plus per-action slopes on the features,
    fast; or ``"hgb"``, histogram gradient boosting on features and action, slower).
    Cross-fitted: each fold's customers are valued by the Q fitted on the other folds.
    Le, Voloshin & Yue 2019 (Batch Policy Learning under Constraints); Munos & Szepesvári
    2008 (fitted value iteration)."""

    q_model: RegressorName = "ridge"

    estimator_name = "fqe"

    def _action_value_model(self, n_actions: int) -> _ActionValueModel:
        if self.q_model == "ridge":
            return _RidgeActionValues(n_actions, float(self.ridge_alpha))
        return _BoostedActionValues(self.seed)

    def fit_action_values(
        self, trajectories: Trajectories, action_dist: np.ndarray
    ) -> FittedActionValues:
        """The cross-fitted Q and V of ``action_dist`` at every logged step."""
        action_dist = check_action_dist(trajectories, action_dist)
        features = self.features(trajectories)
        shape = trajectories.valid.shape
        q_logged, v_target = np.zeros(shape), np.zeros(shape)
        for train, predict in _folds(trajectories.n_customers, self.n_folds, self.seed):
            q_logged[predict], v_target[predict] = _backward_induction(
                features,
                trajectories,
                action_dist,
                train,
                predict,
                float(self.gamma),
                lambda: self._action_value_model(trajectories.n_actions),
            )
        return FittedActionValues(q_logged, v_target)

    def _replicates(self, trajectories: Trajectories, action_dist: np.ndarray) -> Replicates:
        fitted = self.fit_action_values(trajectories, action_dist)
        return _mean_of_terms(fitted.v_target[:, 0])


@dataclass(frozen=True)
class SequentialDoublyRobust(FittedQEvaluation):
    """Sequential doubly robust (DR) with the cross-fitted FQE model:
    V = 1/n sum_i sum_t gamma^t [W_it (r_it - Q_t(s_it, a_it)) + W_i,t-1 V_t(s_it)].

    Unbiased if the weights are right, whatever Q; with a good Q its variance is that of
    the residuals, not the rewards, but still carries W_t. Jiang & Li 2016 (Doubly Robust
    Off-policy Value Evaluation for Reinforcement Learning)."""

    estimator_name = "dr"

    def _replicates(self, trajectories: Trajectories, action_dist: np.ndarray) -> Replicates:
        fitted = self.fit_action_values(trajectories, action_dist)
        weights = np.cumprod(step_ratios(trajectories, action_dist), axis=1)
        previous = np.hstack([np.ones((trajectories.n_customers, 1)), weights[:, :-1]])
        residual = trajectories.reward - fitted.q_logged
        per_step = weights * residual + previous * fitted.v_target
        terms = np.where(trajectories.valid, per_step, 0.0) @ self.discounts(trajectories.horizon)
        return _mean_of_terms(terms)


@dataclass(frozen=True)
class WeightedSequentialDoublyRobust(FittedQEvaluation):
    """Weighted doubly robust (WDR): DR with each step's weights self-normalized,
    V = sum_t gamma^t [sum_i w_it (r_it - Q_t(s_it, a_it)) + sum_i w_i,t-1 V_t(s_it)],
    w_it = W_it / sum_j W_jt (times n_t / n with trajectories of different lengths).

    Biased but consistent, and much less variable than DR when the weights explode.
    Thomas & Brunskill 2016 (Data-Efficient Off-Policy Policy Evaluation for RL)."""

    estimator_name = "wdr"

    def _replicates(self, trajectories: Trajectories, action_dist: np.ndarray) -> Replicates:
        fitted = self.fit_action_values(trajectories, action_dist)
        weights = np.cumprod(step_ratios(trajectories, action_dist), axis=1)
        previous = np.hstack([np.ones((trajectories.n_customers, 1)), weights[:, :-1]])
        residual = trajectories.reward - fitted.q_logged
        valid = trajectories.valid
        discounts = self.discounts(trajectories.horizon)

        def replicates(multiplicities: np.ndarray) -> np.ndarray:
            correction = _self_normalized_steps(multiplicities, weights, residual, valid, discounts)
            baseline = _self_normalized_steps(
                multiplicities, previous, fitted.v_target, valid, discounts
            )
            return correction + baseline

        return replicates


# --- marginalized importance sampling --------------------------------------------------------


def _state_ratio_chain(
    features: np.ndarray,
    ratios: np.ndarray,
    valid: np.ndarray,
    train: np.ndarray,
    predict: np.ndarray,
    recursive: bool,
    make_regressor: Callable[[], Regressor],
) -> np.ndarray:
    """(len(predict), H) estimates of w_t(s_t) = d^pi_t(s_t) / d^mu_t(s_t), fitted on the
    ``train`` customers step by step (w_0 = 1: the first state does not depend on the
    policy), each step's fit clipped at 0 and scaled to mean 1 on its training rows."""
    horizon = valid.shape[1]
    out = np.ones((len(predict), horizon))
    ratio_train = np.ones(len(train))  # w_{t-1}(s_{t-1}) of the training customers
    product_train = np.ones(len(train))  # prod_{k < t} rho_k of the training customers
    for t in range(1, horizon):
        product_train = product_train * ratios[train, t - 1]
        target = ratio_train * ratios[train, t - 1] if recursive else product_train
        fit_rows = valid[train, t]
        if not fit_rows.any():  # no training customer reached step t: keep w = 1
            ratio_train = np.ones(len(train))
            continue
        regressor = make_regressor().fit(features[train[fit_rows], t], target[fit_rows])
        fitted = np.maximum(regressor.predict(features[train, t]), 0.0)
        scale = fitted[fit_rows].mean()
        scale = scale if scale > 0 else 1.0
        ratio_train = fitted / scale
        out[:, t] = np.maximum(regressor.predict(features[predict, t]), 0.0) / scale
    return out


@dataclass(frozen=True)
class MarginalizedIS(_CrossFitted):
    """Marginalized importance sampling (MIS), self-normalized per step:
    V = sum_t gamma^t sum_i u_it r_it / sum_i u_it, u_it = w_t(s_it) rho_it
    (times n_t / n with trajectories of different lengths), where w_t estimates the
    state-distribution ratio d^pi_t(s) / d^mu_t(s) in place of PDIS's product of past ratios.

    ``recursive=True`` (default) fits w_t by regressing w_{t-1}(s_i,t-1) rho_i,t-1 on the
    features of s_it: E_mu[w_{t-1}(s_{t-1}) rho_{t-1} | s_t = s] = d^pi_t(s) / d^mu_t(s), the
    regression form of the recursion d^pi_t = P^pi d^pi_{t-1} of Xie, Ma & Wang 2019 (Towards
    Optimal Off-Policy Evaluation for RL with Marginalized Importance Sampling); each target
    has one ratio, so the variance does not compound, but model errors carry forward.
    ``recursive=False`` regresses the cumulative product W_i,t-1 itself (also unbiased for
    the ratio, as E_mu[W_t-1 | s_t] = d^pi_t / d^mu_t, but with the product's variance).
    Consistent when the ratio model is right; ``ratio_model`` is ``"ridge"`` (linear in the
    features) or ``"hgb"``. Cross-fitted like FQE."""

    ratio_model: RegressorName = "ridge"
    recursive: bool = True

    estimator_name = "mis"

    def state_ratios(self, trajectories: Trajectories, action_dist: np.ndarray) -> np.ndarray:
        """(n, H) the cross-fitted w_t(s_it), scaled to mean 1 over each step's customers
        (E_mu[w_t(s_t)] = 1); 1 on padding."""
        action_dist = check_action_dist(trajectories, action_dist)
        features = self.features(trajectories)
        ratios = step_ratios(trajectories, action_dist)
        valid = trajectories.valid
        out = np.ones(valid.shape)
        for train, predict in _folds(trajectories.n_customers, self.n_folds, self.seed):
            out[predict] = _state_ratio_chain(
                features,
                ratios,
                valid,
                train,
                predict,
                self.recursive,
                lambda: _state_regressor(self.ratio_model, float(self.ridge_alpha), self.seed),
            )
        step_mean = np.where(valid, out, 0.0).sum(axis=0) / valid.sum(axis=0)
        out = out / np.where(step_mean > 0, step_mean, 1.0)
        return np.where(valid, out, 1.0)

    def marginal_weights(self, trajectories: Trajectories, action_dist: np.ndarray) -> np.ndarray:
        """(n, H) u_it = w_t(s_it) rho_it, the weights MIS puts on r_it (for diagnostics)."""
        state = self.state_ratios(trajectories, action_dist)
        result: np.ndarray = state * step_ratios(trajectories, action_dist)
        return result

    def _replicates(self, trajectories: Trajectories, action_dist: np.ndarray) -> Replicates:
        weights = self.marginal_weights(trajectories, action_dist)
        discounts = self.discounts(trajectories.horizon)

        def replicates(multiplicities: np.ndarray) -> np.ndarray:
            return _self_normalized_steps(
                multiplicities, weights, trajectories.reward, trajectories.valid, discounts
            )

        return replicates


@dataclass(frozen=True)
class MarginalizedDoublyRobust(MarginalizedIS):
    """Marginalized doubly robust (MDR), with MIS's state ratios and FQE's Q (both
    cross-fitted on the same folds):
    V = 1/n sum_i sum_t gamma^t [mu_it (r_it - Q_t(s_it, a_it)) + mu_i,t-1 V_t(s_it)],
    mu_it = w_t(s_it) rho_it (the marginal state-action ratio), mu_i,-1 = 1.

    Sequential DR with W_t replaced by mu_t. Weighting V_t by the previous step's mu (not by
    w_t(s_t), which has the same expectation when the ratios are right) makes the sum
    telescope when Q is right, so the estimate is consistent if either the ratios or Q are
    right. Kallus & Uehara 2020 (Double Reinforcement Learning for Efficient Off-Policy
    Evaluation in MDPs)."""

    q_model: RegressorName = "ridge"

    estimator_name = "mdr"
    self_normalized: ClassVar[bool] = False

    def _replicates(self, trajectories: Trajectories, action_dist: np.ndarray) -> Replicates:
        state = self.state_ratios(trajectories, action_dist)
        fitted = FittedQEvaluation(
            gamma=self.gamma,
            ridge_alpha=self.ridge_alpha,
            n_folds=self.n_folds,
            feature_map=self.feature_map,
            seed=self.seed,
            q_model=self.q_model,
        ).fit_action_values(trajectories, action_dist)
        ratios = step_ratios(trajectories, action_dist)
        residual = trajectories.reward - fitted.q_logged
        valid = trajectories.valid
        discounts = self.discounts(trajectories.horizon)
        marginal = state * ratios
        # Padding sits at the end of a trajectory, so a valid step's previous step is valid.
        previous = np.concatenate([np.ones((len(marginal), 1)), marginal[:, :-1]], axis=1)
        if not type(self).self_normalized:
            per_step = marginal * residual + previous * fitted.v_target
            return _mean_of_terms(np.where(valid, per_step, 0.0) @ discounts)

        def replicates(multiplicities: np.ndarray) -> np.ndarray:
            correction = _self_normalized_steps(
                multiplicities, marginal, residual, valid, discounts
            )
            baseline = _self_normalized_steps(
                multiplicities, previous, fitted.v_target, valid, discounts
            )
            return correction + baseline

        return replicates


@dataclass(frozen=True)
class WeightedMarginalizedDoublyRobust(MarginalizedDoublyRobust):
    """MDR with each step's weights self-normalized, as WDR is to DR:
    V = sum_t gamma^t [sum_i mu_it (r_it - Q_t(s_it, a_it)) / sum_i mu_it
    + sum_i mu_i,t-1 V_t(s_it) / sum_i mu_i,t-1], mu_it = w_t(s_it) rho_it, mu_i,-1 = 1
    (times n_t / n with trajectories of different lengths).

    The correction term no longer scales with the largest single-step ratio."""

    estimator_name = "wmdr"
    self_normalized: ClassVar[bool] = True


SEQUENTIAL_ESTIMATORS: tuple[type[SequentialEstimator], ...] = (
    PerDecisionIS,
    WeightedPerDecisionIS,
    FittedQEvaluation,
    SequentialDoublyRobust,
    WeightedSequentialDoublyRobust,
    MarginalizedIS,
    MarginalizedDoublyRobust,
    WeightedMarginalizedDoublyRobust,
)
