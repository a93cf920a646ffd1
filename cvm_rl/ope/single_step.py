"""Single-step off-policy estimators: the target policy's expected reward per decision,
V(pi) = E_x[sum_a pi(a | x) q(x, a)], from decisions logged under another policy pi_0.

Notation (row i of the log): context x_i, logged action a_i, reward r_i, propensity
``pscore`` p_i = pi_0(a_i | x_i), target probabilities ``action_dist`` pi(. | x_i),
importance weight w_i = pi(a_i | x_i) / p_i, reward model q_hat(x_i, a) (``estimated_rewards``)
and its value under the target q_pi(x_i) = sum_a pi(a | x_i) q_hat(x_i, a).

Each estimator is a small frozen dataclass on :class:`~cvm_rl.ope.base.BaseOffPolicyEstimator`
(whose ``estimate_policy_value``, ``estimate_round_rewards`` and ``estimate_interval`` take
the arrays in Open Bandit Pipeline's shapes). To evaluate several estimators on one log,
validate once with ``BanditInputs.validate`` and use ``policy_value`` and
``bootstrap_intervals``, which share the weights and the resamples.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass

import numpy as np

from .base import BanditInputs, BaseOffPolicyEstimator, RatioPart, check_threshold


def _width(reward_range: tuple[float, float]) -> float:
    low, high = reward_range
    return high - low


def _needs_finite(value: float, owner: str, name: str, hint: str) -> None:
    if math.isinf(value):
        raise ValueError(
            f"method='bernstein' needs bounded per-row terms; {owner} with {name}=inf has "
            f"unbounded importance weights: set {name} ({hint}) or use method='bootstrap'"
        )


@dataclass(frozen=True)
class DirectMethod(BaseOffPolicyEstimator):
    """Direct method (DM): the reward model's value of the target, averaged over the logged
    contexts, V_DM = 1/n sum_i sum_a pi(a | x_i) q_hat(x_i, a).

    Low variance, biased by the reward model's error; uses the logged rewards only through
    the reward model (fitted on them). As defined in Dudík et al. 2014."""

    estimator_name = "dm"
    requires_estimated_rewards = True

    def ratio_parts(self, inputs: BanditInputs) -> tuple[RatioPart, ...]:
        return ((inputs.q_target, None),)

    def term_range(self, reward_range: tuple[float, float]) -> float:
        return _width(reward_range)


@dataclass(frozen=True)
class InverseProbabilityWeighting(BaseOffPolicyEstimator):
    """Inverse probability weighting (IPS), V_IPS = 1/n sum_i min(w_i, lambda_) r_i.

    Unbiased when pi_0 > 0 wherever pi > 0 and ``lambda_`` = inf; clipping the weights at
    ``lambda_`` trades a (downward, for non-negative rewards) bias for variance and makes the
    terms bounded. Horvitz & Thompson 1952; Strehl et al. 2010 (clipping)."""

    lambda_: float = math.inf

    estimator_name = "ipw"

    def __post_init__(self) -> None:
        check_threshold(self.lambda_, name="lambda_", owner=type(self).__name__)

    def clipped_weight(self, inputs: BanditInputs) -> np.ndarray:
        return (
            inputs.weight if math.isinf(self.lambda_) else np.minimum(inputs.weight, self.lambda_)
        )

    def ratio_parts(self, inputs: BanditInputs) -> tuple[RatioPart, ...]:
        return ((self.clipped_weight(inputs) * inputs.reward, None),)

    def term_range(self, reward_range: tuple[float, float]) -> float:
        _needs_finite(self.lambda_, type(self).__name__, "lambda_", "weight clipping")
        low, high = reward_range
        # w r with w in [0, lambda_] lies in [lambda_ min(low, 0), lambda_ max(high, 0)]
        return self.lambda_ * (max(high, 0.0) - min(low, 0.0))


@dataclass(frozen=True)
class SelfNormalizedIPS(BaseOffPolicyEstimator):
    """Self-normalized IPS (SNIPS), V_SNIPS = sum_i w_i r_i / sum_i w_i.

    IPS divided by the sample's mean weight (whose expectation is 1): biased but consistent,
    invariant to a constant scaling of the weights, never outside the range of the rewards,
    usually of much lower variance. Swaminathan & Joachims 2015."""

    estimator_name = "snipw"
    self_normalized = True

    def ratio_parts(self, inputs: BanditInputs) -> tuple[RatioPart, ...]:
        weight = inputs.weight
        return ((weight * inputs.reward, weight),)


class _CorrectedDirectMethod(BaseOffPolicyEstimator):
    """DM plus a weighted correction of the reward model's error at the logged action,
    1/n sum_i [q_pi(x_i) + v_i (r_i - q_hat(x_i, a_i))]; subclasses choose the weights v."""

    requires_estimated_rewards = True

    @abstractmethod
    def correction_weight(self, inputs: BanditInputs) -> np.ndarray:
        """v_i, the weight multiplying the residual r_i - q_hat(x_i, a_i)."""

    @abstractmethod
    def weight_bound(self) -> float:
        """An upper bound of v (raises when there is none)."""

    def ratio_parts(self, inputs: BanditInputs) -> tuple[RatioPart, ...]:
        return ((inputs.q_target + self.correction_weight(inputs) * inputs.residual, None),)

    def term_range(self, reward_range: tuple[float, float]) -> float:
        # q_pi in [low, high] and |v (r - q_hat)| <= bound (high - low)
        return _width(reward_range) * (1 + 2 * self.weight_bound())


@dataclass(frozen=True)
class DoublyRobust(_CorrectedDirectMethod):
    """Doubly robust (DR): DM plus an importance-weighted correction of the reward model's
    error at the logged action,
    V_DR = 1/n sum_i [q_pi(x_i) + min(w_i, lambda_) (r_i - q_hat(x_i, a_i))].

    Unbiased when the propensities are right (and ``lambda_`` = inf) whatever the reward
    model; its variance shrinks as the reward model improves. Clipping at ``lambda_`` bounds
    the terms at the price of a bias. Dudík, Langford & Li 2011; Dudík et al. 2014."""

    lambda_: float = math.inf

    estimator_name = "dr"

    def __post_init__(self) -> None:
        check_threshold(self.lambda_, name="lambda_", owner=type(self).__name__)

    def correction_weight(self, inputs: BanditInputs) -> np.ndarray:
        weight = inputs.weight
        return weight if math.isinf(self.lambda_) else np.minimum(weight, self.lambda_)

    def weight_bound(self) -> float:
        _needs_finite(self.lambda_, type(self).__name__, "lambda_", "weight clipping")
        return self.lambda_


@dataclass(frozen=True)
class SelfNormalizedDR(BaseOffPolicyEstimator):
    """Self-normalized doubly robust (SNDR): DR with the correction's weights divided by their
    sample mean,
    V_SNDR = 1/n sum_i q_pi(x_i) + sum_i w_i (r_i - q_hat(x_i, a_i)) / sum_i w_i.

    Dudík et al. 2014 (DR) with the self-normalization of Swaminathan & Joachims 2015."""

    estimator_name = "sndr"
    requires_estimated_rewards = True
    self_normalized = True

    def ratio_parts(self, inputs: BanditInputs) -> tuple[RatioPart, ...]:
        weight = inputs.weight
        return ((inputs.q_target, None), (weight * inputs.residual, weight))


@dataclass(frozen=True)
class SwitchDR(_CorrectedDirectMethod):
    """Switch doubly robust: DR on the rows whose weight is at most ``tau``, DM on the others,
    V_Switch = 1/n sum_i [q_pi(x_i) + 1{w_i <= tau} w_i (r_i - q_hat(x_i, a_i))].

    ``tau`` = inf is DR, ``tau`` = 0 is DM. This is Open Bandit Pipeline's row-wise switch;
    Wang et al. switch per action, between IPS and DM. Wang, Agarwal & Dudík 2017."""

    tau: float = math.inf

    estimator_name = "switch-dr"

    def __post_init__(self) -> None:
        check_threshold(self.tau, name="tau", owner=type(self).__name__)

    def correction_weight(self, inputs: BanditInputs) -> np.ndarray:
        weight = inputs.weight
        return weight if math.isinf(self.tau) else np.where(weight <= self.tau, weight, 0.0)

    def weight_bound(self) -> float:
        _needs_finite(self.tau, type(self).__name__, "tau", "the switching threshold")
        return self.tau


@dataclass(frozen=True)
class DoublyRobustWithShrinkage(_CorrectedDirectMethod):
    """Doubly robust with optimistic shrinkage (DRos): DR whose weights are shrunk to
    w' = lambda_ w / (w^2 + lambda_),
    V_DRos = 1/n sum_i [q_pi(x_i) + w'_i (r_i - q_hat(x_i, a_i))].

    w' <= sqrt(lambda_) / 2, so the correction stays bounded; ``lambda_`` -> inf gives DR and
    ``lambda_`` = 0 gives DM. Su, Dimakopoulou, Krishnamurthy & Dudík 2020."""

    lambda_: float = math.inf

    estimator_name = "dr-os"

    def __post_init__(self) -> None:
        check_threshold(self.lambda_, name="lambda_", owner=type(self).__name__)

    def correction_weight(self, inputs: BanditInputs) -> np.ndarray:
        weight = inputs.weight
        if math.isinf(self.lambda_):
            return weight
        if self.lambda_ == 0:  # the formula's 0/0 where w = 0: the limit is 0 everywhere
            return np.zeros_like(weight)
        return self.lambda_ * weight / (weight**2 + self.lambda_)

    def weight_bound(self) -> float:
        _needs_finite(self.lambda_, type(self).__name__, "lambda_", "shrinkage")
        return math.sqrt(self.lambda_) / 2


SINGLE_STEP_ESTIMATORS: tuple[type[BaseOffPolicyEstimator], ...] = (
    DirectMethod,
    InverseProbabilityWeighting,
    SelfNormalizedIPS,
    DoublyRobust,
    SelfNormalizedDR,
    SwitchDR,
    DoublyRobustWithShrinkage,
)
