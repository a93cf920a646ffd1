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
from cvm_rl.policies.greedy import (
    ExplorationPolicy,
    GreedyUpliftPolicy,
    LoggedData,
    collect_logged_data,
)
from cvm_rl.policies.mlp import MLPPolicy

__all__ = [
    "DEFAULT_RULES",
    "EpsilonGreedyPolicy",
    "ExplorationPolicy",
    "FeatureTransform",
    "GreedyUpliftPolicy",
    "LinTSPolicy",
    "LinUCBPolicy",
    "LinearBandit",
    "LoggedData",
    "MLPPolicy",
    "NoContactPolicy",
    "Policy",
    "RandomPolicy",
    "Rule",
    "RuleBasedPolicy",
    "collect_logged_data",
    "sample_actions",
    "train_bandit",
]
