"""The single-customer gymnasium env ``cvm/CustomerLifecycle-v0``."""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from helpers import assert_same
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from simulator import ENV_ID, CustomerLifecycleEnv, MaskedActionError, Population
from simulator.config import STAGES, Scenario
from simulator.core import observation_feature_names

LATENT_KEYS = {
    "purchase_rate",
    "dropout_prob",
    "spend_rate",
    "alive",
    "fatigue",
    "pull_forward_debt",
    "retention_multiplier",
    "segment",
    "present",
}


def _rollout(env: gym.Env, seed: int, action_seed: int, steps: int | None = None) -> list[tuple]:
    """Reset with ``seed`` and step with uniformly random actions (masked ones included)."""
    rng = np.random.default_rng(action_seed)
    obs, info = env.reset(seed=seed)
    out: list[tuple] = [(obs, 0.0, False, False, info)]
    n = env.action_space.n
    horizon = env.unwrapped.scenario.horizon_weeks
    for _ in range(horizon if steps is None else steps):
        out.append(env.step(int(rng.integers(0, n))))
    return out


# ----------------------------------------------------------------------------- checkers


def test_registered_and_made() -> None:
    env = gym.make(ENV_ID)
    assert isinstance(env.unwrapped, CustomerLifecycleEnv)
    assert env.spec is not None and env.spec.id == ENV_ID
    env.close()


def test_gymnasium_env_checker_passes_without_warnings() -> None:
    env = gym.make(ENV_ID)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env.unwrapped)
    env.close()


def test_sb3_env_checker_passes_without_warnings() -> None:
    env = gym.make(ENV_ID)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_check_env(env, warn=True)
    env.close()


def test_full_episode_through_passive_checker_without_warnings() -> None:
    env = gym.make(ENV_ID)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        steps = _rollout(env, seed=3, action_seed=3)
    assert len(steps) == 53
    env.close()


# ----------------------------------------------------------------------------- spaces


def test_spaces_follow_the_scenario(default_scenario: Scenario) -> None:
    env = CustomerLifecycleEnv()
    names = observation_feature_names(default_scenario)
    assert env.observation_space.shape == (len(names),)
    assert env.observation_space.dtype == np.float32
    assert isinstance(env.action_space, gym.spaces.Discrete)
    assert env.action_space.n == default_scenario.n_actions
    # Expected dimension, counted from the scenario independently of the feature list.
    sc = default_scenario
    attributes = sum(len(a.members) for a in sc.attributes.values())
    assert len(names) == 4 + 3 * len(sc.channels) + len(STAGES) + attributes + 3


def test_observations_stay_in_space_over_random_rollouts(default_scenario: Scenario) -> None:
    env = CustomerLifecycleEnv(default_scenario)
    space = env.observation_space
    progress_col = len(observation_feature_names(default_scenario)) - 1
    for episode in range(25):
        for t, (obs, reward, *_rest, _info) in enumerate(
            _rollout(env, seed=100 + episode, action_seed=episode)
        ):
            assert obs.dtype == np.float32 and obs.shape == space.shape
            assert space.contains(obs), (episode, t, obs)
            assert np.isfinite(reward)
            assert obs[progress_col] == pytest.approx(t / default_scenario.horizon_weeks)


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_trajectory() -> None:
    env_a, env_b = gym.make(ENV_ID), gym.make(ENV_ID)
    run_a = _rollout(env_a, seed=7, action_seed=11)
    run_b = _rollout(env_b, seed=7, action_seed=11)
    assert len(run_a) == len(run_b) == 53
    for t, (step_a, step_b) in enumerate(zip(run_a, run_b, strict=True)):
        for part_a, part_b in zip(step_a, step_b, strict=True):
            assert_same(part_a, part_b, path=f"step {t}")
    # The same env re-seeded reproduces too (no state leaks across resets).
    run_c = _rollout(env_a, seed=7, action_seed=11)
    for step_a, step_c in zip(run_a, run_c, strict=True):
        assert_same(step_a[0], step_c[0])
        assert_same(step_a[4], step_c[4])


