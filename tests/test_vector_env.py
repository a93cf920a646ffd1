"""The native vector env behind ``gym.make_vec(..., vectorization_mode="vector_entry_point")``."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from helpers import assert_same

from simulator import ENV_ID, CustomerLifecycleEnv, CustomerLifecycleVectorEnv
from simulator.config import Scenario, scenario_from_mapping
from simulator.core import observation_feature_names
from simulator.spaces import observation_space

STEP_INFO_KEYS = {
    "action_mask",
    "stage",
    "executed_action",
    "masked_action",
    "budget_refused",
    "purchases",
    "revenue",
    "margin",
    "discount_cost",
    "contact_cost",
    "opted_out",
}


def _make(num_envs: int, **kwargs: Any) -> CustomerLifecycleVectorEnv:
    venv = gym.make_vec(
        ENV_ID, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs
    )
    assert isinstance(venv, CustomerLifecycleVectorEnv)
    return venv


def _rollout(venv: CustomerLifecycleVectorEnv, seed: int, action_seed: int) -> list[tuple]:
    rng = np.random.default_rng(action_seed)
    n, a = venv.num_envs, venv.single_action_space.n
    obs, info = venv.reset(seed=seed)
    out: list[tuple] = [(obs, None, None, None, info)]
    for _ in range(venv.scenario.horizon_weeks):
        out.append(venv.step(rng.integers(0, a, size=n)))
    return out


# ----------------------------------------------------------------------------- construction


def test_make_vec_returns_native_vector_env(default_scenario: Scenario) -> None:
    venv = _make(7)
    assert type(venv) is CustomerLifecycleVectorEnv
    assert venv.num_envs == 7
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert venv.scenario == default_scenario
    venv.close()


def test_spaces_are_batched(default_scenario: Scenario) -> None:
    n = 5
    venv = _make(n)
    d = len(observation_feature_names(default_scenario))
    assert venv.single_observation_space == observation_space(default_scenario)
    assert venv.single_observation_space.shape == (d,)
    assert venv.observation_space.shape == (n, d)
    assert venv.observation_space.dtype == np.float32
    np.testing.assert_array_equal(
        venv.observation_space.low, np.tile(venv.single_observation_space.low, (n, 1))
    )
    np.testing.assert_array_equal(
        venv.observation_space.high, np.tile(venv.single_observation_space.high, (n, 1))
    )
    assert venv.single_action_space == gym.spaces.Discrete(default_scenario.n_actions)
    assert venv.action_space == gym.spaces.MultiDiscrete([default_scenario.n_actions] * n)
    obs, info = venv.reset(seed=0)
    assert obs.shape == (n, d) and obs.dtype == np.float32
    assert venv.observation_space.contains(obs)
    assert info["action_mask"].shape == (n, default_scenario.n_actions)
    assert info["action_mask"].dtype == np.bool_
    assert info["stage"].shape == (n,)
    obs, reward, terminated, truncated, info = venv.step(venv.action_space.sample())
    assert obs.shape == (n, d) and venv.observation_space.contains(obs)
    assert reward.shape == terminated.shape == truncated.shape == (n,)
    assert terminated.dtype == truncated.dtype == np.bool_
    assert info.keys() >= STEP_INFO_KEYS
    for key in STEP_INFO_KEYS - {"action_mask"}:
        assert np.shape(info[key]) == (n,), key
    venv.close()


def _three_channel_scenario(default_data: dict) -> Scenario:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in default_data.items()}
    data["channels"] = {k: v for k, v in default_data["channels"].items() if k != "push"}
    data["segments"] = {
        name: {
            **seg,
            "channel_affinity": {
                c: x for c, x in seg.get("channel_affinity", {}).items() if c != "push"
            },
        }
        for name, seg in default_data["segments"].items()
    }
    return scenario_from_mapping(data)


@pytest.mark.parametrize("which", ["default", "three_channels"])
def test_vector_and_single_env_share_the_observation_schema(
    default_scenario: Scenario, default_data: dict, which: str
) -> None:
    sc = default_scenario if which == "default" else _three_channel_scenario(default_data)
    names = observation_feature_names(sc)
    env = gym.make(ENV_ID, scenario=sc)
    venv = _make(3, scenario=sc)
    assert env.observation_space.shape == (len(names),)
    assert venv.single_observation_space.shape == (len(names),)
    assert venv.single_observation_space == env.observation_space
    assert venv.single_action_space == env.action_space
    assert env.reset(seed=0)[0].shape == (len(names),)
    assert venv.reset(seed=0)[0].shape == (3, len(names))
    assert sum(name.startswith("opt_in_") for name in names) == len(sc.channels)
    env.close()
    venv.close()


def test_one_customer_vector_env_matches_single_env() -> None:
    """The vector env is the batched twin: with N=1 and the same seed, identical results."""
    env = CustomerLifecycleEnv()
    venv = CustomerLifecycleVectorEnv(1)
    rng = np.random.default_rng(4)
    for seed in range(3):
        obs, info = env.reset(seed=seed)
        vobs, vinfo = venv.reset(seed=seed)
        np.testing.assert_array_equal(vobs[0], obs)
        np.testing.assert_array_equal(vinfo["action_mask"][0], info["action_mask"])
        for _ in range(env.scenario.horizon_weeks):
            action = int(rng.integers(0, env.action_space.n))
            obs, reward, _te, truncated, info = env.step(action)
            vobs, vreward, _vte, vtruncated, vinfo = venv.step(np.array([action]))
            np.testing.assert_array_equal(vobs[0], obs)
            assert vreward[0] == reward
            assert vtruncated[0] == truncated
            for key in STEP_INFO_KEYS:
                assert np.asarray(vinfo[key])[0].tolist() == np.asarray(info[key]).tolist(), key


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_trajectory_1000_customers() -> None:
    venv = _make(1000)
    run_a = _rollout(venv, seed=123, action_seed=9)
    run_b = _rollout(_make(1000), seed=123, action_seed=9)
    assert len(run_a) == 53
    for step in run_a:
        assert venv.observation_space.contains(step[0])
    for t, (step_a, step_b) in enumerate(zip(run_a, run_b, strict=True)):
        for part_a, part_b in zip(step_a, step_b, strict=True):
            assert_same(part_a, part_b, path=f"step {t}")


def test_different_seed_different_trajectory() -> None:
    run_a = _rollout(_make(1000), seed=1, action_seed=9)
    run_b = _rollout(_make(1000), seed=2, action_seed=9)
    assert not np.array_equal(run_a[0][0], run_b[0][0])
    rewards_a = np.stack([step[1] for step in run_a[1:]])
    rewards_b = np.stack([step[1] for step in run_b[1:]])
    assert not np.array_equal(rewards_a, rewards_b)


def test_reseeding_the_same_env_reproduces() -> None:
    venv = _make(200)
    first = _rollout(venv, seed=5, action_seed=5)
    second = _rollout(venv, seed=5, action_seed=5)
    for step_a, step_b in zip(first, second, strict=True):
        assert_same(step_a[0], step_b[0])
        assert_same(step_a[4], step_b[4])


# ----------------------------------------------------------------------------- autoreset


def test_next_step_autoreset(default_scenario: Scenario) -> None:
    horizon, n = 8, 300
    sc = default_scenario.with_overrides({"horizon_weeks": horizon})
    progress = len(observation_feature_names(sc)) - 1
    envs = [_make(n, scenario=sc), _make(n, scenario=sc)]
    rng = np.random.default_rng(0)
    for venv in envs:
        venv.reset(seed=42)
    for week in range(1, horizon + 1):
        actions = rng.integers(0, sc.n_actions, size=n)
        results = [venv.step(actions) for venv in envs]
        for obs, _reward, terminated, truncated, _info in results:
            assert not terminated.any()
            assert truncated.all() if week == horizon else not truncated.any()
            np.testing.assert_allclose(obs[:, progress], week / horizon)
    # The next step resets (week 0) and ignores its actions: two different action arrays,
    # one of them all contacts, give identical outputs.
    first = envs[0].step(np.zeros(n, dtype=np.int64))
    second = envs[1].step(np.full(n, sc.n_actions - 1))
    for part_a, part_b in zip(first, second, strict=True):
        assert_same(part_a, part_b)
    obs, reward, terminated, truncated, info = first
    assert envs[0].population.week == 0
    np.testing.assert_array_equal(obs[:, progress], 0.0)
    np.testing.assert_array_equal(reward, np.zeros(n))
    assert not terminated.any() and not truncated.any()
    assert "executed_action" not in info  # a reset info, not a step info
    assert envs[0].observation_space.contains(obs)
    assert envs[0].population.masked_total == 0
    # A fresh population, not the old one continued.
    assert not np.array_equal(obs, results[0][0])
    # Then the new episode runs normally.
    obs, _reward, _te, truncated, info = envs[0].step(np.zeros(n, dtype=np.int64))
    np.testing.assert_allclose(obs[:, progress], 1 / horizon)
    assert not truncated.any()
    assert "executed_action" in info
    for venv in envs:
        venv.close()


# ----------------------------------------------------------------------------- actions


@pytest.mark.parametrize("shape", [(9,), (11,), (10, 1), (10, 2), (), (5, 5, 4)])
def test_bad_action_shape_raises(shape: tuple[int, ...]) -> None:
    venv = _make(10)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions must have shape \(10,\)"):
        venv.step(np.zeros(shape, dtype=np.int64))
    assert venv.population.week == 0


@pytest.mark.parametrize("bad", [-1, "n_actions", 1.5])
def test_bad_action_values_raise(bad: Any) -> None:
    venv = _make(10)
    venv.reset(seed=0)
    value = venv.single_action_space.n if bad == "n_actions" else bad
    actions = np.zeros(10, dtype=np.asarray(value).dtype)
    actions[3] = value
    with pytest.raises(ValueError, match="actions must"):
        venv.step(actions)
    assert venv.population.week == 0


def test_step_before_reset_needs_reset() -> None:
    with pytest.raises(gym.error.ResetNeeded):
        CustomerLifecycleVectorEnv(3).step(np.zeros(3, dtype=np.int64))


def test_num_envs_must_be_positive() -> None:
    with pytest.raises(ValueError, match="num_envs"):
        CustomerLifecycleVectorEnv(0)


def test_info_action_mask_matches_action_masks(default_scenario: Scenario) -> None:
    venv = _make(500)
    _obs, info = venv.reset(seed=3)
    rng = np.random.default_rng(3)
    for _ in range(12):
        np.testing.assert_array_equal(info["action_mask"], venv.action_masks())
        assert info["action_mask"][:, 0].all()
        *_, info = venv.step(rng.integers(0, default_scenario.n_actions, size=500))


def test_info_action_mask_is_not_the_envs_own_array() -> None:
    n = 200
    venv = _make(n)
    _obs, info = venv.reset(seed=0)
    before = venv.action_masks()
    info["action_mask"][:] = False  # e.g. a policy that masks in place
    np.testing.assert_array_equal(venv.action_masks(), before)
    # And the edit does not turn eligible contacts into masked ones.
    actions = np.where(before[:, 1], 1, 0)
    *_, step_info = venv.step(actions)
    assert not step_info["masked_action"].any()


def test_strict_masking_vector_env() -> None:
    from simulator import MaskedActionError

    venv = _make(100, strict_masking=True)
    _obs, info = venv.reset(seed=0)
    mask = info["action_mask"].copy()
    assert not mask.all()
    customer, action = np.argwhere(~mask)[0]
    actions = np.zeros(100, dtype=np.int64)
    actions[customer] = action
    with pytest.raises(MaskedActionError):
        venv.step(actions)
    assert venv.population.week == 0
    # Eligible actions (first allowed contact, or none) go through.
    first_contact = np.argmax(mask[:, 1:], axis=1) + 1
    allowed = np.where(mask[:, 1:].any(axis=1), first_contact, 0)
    assert (allowed > 0).any()
    *_, info = venv.step(allowed)
    assert venv.population.week == 1
    np.testing.assert_array_equal(info["executed_action"], allowed)
