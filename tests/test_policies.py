"""The policy protocol's guarantees for every policy, and the baselines' behaviour."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import numpy as np
import pytest

from cvm_rl.policies import (
    EpsilonGreedyPolicy,
    ExplorationPolicy,
    GreedyUpliftPolicy,
    LinTSPolicy,
    LinUCBPolicy,
    MLPPolicy,
    NoContactPolicy,
    Policy,
    RandomPolicy,
    Rule,
    RuleBasedPolicy,
    sample_actions,
)
from cvm_rl.policies.oracle import OraclePolicy
from cvm_rl.training import train_bandit
from simulator.config import load_scenario
from simulator.core import Population, observation_feature_names
from simulator.vector_env import CustomerLifecycleVectorEnv

SCENARIO = load_scenario("default")
N_FEATURES = len(observation_feature_names(SCENARIO))


def _bandit(cls: type, seed: int | None, **kwargs: float) -> Policy:
    policy = cls(SCENARIO, seed=seed, **kwargs)
    train_bandit(policy, SCENARIO, n_customers=500, weeks=3, seed=1)
    return policy


def _mlp(seed: int | None, **kwargs: float | str) -> MLPPolicy:
    """Random weights large enough to give uneven probabilities."""
    rng = np.random.default_rng(7)
    dims = [len(observation_feature_names(SCENARIO)), 16, SCENARIO.n_actions]
    weights = [rng.normal(0, 1.5, (a, b)).astype(np.float32) for a, b in pairwise(dims)]
    biases = [rng.normal(0, 0.5, b).astype(np.float32) for b in dims[1:]]
    return MLPPolicy(SCENARIO, weights, biases, seed=seed, **kwargs)  # type: ignore[arg-type]


def _oracle(seed: int | None) -> OraclePolicy:
    policy = OraclePolicy(SCENARIO, seed=seed)
    policy.bind(Population.create(SCENARIO, 3000, np.random.default_rng(0)))
    return policy


_GREEDY_STATE = GreedyUpliftPolicy.fit_from_simulation(
    SCENARIO, n_customers=500, weeks=6
).state_dict()

FACTORIES: dict[str, Callable[[int | None], Policy]] = {
    "no_contact": lambda seed: NoContactPolicy(SCENARIO, seed=seed),
    "random": lambda seed: RandomPolicy(SCENARIO, seed=seed),
    "rules": lambda seed: RuleBasedPolicy(SCENARIO, seed=seed),
    "exploration": lambda seed: ExplorationPolicy(SCENARIO, seed=seed),
    "greedy": lambda seed: GreedyUpliftPolicy.from_state_dict(_GREEDY_STATE, SCENARIO, seed=seed),
    "linucb": lambda seed: _bandit(LinUCBPolicy, seed),
    "lints": lambda seed: _bandit(LinTSPolicy, seed),
    "egreedy": lambda seed: _bandit(EpsilonGreedyPolicy, seed, epsilon=0.3),
    "mlp_softmax": lambda seed: _mlp(seed),
    "mlp_q_epsilon": lambda seed: _mlp(seed, head="q_values", activation="relu", epsilon=0.2),
    "oracle": _oracle,
}
"""Every policy family, built small; each test below runs on all of them."""
STOCHASTIC = ["random", "exploration", "egreedy", "mlp_softmax", "mlp_q_epsilon"]
"""Policies whose probabilities are exact and spread over several actions (LinTS's
propensities are Monte Carlo estimates; its own test covers them)."""


@pytest.fixture(scope="module")
def batches() -> list[tuple[np.ndarray, np.ndarray]]:
    """Observations and masks along a random-action rollout (masks get varied)."""
    env = CustomerLifecycleVectorEnv(3000, SCENARIO)
    obs, info = env.reset(seed=0)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(12):
        out.append((obs, info["action_mask"].copy()))
        obs, _, _, _, info = env.step(rng.integers(0, SCENARIO.n_actions, size=env.num_envs))
    return out


@pytest.mark.parametrize("name", list(FACTORIES))
def test_probabilities_respect_mask_and_sum_to_one(name, batches) -> None:
    policy = FACTORIES[name](0)
    for obs, mask in batches:
        probs = policy.action_probabilities(obs, mask)
        assert probs.shape == mask.shape
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
        assert np.all(probs[~mask] == 0.0)
        actions, propensities = policy.act(obs, mask)
        assert mask[np.arange(len(actions)), actions].all()
        if name != "lints":  # LinTS serves Monte Carlo propensities (tested in test_bandits)
            np.testing.assert_allclose(
                propensities, probs[np.arange(len(actions)), actions], rtol=1e-6
            )
        assert np.all(propensities > 0)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_sampling_frequencies_match_propensities(name, batches) -> None:
    obs, mask = batches[-1]
    row = int(np.argmax(mask.sum(axis=1)))  # a customer with many eligible actions
    reps = 20_000
    policy = FACTORIES[name](3)
    rows_obs = np.repeat(obs[row : row + 1], reps, 0)
    rows_mask = np.repeat(mask[row : row + 1], reps, 0)
    expected = policy.action_probabilities(rows_obs[:1], rows_mask[:1])[0]
    assert np.count_nonzero(expected) >= 2
    actions, propensities = policy.act(rows_obs, rows_mask)
    freq = np.bincount(actions, minlength=SCENARIO.n_actions) / reps
    # 5 binomial standard errors per action.
    tol = 5 * np.sqrt(expected * (1 - expected) / reps) + 1e-12
    assert np.all(np.abs(freq - expected) <= tol)
    np.testing.assert_allclose(propensities, expected[actions], rtol=1e-6)


def test_sample_actions_follows_arbitrary_probabilities() -> None:
    probs = np.tile([0.5, 0.0, 0.3, 0.2], (50_000, 1))
    actions = sample_actions(probs, np.random.default_rng(1))
    freq = np.bincount(actions, minlength=4) / len(actions)
    assert freq[1] == 0.0
    np.testing.assert_allclose(freq, [0.5, 0.0, 0.3, 0.2], atol=0.01)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_seeded_policies_are_reproducible(name, batches) -> None:
    obs, mask = batches[3]
    first = FACTORIES[name](11).act(obs, mask)
    second = FACTORIES[name](11).act(obs, mask)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    if name in STOCHASTIC:
        other = FACTORIES[name](12).act(obs, mask)[0]
        assert np.any(other != first[0])


def test_rules_fire_by_stage(batches) -> None:
    obs, mask = batches[0]
    policy = RuleBasedPolicy(SCENARIO)
    actions = policy.act(obs, mask)[0]
    names = SCENARIO.action_names()
    at_risk = policy.feature(obs, "stage_at_risk") > 0.5
    fired = at_risk & (actions > 0)
    assert fired.any()
    assert all(names[a].startswith("discount_10@") for a in actions[fired])
    churned = policy.feature(obs, "stage_churned") > 0.5
    assert np.all(actions[churned] == 0)  # no rule for churned customers


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rules": [Rule("sleeping", "none", ("email",))]}, r"rules\[0\]\.stage"),
        ({"rules": [Rule("new", "discount_99", ("email",))]}, r"rules\[0\]\.offer"),
        ({"rules": [Rule("new", "none", ("fax",))]}, r"rules\[0\]\.channels"),
        ({"rules": [Rule("new", "none", ())]}, r"rules\[0\]\.channels"),
        ({"rules": [Rule("new", "none", ("email",), when=("vip",))]}, r"rules\[0\]\.when"),
        (
            {"rules": [Rule("new", "none", ("email",), when=("segment_loyalists",))]},
            r"rules\[0\]\.when: \['segment_loyalists'\] are not flag or one-hot",
        ),
        (
            {"rules": [Rule("new", "none", ("email",), when=("frequency",))]},
            r"rules\[0\]\.when: \['frequency'\]",
        ),
        ({"min_weeks_between_contacts": -1}, "min_weeks_between_contacts"),
    ],
)
def test_rule_policy_rejects_bad_configuration(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        RuleBasedPolicy(SCENARIO, **kwargs)


@pytest.mark.parametrize(
    ("obs_shape", "mask_shape", "mask_dtype", "match"),
    [
        ((5, 3), (5, 25), bool, "obs must have shape"),
        ((5, N_FEATURES), (4, 25), bool, "mask must have shape"),
        ((5, N_FEATURES), (5, 25), np.int8, "mask must be boolean"),
    ],
)
def test_bad_batches_are_rejected(obs_shape, mask_shape, mask_dtype, match) -> None:
    with pytest.raises(ValueError, match=match):
        RandomPolicy(SCENARIO).action_probabilities(
            np.zeros(obs_shape, np.float32), np.ones(mask_shape, dtype=mask_dtype)
        )


def test_nan_observations_and_empty_mask_rows_are_rejected() -> None:
    obs = np.zeros((2, N_FEATURES), np.float32)
    mask = np.ones((2, 25), dtype=bool)
    with pytest.raises(ValueError, match="obs must be finite"):
        RandomPolicy(SCENARIO).action_probabilities(np.where(obs == 0, np.nan, obs), mask)
    mask[1] = False
    with pytest.raises(ValueError, match="mask: every row"):
        RandomPolicy(SCENARIO).action_probabilities(obs, mask)