def test_different_seeds_different_trajectories() -> None:
    env = gym.make(ENV_ID)
    trajectories = set()
    for seed in range(6):
        run = _rollout(env, seed=seed, action_seed=0)
        obs = np.stack([step[0] for step in run])
        rewards = np.array([step[1] for step in run])
        trajectories.add(obs.tobytes() + rewards.tobytes())
    assert len(trajectories) == 6


def test_oracle_info_does_not_change_dynamics() -> None:
    plain = _rollout(CustomerLifecycleEnv(), seed=5, action_seed=5)
    oracle = _rollout(CustomerLifecycleEnv(oracle_info=True), seed=5, action_seed=5)
    for step_p, step_o in zip(plain, oracle, strict=True):
        assert_same(step_p[0], step_o[0])
        assert step_p[1] == step_o[1]
        assert {k: v for k, v in step_o[4].items() if k != "oracle"}.keys() == step_p[4].keys()


# ----------------------------------------------------------------------------- episode end


@pytest.mark.parametrize("horizon", [1, 8, 52])
def test_truncates_exactly_at_horizon_and_never_terminates(
    default_scenario: Scenario, horizon: int
) -> None:
    sc = default_scenario.with_overrides({"horizon_weeks": horizon})
    env = gym.make(ENV_ID, scenario=sc)
    rng = np.random.default_rng(horizon)
    for episode in range(3):
        env.reset(seed=episode)
        for week in range(1, horizon + 1):
            _obs, _r, terminated, truncated, _info = env.step(int(rng.integers(0, sc.n_actions)))
            assert terminated is False
            assert truncated is (week == horizon)
            assert isinstance(truncated, bool)
        with pytest.raises(gym.error.ResetNeeded):
            env.step(0)
        # Still refused: nothing moved on.
        with pytest.raises(gym.error.ResetNeeded):
            env.step(0)
    env.close()


def test_step_before_reset_needs_reset() -> None:
    with pytest.raises(gym.error.ResetNeeded):
        CustomerLifecycleEnv().step(0)
    with pytest.raises(gym.error.ResetNeeded):
        CustomerLifecycleEnv().action_masks()


def test_reset_after_truncation_starts_over(default_scenario: Scenario) -> None:
    sc = default_scenario.with_overrides({"horizon_weeks": 3})
    env = CustomerLifecycleEnv(sc)
    env.reset(seed=0)
    for _ in range(3):
        env.step(0)
    env.reset(seed=1)
    assert env.population.week == 0
    *_, truncated, _info = env.step(0)
    assert not truncated


# ----------------------------------------------------------------------------- actions


@pytest.mark.parametrize(
    "action", [-1, "n_actions", 1.5, "a", None, 2.0, np.array([1, 2]), np.float64(3.5)]
)
def test_invalid_action_raises_value_error_naming_it(action: Any) -> None:
    env = CustomerLifecycleEnv()
    if isinstance(action, str) and action == "n_actions":
        action = env.action_space.n
    obs, _ = env.reset(seed=0)
    with pytest.raises(ValueError) as info:
        env.step(action)
    assert repr(action) in str(info.value)
    assert str(env.action_space.n) in str(info.value)
    # The rejected step did not advance the customer.
    assert env.population.week == 0
    np.testing.assert_array_equal(env.population.observe()[0], obs)


@pytest.mark.parametrize("action", [3, np.int64(3), np.int32(3), np.array(3)])
def test_integer_like_actions_accepted(action: Any) -> None:
    env = CustomerLifecycleEnv()
    env.reset(seed=0)
    *_, info = env.step(action)
    assert env.population.week == 1
    assert info["executed_action"] in (0, 3)


def test_action_mask_in_info(default_scenario: Scenario) -> None:
    env = gym.make(ENV_ID)
    rng = np.random.default_rng(0)
    n = default_scenario.n_actions
    seen_masked = seen_contact = 0
    for episode in range(10):
        _obs, info = env.reset(seed=episode)
        for _ in range(default_scenario.horizon_weeks):
            mask = info["action_mask"]
            assert mask.dtype == np.bool_ and mask.shape == (n,)
            assert mask[0]
            np.testing.assert_array_equal(mask, env.unwrapped.action_masks())
            action = int(rng.integers(0, n))
            _obs, _r, _te, _tr, info = env.step(action)
            # The pre-step mask decides what was executed.
            if mask[action]:
                assert info["executed_action"] == action
                assert not info["masked_action"]
                seen_contact += action > 0
            else:
                assert info["executed_action"] == 0
                assert info["masked_action"]
                assert info["contact_cost"] == 0.0
                seen_masked += 1
    assert seen_masked > 0 and seen_contact > 0


