"""Offer and channel policies behind one protocol (:class:`Policy`)."""

from cvm_rl.policies.bandits import (
    EpsilonGreedyPolicy,
    LinearBandit,
    LinTSPolicy,
    LinUCBPolicy,
)
from cvm_rl.policies.base import Policy, sample_actions
from cvm_rl.policies.baselines import (
    DEFAULT_RULES,
    EpsilonMixturePolicy,
    ExplorationPolicy,
    NoContactPolicy,
    RandomPolicy,
    Rule,
    RuleBasedPolicy,
)
from cvm_rl.policies.features import FeatureTransform
from cvm_rl.policies.fitted_q import FittedQ, Transitions, fit_q
from cvm_rl.policies.greedy import GreedyUpliftPolicy
from cvm_rl.policies.mlp import MLPPolicy

__all__ = [
    "DEFAULT_RULES",
    "EpsilonGreedyPolicy",
    "EpsilonMixturePolicy",
    "ExplorationPolicy",
    "FeatureTransform",
    "FittedQ",
    "GreedyUpliftPolicy",
    "LinTSPolicy",
    "LinUCBPolicy",
    "LinearBandit",
    "MLPPolicy",
    "NoContactPolicy",
    "Policy",
    "RandomPolicy",
    "Rule",
    "RuleBasedPolicy",
    "Transitions",
    "fit_q",
    "sample_actions",
]
