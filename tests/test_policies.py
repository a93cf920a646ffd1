"""Baseline policies: the protocol's guarantees and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from cvm_rl.policies import NoContactPolicy, RandomPolicy, Rule, RuleBasedPolicy, sample_actions
from simulator.config import load_scenario
from simulator.vector_env import CustomerLifecycleVectorEnv

SCENARIO = load_scenario("default")
POLICIES = [NoContactPolicy, RandomPolicy, RuleBasedPolicy]


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


@pytest.mark.parametrize("policy_cls", POLICIES)
def test_probabilities_respect_mask_and_sum_to_one(policy_cls, batches) -> None:
    policy = policy_cls(SCENARIO, seed=0)
    for obs, mask in batches:
        probs = policy.action_probabilities(obs, mask)
        assert probs.shape == mask.shape
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
        assert np.all(probs[~mask] == 0.0)
        actions, propensities = policy.act(obs, mask)
        assert mask[np.arange(len(actions)), actions].all()
        np.testing.assert_array_equal(propensities, probs[np.arange(len(actions)), actions])


def test_random_policy_sampling_frequencies_match_propensities(batches) -> None:
    obs, mask = batches[-1]
    row = int(np.argmax(mask.sum(axis=1)))  # a customer with many eligible actions
    reps = 20_000
    policy = RandomPolicy(SCENARIO, seed=3)
    actions, _ = policy.act(
        np.repeat(obs[row : row + 1], reps, 0), np.repeat(mask[row : row + 1], reps, 0)
    )
    freq = np.bincount(actions, minlength=SCENARIO.n_actions) / reps
    expected = mask[row] / mask[row].sum()
    # 5 binomial standard errors per action.
    tol = 5 * np.sqrt(expected * (1 - expected) / reps) + 1e-12
    assert np.all(np.abs(freq - expected) <= tol)


def test_sample_actions_follows_arbitrary_probabilities() -> None:
    probs = np.tile([0.5, 0.0, 0.3, 0.2], (50_000, 1))
    actions = sample_actions(probs, np.random.default_rng(1))
    freq = np.bincount(actions, minlength=4) / len(actions)
    assert freq[1] == 0.0
    np.testing.assert_allclose(freq, [0.5, 0.0, 0.3, 0.2], atol=0.01)


@pytest.mark.parametrize("policy_cls", POLICIES)
def test_seeded_policies_are_reproducible(policy_cls, batches) -> None:
    obs, mask = batches[3]
    first = policy_cls(SCENARIO, seed=11).act(obs, mask)[0]
    np.testing.assert_array_equal(first, policy_cls(SCENARIO, seed=11).act(obs, mask)[0])


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
        ({"rules": [Rule("new", "none", ("email",), segment="vip")]}, r"rules\[0\]\.segment"),
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
        ((5, 30), (4, 25), bool, "mask must have shape"),
        ((5, 30), (5, 25), np.int8, "mask must be boolean"),
    ],
)
def test_bad_batches_are_rejected(obs_shape, mask_shape, mask_dtype, match) -> None:
    with pytest.raises(ValueError, match=match):
        RandomPolicy(SCENARIO).action_probabilities(
            np.zeros(obs_shape, np.float32), np.ones(mask_shape, dtype=mask_dtype)
        )


def test_nan_observations_and_empty_mask_rows_are_rejected() -> None:
    obs = np.zeros((2, 30), np.float32)
    mask = np.ones((2, 25), dtype=bool)
    with pytest.raises(ValueError, match="obs must be finite"):
        RandomPolicy(SCENARIO).action_probabilities(np.where(obs == 0, np.nan, obs), mask)
    mask[1] = False
    with pytest.raises(ValueError, match="mask: every row"):
        RandomPolicy(SCENARIO).action_probabilities(obs, mask)