def test_action_masks_returns_a_copy() -> None:
    env = CustomerLifecycleEnv()
    _obs, info = env.reset(seed=0)
    mask = env.action_masks()
    mask[:] = False
    info["action_mask"][:] = False
    assert env.action_masks()[0]
    np.testing.assert_array_equal(env.action_masks(), env.population.action_mask()[0])


def test_masked_actions_total_counts(default_scenario: Scenario) -> None:
    env = CustomerLifecycleEnv()
    _obs, info = env.reset(seed=1)
    rng = np.random.default_rng(1)
    count = 0
    for _ in range(default_scenario.horizon_weeks):
        action = int(rng.integers(0, default_scenario.n_actions))
        count += not info["action_mask"][action]
        _obs, _r, _te, _tr, info = env.step(action)
        assert info["masked_actions_total"] == count


def test_strict_masking_raises_and_keeps_state() -> None:
    env = CustomerLifecycleEnv(strict_masking=True)
    for seed in range(50):
        obs, info = env.reset(seed=seed)
        if not info["action_mask"].all():
            break
    else:  # pragma: no cover - every contact allowed for 50 customers in a row
        pytest.fail("no customer with a masked action found")
    masked = int(np.flatnonzero(~info["action_mask"])[0])
    rng_state = env.np_random.bit_generator.state
    with pytest.raises(MaskedActionError, match=f"action {masked} is not eligible"):
        env.step(masked)
    assert env.population.week == 0
    assert env.np_random.bit_generator.state == rng_state
    np.testing.assert_array_equal(env.population.observe()[0], obs)
    # An eligible action still works afterwards.
    *_, info = env.step(0)
    assert env.population.week == 1 and info["executed_action"] == 0


# ----------------------------------------------------------------------------- latent state


def test_info_has_no_oracle_by_default() -> None:
    env = gym.make(ENV_ID)
    _obs, info = env.reset(seed=0)
    assert "oracle" not in info
    for _ in range(5):
        *_, info = env.step(0)
        assert "oracle" not in info
        assert not LATENT_KEYS & info.keys()


def test_oracle_info_exposes_latent_state() -> None:
    env = gym.make(ENV_ID, oracle_info=True)
    _obs, info = env.reset(seed=0)
    assert info["oracle"].keys() >= LATENT_KEYS
    rng = np.random.default_rng(0)
    for _ in range(10):
        *_, info = env.step(int(rng.integers(0, env.action_space.n)))
        oracle = info["oracle"]
        assert oracle.keys() >= LATENT_KEYS | {"dropped_out"}
        assert oracle["purchase_rate"] >= 0
        assert 0 <= oracle["dropout_prob"] <= 1
        assert isinstance(bool(oracle["alive"]), bool)
        assert np.shape(oracle["fatigue"]) == (len(env.unwrapped.scenario.channels),)
        direct = env.unwrapped.oracle_state()
        for key in LATENT_KEYS:
            np.testing.assert_array_equal(oracle[key], direct[key])


def test_observation_does_not_depend_on_latent_state(default_scenario: Scenario) -> None:
    rng = np.random.default_rng(0)
    pop = Population.create(default_scenario, 500, rng)
    for _ in range(5):
        pop.step(rng.integers(0, default_scenario.n_actions, size=500))
    before = pop.observe()
    mask_before = pop.action_mask().copy()
    pop.lam *= 50.0
    pop.p_drop[:] = rng.random(500)
    pop.nu *= 0.1
    pop.alive[:] = ~pop.alive
    pop.fatigue[:] = 5.0
    pop.pf_debt[:] = 3.0
    pop.retention_left[:] = 10
    pop._mask_cache = None
    np.testing.assert_array_equal(pop.observe(), before)
    np.testing.assert_array_equal(pop.action_mask(), mask_before)
    latent_words = {"rate", "alive", "fatigue", "dropout", "debt", "lam", "nu", "latent"}
    for name in observation_feature_names(default_scenario):
        assert not latent_words & set(name.split("_")), name
