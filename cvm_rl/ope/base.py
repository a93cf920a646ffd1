"""What every single-step estimator shares: input checks that name the offending argument and
row, the validated inputs with the importance weights computed once, the estimator base class,
and bootstrap intervals of several estimators over one set of resamples.

Shapes follow Open Bandit Pipeline: ``reward`` (n,), ``action`` (n,) ints, ``pscore`` (n,) the
logger's probability of the logged action, ``action_dist`` (n, A) the target policy's action
probabilities in each logged context, ``estimated_rewards`` (n, A) a reward model's predictions.
OBP's three-dimensional (n, A, 1) arrays are accepted and squeezed.

The ``check_*`` helpers are public so that the sequential estimators validate the same way.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar, Literal, get_args

import numpy as np

from .intervals import (
    Interval,
    bernstein_interval,
    bootstrap_multiplicities,
    check_alpha,
    check_n_bootstrap,
    normal_interval,
    percentile_interval,
)

# Rows of a probability table may be off by this much from 1: logged probabilities pass through
# float32 and JSON, so exact sums cannot be demanded.
SUM_TOLERANCE = 1e-6

IntervalMethod = Literal["bootstrap", "normal", "bernstein"]
INTERVAL_METHODS: tuple[str, ...] = get_args(IntervalMethod)

# value = sum over parts of (sum_i numerator_i) / (sum_i denominator_i), a missing denominator
# standing for n. A bootstrap resample only reweights the rows, so each replicate is the same
# ratios of multiplicity-weighted sums: no resample is ever materialized.
RatioPart = tuple[np.ndarray, np.ndarray | None]


# --- input checks ----------------------------------------------------------------------------


def _first(mask: np.ndarray) -> tuple[int, ...]:
    """Index of the first True of ``mask`` (called only once a bad entry is known to exist)."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


def _squeeze_len_list(arr: np.ndarray) -> np.ndarray:
    """OBP's (n, A, len_list) arrays with a single slate position become (n, A)."""
    return arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr


