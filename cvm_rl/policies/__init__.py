"""Offer and channel policies behind one protocol (:class:`Policy`)."""

from cvm_rl.policies.bandits import (
    EpsilonGreedyPolicy,
    LinearBandit,
    LinTSPolicy,
    LinUCBPolicy,
    train_bandit,
)
from cvm_rl.policies.base import Policy, sample_actions
from cvm_rl.policies.baselines import (
    DEFAULT_RULES,
    NoContactPolicy,
    RandomPolicy,
    Rule,
    RuleBasedPolicy,
)
from cvm_rl.policies.features import FeatureTransform

__all__ = [
    "DEFAULT_RULES",
    "EpsilonGreedyPolicy",
    "FeatureTransform",
    "LinTSPolicy",
    "LinUCBPolicy",
    "LinearBandit",
    "NoContactPolicy",
    "Policy",
    "RandomPolicy",
    "Rule",
    "RuleBasedPolicy",
    "sample_actions",
    "train_bandit",
]
