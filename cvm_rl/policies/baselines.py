"""Baselines: no contact, uniform random, and the rule-based campaign marketers write today."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cvm_rl.policies.base import Policy, check_number, one_hot
from simulator.config import STAGES, Scenario
from simulator.observation import observation_features


class NoContactPolicy(Policy):
    name = "no_contact"

    def _probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return one_hot(np.zeros(len(obs), dtype=np.int64), self.n_actions)


class RandomPolicy(Policy):
    """Uniform over the eligible actions (no contact included)."""

    name = "random"

    def _probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return mask / mask.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Rule:
    """Send ``offer`` to customers in ``stage`` (optionally only those with every flag or
    one-hot feature in ``when`` set, e.g. ``("acquisition_source_coupon_site",)``, and a
    minimum number of repeat purchases) through the first eligible channel of ``channels``."""

    stage: str
    offer: str
    channels: tuple[str, ...]
    when: tuple[str, ...] = ()
    min_frequency: int = 0


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("new", "none", ("email", "push")),  # welcome series
    Rule("active", "loyalty_bonus", ("push", "email"), min_frequency=3),  # best customers
    Rule("at_risk", "discount_10", ("email", "sms")),  # win-back before they lapse
    Rule("lapsed", "discount_20", ("email", "sms")),
    Rule("reactivated", "none", ("email",)),
    Rule("prospect", "discount_10", ("email",)),  # first-purchase incentive
)


class RuleBasedPolicy(Policy):
    """An RFM-style campaign calendar: the first matching rule fires, at most once every
    ``min_weeks_between_contacts`` weeks per customer; everyone else gets no contact."""

    name = "rules"

    def __init__(
        self,
        scenario: Scenario,
        *,
        rules: Sequence[Rule] = DEFAULT_RULES,
        min_weeks_between_contacts: int = 4,
        seed: int | None = None,
    ) -> None:
        super().__init__(scenario, seed=seed)
        if min_weeks_between_contacts < 0:
            raise ValueError(
                f"min_weeks_between_contacts must be >= 0, got {min_weeks_between_contacts}"
            )
        conditions = {
            f.name for f in observation_features(scenario) if f.encoding in ("flag", "one-hot")
        }
        for i, rule in enumerate(rules):
            where = f"rules[{i}]"
            if rule.stage not in STAGES:
                raise ValueError(f"{where}.stage: unknown stage {rule.stage!r}; allowed {STAGES}")
            if rule.offer not in scenario.offers:
                raise ValueError(
                    f"{where}.offer: unknown offer {rule.offer!r}; allowed {scenario.offer_names}"
                )
            bad = [c for c in rule.channels if c not in scenario.channels]
            if bad or not rule.channels:
                raise ValueError(
                    f"{where}.channels: unknown or empty {list(rule.channels)}; "
                    f"allowed {scenario.channel_names}"
                )
            unknown = [name for name in rule.when if name not in conditions]
            if unknown:
                # Segments are latent unless the scenario observes them: then segment_* apply.
                raise ValueError(
                    f"{where}.when: {unknown} are not flag or one-hot features of scenario "
                    f"{scenario.name!r}; allowed {sorted(conditions)}"
                )
        self.rules = tuple(rules)
        self.min_weeks_between_contacts = min_weeks_between_contacts
        names = scenario.action_names()
        self._rule_actions = [
            [names.index(f"{rule.offer}@{ch}") for ch in rule.channels] for rule in self.rules
        ]

    def _probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        n = len(obs)
        actions = np.zeros(n, dtype=np.int64)
        decided = np.zeros(n, dtype=bool)
        since = np.min(
            [self.feature(obs, f"weeks_since_contact_{c}") for c in self.scenario.channels], axis=0
        )
        decided |= since < self.min_weeks_between_contacts
        for rule, candidates in zip(self.rules, self._rule_actions, strict=True):
            match = ~decided & (self.feature(obs, f"stage_{rule.stage}") > 0.5)
            for name in rule.when:
                match &= self.feature(obs, name) > 0.5
            if rule.min_frequency:
                match &= self.feature(obs, "frequency") >= rule.min_frequency
            for action in candidates:
                take = match & mask[:, action]
                actions[take] = action
                match &= ~take
                decided |= take
        probs = one_hot(actions, self.n_actions)
        # Where no contact is not allowed (the caller requires one) and no rule picked an
        # eligible action, spread over the eligible actions rather than break the mask.
        stuck = ~mask[np.arange(n), actions]
        if stuck.any():
            probs[stuck] = mask[stuck] / mask[stuck].sum(axis=1, keepdims=True)
        return probs


class ExplorationPolicy(Policy):
    """Randomized logging policy: no contact with probability ``no_contact_share``, otherwise
    uniform over the eligible contacts (all mass on no contact when none is eligible, uniform
    over the contacts when no contact is not eligible)."""

    name = "exploration"

    def __init__(
        self, scenario: Scenario, *, no_contact_share: float = 0.5, seed: int | None = None
    ) -> None:
        super().__init__(scenario, seed=seed)
        self.no_contact_share = check_number(
            "no_contact_share", no_contact_share, low=0.0, strict=False, high=1.0
        )

    def _probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        contacts = mask.copy()
        contacts[:, 0] = False
        n_contacts = contacts.sum(axis=1, keepdims=True)
        share = np.where(mask[:, :1], self.no_contact_share, 0.0)
        share = np.where(n_contacts > 0, share, 1.0)
        probs = contacts * ((1.0 - share) / np.maximum(n_contacts, 1))
        probs[:, 0] = share[:, 0]
        return probs


class EpsilonMixturePolicy(Policy):
    """``(1 - epsilon) * base + epsilon * uniform over the eligible actions``: a logging policy
    that mostly follows ``base`` and gives every eligible action some probability (the
    support off-policy evaluation needs). Its name is ``{base.name}+eps{epsilon}``."""

    def __init__(
        self, scenario: Scenario, base: Policy, epsilon: float, *, seed: int | None = None
    ) -> None:
        super().__init__(scenario, seed=seed)
        if base.feature_names != self.feature_names or base.n_actions != self.n_actions:
            raise ValueError("base: its features or actions differ from the scenario's")
        self.base = base
        self.epsilon = check_number("epsilon", epsilon, low=0.0, strict=False, high=1.0)
        self.name = f"{base.name}+eps{self.epsilon:g}"
        self.monte_carlo_probabilities = base.monte_carlo_probabilities

    def seed(self, seed: int | None) -> None:
        super().seed(seed)
        self.base.seed(seed)

    def _probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        uniform = mask / mask.sum(axis=1, keepdims=True)
        return (1.0 - self.epsilon) * self.base.action_probabilities(obs, mask) + (
            self.epsilon * uniform
        )