def check_reward(reward: np.ndarray, *, name: str = "reward") -> np.ndarray:
    """A non-empty 1-D finite float array."""
    arr = np.asarray(reward, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {arr.shape}")
    if not len(arr):
        raise ValueError(f"{name} must not be empty")
    finite = np.isfinite(arr)
    if not finite.all():
        (row,) = _first(~finite)
        raise ValueError(f"{name} must be finite, got {arr[row]} at row {row}")
    return arr


def check_action(action: np.ndarray, n_actions: int, *, name: str = "action") -> np.ndarray:
    """A 1-D integer array with every entry in [0, n_actions)."""
    arr = np.asarray(action)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    if len(arr) and (arr.min() < 0 or arr.max() >= n_actions):
        (row,) = _first((arr < 0) | (arr >= n_actions))
        raise ValueError(f"{name} must be in [0, {n_actions}), got {arr[row]} at row {row}")
    return arr.astype(np.intp, copy=False)


def check_pscore(pscore: np.ndarray, *, name: str = "pscore") -> np.ndarray:
    """A 1-D float array of probabilities in (0, 1]: a zero would make the weight infinite."""
    arr = np.asarray(pscore, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {arr.shape}")
    # min/max pass over the array without temporaries; NaN fails both comparisons
    if len(arr) and not (arr.min() > 0 and arr.max() <= 1):
        (row,) = _first(~((arr > 0) & (arr <= 1)))
        raise ValueError(f"{name} must be in (0, 1], got {arr[row]:g} at row {row}")
    return arr


def check_probabilities(
    probabilities: np.ndarray, n_rows: int, *, name: str = "action_dist"
) -> np.ndarray:
    """An (n_rows, A) float array of non-negative rows summing to 1 (within SUM_TOLERANCE)."""
    arr = _squeeze_len_list(np.asarray(probabilities, dtype=np.float64))
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"{name} must have shape (n, n_actions), got {arr.shape}")
    if arr.shape[0] != n_rows:
        raise ValueError(
            f"{name} must have one row per logged decision ({n_rows}), got {arr.shape[0]}"
        )
    # The cheap checks (a min and row sums, which NaN and inf also fail) run on every call;
    # the entry-by-entry ones only to name what is wrong. einsum's row sums of a wide-and-short
    # table are about twice as fast as arr.sum(axis=1).
    sums = np.einsum("ij->i", arr)
    if arr.min() >= 0 and np.all(np.abs(sums - 1) <= SUM_TOLERANCE):
        return arr
    finite = np.isfinite(arr)
    if not finite.all():
        row, col = _first(~finite)
        raise ValueError(f"{name} must be finite, got {arr[row, col]} at row {row}, action {col}")
    if (arr < 0).any():
        row, col = _first(arr < 0)
        raise ValueError(
            f"{name} must be non-negative, got {arr[row, col]:g} at row {row}, action {col}"
        )
    (row,) = _first(np.abs(sums - 1) > SUM_TOLERANCE)
    raise ValueError(f"{name} rows must sum to 1, row {row} sums to {sums[row]:g}")


def check_estimated_rewards(
    estimated_rewards: np.ndarray, shape: tuple[int, int], *, name: str = "estimated_rewards"
) -> np.ndarray:
    """An (n, A) finite float array, A being the number of actions of ``action_dist``."""
    arr = _squeeze_len_list(np.asarray(estimated_rewards, dtype=np.float64))
    if arr.shape != shape:
        raise ValueError(
            f"{name} must have the shape of action_dist (n, n_actions) = {shape}, got {arr.shape}"
        )
    if not np.isfinite(arr.sum()):  # one cheap pass; a sum can only overflow if entries are huge
        finite = np.isfinite(arr)
        if not finite.all():
            row, col = _first(~finite)
            raise ValueError(
                f"{name} must be finite, got {arr[row, col]} at row {row}, action {col}"
            )
    return arr


def check_same_length(**arrays: np.ndarray) -> int:
    """The common length of 1-D ``arrays`` (named in the error when they differ)."""
    lengths = {name: len(arr) for name, arr in arrays.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name} {length}" for name, length in lengths.items())
        raise ValueError(f"{', '.join(lengths)} must have the same length, got {listed}")
    return next(iter(lengths.values()))


def check_threshold(value: float, *, name: str, owner: str) -> float:
    """A hyperparameter that is a number >= 0 (inf allowed, NaN and bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{owner}.{name} must be a number >= 0 (inf allowed), got {value!r}")
    return float(value)


def importance_weights(
    action: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray
) -> np.ndarray:
    """w_i = action_dist[i, action_i] / pscore_i on validated arrays."""
    n, n_actions = action_dist.shape
    # A flat take reads one entry per row; it is about twice as fast as 2-D fancy indexing.
    return action_dist.reshape(-1).take(np.arange(n) * n_actions + action) / pscore


# --- validated inputs ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class BanditInputs:
    """Validated logged bandit feedback with the quantities every estimator shares, each
    computed once on first use: importance weights, the reward model at the logged action,
    its expectation under the target, and the residual. Validate once with :meth:`validate`,
    then pass the same object to any number of estimators and resamples."""

    reward: np.ndarray
    action: np.ndarray
    pscore: np.ndarray
    action_dist: np.ndarray
    estimated_rewards: np.ndarray | None = None

    @classmethod
    def validate(
        cls,
        reward: np.ndarray,
        action: np.ndarray,
        pscore: np.ndarray,
        action_dist: np.ndarray,
        estimated_rewards: np.ndarray | None = None,
    ) -> BanditInputs:
        reward = check_reward(reward)
        pscore = check_pscore(pscore)
        dist = np.asarray(action_dist)
        action = np.asarray(action)
        if action.ndim != 1:
            raise ValueError(f"action must be a 1-D array, got shape {action.shape}")
        n = check_same_length(reward=reward, action=action, pscore=pscore)
        dist = check_probabilities(dist, n, name="action_dist")
        action = check_action(action, dist.shape[1])
        if estimated_rewards is not None:
            estimated_rewards = check_estimated_rewards(estimated_rewards, dist.shape)
        return cls(reward, action, pscore, dist, estimated_rewards)

    @property
    def n(self) -> int:
        return len(self.reward)

    @property
    def n_actions(self) -> int:
        return int(self.action_dist.shape[1])

    @cached_property
    def weight(self) -> np.ndarray:
        """Importance weights w_i = pi(a_i | x_i) / pi_0(a_i | x_i)."""
        return importance_weights(self.action, self.pscore, self.action_dist)

    def _rewards_model(self) -> np.ndarray:
        if self.estimated_rewards is None:
            raise ValueError("estimated_rewards is required for the reward-model terms")
        return self.estimated_rewards

    @cached_property
    def q_logged(self) -> np.ndarray:
        """q_hat(x_i, a_i): the reward model at the logged action."""
        model = self._rewards_model()
        return model.reshape(-1).take(np.arange(self.n) * self.n_actions + self.action)

    @cached_property
    def q_target(self) -> np.ndarray:
        """sum_a pi(a | x_i) q_hat(x_i, a): the reward model's value of the target at row i."""
        # einsum sums row by row without the (n, A) product a `(p * q).sum(1)` would allocate
        return np.einsum("ij,ij->i", self.action_dist, self._rewards_model())

    @cached_property
    def residual(self) -> np.ndarray:
        """r_i - q_hat(x_i, a_i)."""
        return self.reward - self.q_logged


# --- estimators ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseOffPolicyEstimator(ABC):
    """A single-step estimator of the target policy's expected reward per decision.

    Hyperparameters are dataclass fields. Subclasses define :meth:`ratio_parts` (the estimate
    as ratios of sums over rows, which is all the bootstrap needs) and, where the per-row terms
    are bounded, :meth:`term_range` (for the empirical Bernstein interval). The array methods
    (``estimate_*``) validate their inputs on every call; the methods taking
    :class:`BanditInputs` reuse one validation and the weights across estimators.
    """

    estimator_name: ClassVar[str]
    requires_estimated_rewards: ClassVar[bool] = False
    # A ratio of sums is not a mean of independent terms: no closed-form interval applies.
    self_normalized: ClassVar[bool] = False

    @abstractmethod
    def ratio_parts(self, inputs: BanditInputs) -> tuple[RatioPart, ...]:
        """(numerator, denominator) row terms: the estimate is the sum over parts of
        sum(numerator) / sum(denominator), a denominator of None standing for n."""

    def term_range(self, reward_range: tuple[float, float]) -> float:
        """Width of an interval holding every per-row term when rewards (and estimated
        rewards) lie in ``reward_range``; raises when the terms are unbounded."""
        raise ValueError(
            f"method='bernstein' needs bounded per-row terms; {type(self).__name__}'s are not "
            "bounded: use method='bootstrap'"
        )

    # -- on validated inputs --

    def check_inputs(self, inputs: BanditInputs) -> None:
        if self.requires_estimated_rewards and inputs.estimated_rewards is None:
            raise ValueError(f"estimated_rewards is required by {type(self).__name__}")

    def policy_value(self, inputs: BanditInputs) -> float:
        self.check_inputs(inputs)
        value = 0.0
        for numerator, denominator in self.ratio_parts(inputs):
            total = inputs.n if denominator is None else float(np.sum(denominator))
            if total == 0:
                raise ValueError(
                    f"{type(self).__name__} is undefined: every importance weight is 0 "
                    "(the target never takes a logged action)"
                )
            value += float(np.sum(numerator)) / total
        return value

    def round_rewards(self, inputs: BanditInputs) -> np.ndarray:
        """Per-row terms whose mean is the estimate (self-normalized estimators divide by the
        sample's mean weight, so their terms depend on the whole sample)."""
        self.check_inputs(inputs)
        terms = np.zeros(inputs.n)
        for numerator, denominator in self.ratio_parts(inputs):
            scale = 1.0 if denominator is None else float(np.mean(denominator))
            if scale == 0:
                raise ValueError(
                    f"{type(self).__name__} is undefined: every importance weight is 0 "
                    "(the target never takes a logged action)"
                )
            terms += numerator / scale
        return terms

    def interval(
        self,
        inputs: BanditInputs,
        *,
        alpha: float = 0.05,
        n_bootstrap: int = 200,
        seed: int | None = None,
        method: IntervalMethod = "bootstrap",
        reward_range: tuple[float, float] | None = None,
    ) -> Interval:
        """A ``1 - alpha`` interval: the percentile bootstrap over rows (any estimator), the
        normal (CLT) interval of the mean of the per-row terms (mean-type estimators), or the
        empirical Bernstein interval (mean-type estimators with bounded terms; needs
        ``reward_range``, which the rewards and estimated rewards must respect)."""
        alpha = check_alpha(alpha)
        if method not in INTERVAL_METHODS:
            raise ValueError(f"method must be one of {INTERVAL_METHODS}, got {method!r}")
        self.check_inputs(inputs)
        if method == "bootstrap":
            check_n_bootstrap(n_bootstrap)
            return bootstrap_intervals(
                [self], inputs, alpha=alpha, n_bootstrap=n_bootstrap, seed=seed
            )[0]
        if self.self_normalized:
            raise ValueError(
                f"method={method!r} needs a mean of independent per-row terms; "
                f"{type(self).__name__} is a ratio of sums (self-normalized): "
                "use method='bootstrap'"
            )
        if method == "normal":
            return normal_interval(self.round_rewards(inputs), alpha)
        if reward_range is None:
            raise ValueError(
                "method='bernstein' needs reward_range=(low, high), the known range of rewards"
            )
        low, high = _check_reward_range(reward_range)
        width = self.term_range((low, high))
        _check_within(inputs.reward, low, high, "reward")
        if self.requires_estimated_rewards:
            _check_within(inputs._rewards_model(), low, high, "estimated_rewards")
        return bernstein_interval(self.round_rewards(inputs), alpha, width)

    # -- on arrays (OBP's interface) --

    def estimate_round_rewards(
        self,
        reward: np.ndarray,
        action: np.ndarray,
        pscore: np.ndarray,
        action_dist: np.ndarray,
        estimated_rewards: np.ndarray | None = None,
    ) -> np.ndarray:
        """(n,) per-row terms whose mean is :meth:`estimate_policy_value`."""
        inputs = BanditInputs.validate(reward, action, pscore, action_dist, estimated_rewards)
        return self.round_rewards(inputs)

    def estimate_policy_value(
        self,
        reward: np.ndarray,
        action: np.ndarray,
        pscore: np.ndarray,
        action_dist: np.ndarray,
        estimated_rewards: np.ndarray | None = None,
    ) -> float:
        """The estimated expected reward per decision of the target policy."""
        inputs = BanditInputs.validate(reward, action, pscore, action_dist, estimated_rewards)
        return self.policy_value(inputs)

    def estimate_interval(
        self,
        reward: np.ndarray,
        action: np.ndarray,
        pscore: np.ndarray,
        action_dist: np.ndarray,
        estimated_rewards: np.ndarray | None = None,
        *,
        alpha: float = 0.05,
        n_bootstrap: int = 200,
        seed: int | None = None,
        method: IntervalMethod = "bootstrap",
        reward_range: tuple[float, float] | None = None,
    ) -> Interval:
        """The estimate with a ``1 - alpha`` interval (see :meth:`interval`)."""
        inputs = BanditInputs.validate(reward, action, pscore, action_dist, estimated_rewards)
        return self.interval(
            inputs,
            alpha=alpha,
            n_bootstrap=n_bootstrap,
            seed=seed,
            method=method,
            reward_range=reward_range,
        )


def _check_reward_range(reward_range: tuple[float, float]) -> tuple[float, float]:
    try:
        low, high = (float(x) for x in reward_range)
    except (TypeError, ValueError):
        raise ValueError(f"reward_range must be (low, high), got {reward_range!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"reward_range must be finite with low < high, got {reward_range!r}")
    return low, high


def _check_within(values: np.ndarray, low: float, high: float, name: str) -> None:
    if values.min() < low or values.max() > high:
        index = _first((values < low) | (values > high))
        where = f"row {index[0]}" + (f", action {index[1]}" if len(index) > 1 else "")
        raise ValueError(
            f"reward_range ({low:g}, {high:g}) does not hold {name} {values[index]:g} at {where}"
        )


# --- shared bootstrap ------------------------------------------------------------------------


def stack_terms(
    estimators: Sequence[BaseOffPolicyEstimator], inputs: BanditInputs
) -> tuple[np.ndarray, list[list[tuple[int, int | None]]]]:
    """The distinct term vectors of all ``estimators`` as rows of one (k, n) matrix (they share
    the weights and often more), and each estimator's parts as (numerator, denominator) row
    indices: a block of resamples then costs a single (b, n) @ (n, k) product."""
    columns: list[np.ndarray] = []
    position: dict[int, int] = {}

    def column(terms: np.ndarray) -> int:
        if id(terms) not in position:
            position[id(terms)] = len(columns)
            columns.append(terms)
        return position[id(terms)]

    plans = [
        [(column(num), None if den is None else column(den)) for num, den in parts]
        for parts in (est.ratio_parts(inputs) for est in estimators)
    ]
    stacked = np.empty((len(columns), inputs.n))
    for j, terms in enumerate(columns):
        stacked[j] = terms
    return stacked, plans


def bootstrap_replicates(
    estimators: Sequence[BaseOffPolicyEstimator],
    inputs: BanditInputs,
    *,
    n_bootstrap: int = 200,
    seed: int | None = None,
) -> np.ndarray:
    """(len(estimators), n_bootstrap) bootstrap replicates over rows, every estimator on the
    same resamples (so the same seed gives each estimator the same replicates alone or in a
    group). Each resample is a vector of row multiplicities m, and each replicate the
    estimator's ratios of m-weighted sums: one matrix product per block of resamples."""
    check_n_bootstrap(n_bootstrap)
    for estimator in estimators:
        estimator.check_inputs(inputs)
    stacked, plans = stack_terms(estimators, inputs)
    replicates = np.zeros((len(estimators), n_bootstrap))
    start = 0
    # A resample in which the target's weights all vanish gives 0/0: a NaN replicate, which
    # the percentile interval drops.
    with np.errstate(divide="ignore", invalid="ignore"):
        for multiplicities in bootstrap_multiplicities(inputs.n, n_bootstrap, seed):
            sums = multiplicities @ stacked.T  # (b, k)
            stop = start + len(multiplicities)
            for row, plan in zip(replicates, plans, strict=True):
                for num, den in plan:
                    row[start:stop] += sums[:, num] / (inputs.n if den is None else sums[:, den])
            start = stop
    return replicates


def bootstrap_intervals(
    estimators: Sequence[BaseOffPolicyEstimator],
    inputs: BanditInputs,
    *,
    alpha: float = 0.05,
    n_bootstrap: int = 200,
    seed: int | None = None,
) -> list[Interval]:
    """Percentile bootstrap intervals of several estimators over one set of seeded resamples."""
    alpha = check_alpha(alpha)
    replicates = bootstrap_replicates(estimators, inputs, n_bootstrap=n_bootstrap, seed=seed)
    return [
        percentile_interval(est.policy_value(inputs), reps, alpha)
        for est, reps in zip(estimators, replicates, strict=True)
    ]
