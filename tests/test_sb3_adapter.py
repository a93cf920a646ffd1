"""The SB3 VecEnv view of the native vectorized env."""

from __future__ import annotations

import numpy as np
import pytest
from stable_baselines3 import PPO

from simulator.config import load_scenario
from simulator.sb3 import CustomerLifecycleSB3VecEnv
from simulator.vector_env import CustomerLifecycleVectorEnv

SHORT = load_scenario("default").with_overrides({"horizon_weeks": 4})


def test_same_step_reset_reports_terminal_observation() -> None:
    env = CustomerLifecycleSB3VecEnv(16, SHORT, seed=0)
    obs = env.reset()
    assert obs.shape == (16, env.observation_space.shape[0])
    for week in range(4):
        obs, rewards, dones, infos = env.step(np.zeros(16, dtype=np.int64))
        assert rewards.shape == (16,)
        if week < 3:
            assert not dones.any() and infos[0] == {}
    assert dones.all()
    assert all(info["TimeLimit.truncated"] for info in infos)
    assert infos[0]["terminal_observation"].shape == obs[0].shape
    assert env.venv.population.week == 0  # already reset for the next episode


def test_seeded_adapter_is_reproducible_and_masks_are_exposed() -> None:
    def rollout(seed: int) -> np.ndarray:
        env = CustomerLifecycleSB3VecEnv(32, SHORT, seed=seed)
        env.reset()
        rng = np.random.default_rng(0)
        rewards = [env.step(rng.integers(0, 25, size=32))[1] for _ in range(4)]
        return np.concatenate(rewards)

    np.testing.assert_array_equal(rollout(1), rollout(1))
    assert not np.array_equal(rollout(1), rollout(2))
    env = CustomerLifecycleSB3VecEnv(8, SHORT, seed=0)
    env.reset()
    masks = np.stack(env.env_method("action_masks"))
    assert masks.shape == (8, 25) and masks[:, 0].all()


def test_ppo_learns_on_the_adapter_without_errors() -> None:
    env = CustomerLifecycleSB3VecEnv(32, SHORT, seed=0)
    model = PPO("MlpPolicy", env, n_steps=8, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=32 * 8 * 2)
    actions, _ = model.predict(env.reset(), deterministic=True)
    assert actions.shape == (32,)


def test_terminal_value_ends_the_episode_with_the_residual_value() -> None:
    """With ``terminal_value`` the last reward carries each customer's residual value and the
    episode is a true end (SB3 does not bootstrap); without it, the cut is a truncation."""
    scenario = load_scenario("default").with_overrides({"horizon_weeks": 3})
    no_contact = np.zeros(200, dtype=np.int64)
    rewards = {}
    for terminal in (False, True):
        env = CustomerLifecycleSB3VecEnv(200, scenario, seed=3, terminal_value=terminal)
        env.reset()
        for _ in range(3):
            env.step_async(no_contact)
            _, reward, done, infos = env.step_wait()
        assert done.all()
        assert all(info["TimeLimit.truncated"] is (not terminal) for info in infos)
        rewards[terminal] = reward
    # The same population and draws, stepped natively: its final residual value is the gap.
    native = CustomerLifecycleVectorEnv(200, scenario)
    native.reset(seed=3)
    for _ in range(3):
        native.step(no_contact)
    residual = native.population.expected_no_contact_margin()
    assert residual.mean() > 0
    np.testing.assert_allclose(rewards[True] - rewards[False], residual, rtol=1e-5, atol=1e-4)


def test_potential_shaping_moves_every_return_by_the_first_potential() -> None:
    """On a tiny problem (8 weeks, 300 customers), potential-based shaping with the planner's
    posterior CLV changes each customer's discounted return by minus its first potential,
    whatever the policy, so two fixed policies rank the same with and without it."""
    from cvm_rl.policies import NoContactPolicy, RuleBasedPolicy
    from cvm_rl.policies.features import FeatureTransform
    from cvm_rl.policies.planner import CLVPlannerPolicy
    from cvm_rl.training import ScaledObservations

    scenario = load_scenario("default").with_overrides({"horizon_weeks": 8})
    n, gamma = 300, 0.97
    potential = CLVPlannerPolicy(scenario).customer_value
    returns: dict[tuple[str, bool], np.ndarray] = {}
    first_potential = None
    for policy in (NoContactPolicy(scenario), RuleBasedPolicy(scenario)):
        for shaped in (False, True):
            env = CustomerLifecycleSB3VecEnv(n, scenario, seed=4, terminal_value=True)
            wrapped = ScaledObservations(
                env,
                FeatureTransform.from_scenario(scenario),
                potential=potential if shaped else None,
                gamma=gamma,
            )
            wrapped.reset()
            raw = env.venv.population.observe()
            if shaped and first_potential is None:
                first_potential = potential(raw)
            total = np.zeros(n)
            for week in range(8):
                actions, _ = policy.act(raw, env.action_masks())
                wrapped.step_async(actions)
                _, reward, done, _ = wrapped.step_wait()
                total += gamma**week * reward
                raw = env.venv.population.observe()
            assert done.all()
            returns[policy.name, shaped] = total
    assert first_potential is not None and first_potential.mean() > 1.0
    for name in ("no_contact", "rules"):
        np.testing.assert_allclose(
            returns[name, True], returns[name, False] - first_potential, rtol=1e-4, atol=1e-3
        )
    plain = returns["rules", False].mean() - returns["no_contact", False].mean()
    shaped_gap = returns["rules", True].mean() - returns["no_contact", True].mean()
    assert shaped_gap == pytest.approx(plain, abs=1e-3)
    # Shaping is not a no-op: the weekly rewards themselves change.
    assert not np.allclose(returns["rules", True], returns["rules", False])


def test_expected_rewards_average_the_sampled_ones() -> None:
    """With ``expected_rewards`` the training reward of a week is its expectation given the
    latent state: over many customers it agrees with the sampled mean, with less spread
    (the draws of purchases and spend are gone)."""
    from cvm_rl.policies import RuleBasedPolicy
    from cvm_rl.policies.features import FeatureTransform
    from cvm_rl.training import ScaledObservations

    scenario = load_scenario("default").with_overrides({"horizon_weeks": 6})
    n = 20_000
    policy = RuleBasedPolicy(scenario)
    totals = {}
    for expected in (False, True):
        env = CustomerLifecycleSB3VecEnv(n, scenario, seed=2)
        wrapped = ScaledObservations(
            env, FeatureTransform.from_scenario(scenario), expected_rewards=expected
        )
        wrapped.reset()
        rewards = []
        for _ in range(5):
            raw = env.venv.population.observe()
            actions, _ = policy.act(raw, env.action_masks())
            wrapped.step_async(actions)
            rewards.append(wrapped.step_wait()[1])
        totals[expected] = np.array(rewards)
    sampled, expected_ = totals[False], totals[True]
    se = sampled.std(axis=1) / np.sqrt(n)
    assert np.all(np.abs(expected_.mean(axis=1) - sampled.mean(axis=1)) < 4 * se + 1e-3)
    # Only the within-customer noise goes: customers differ as much as ever.
    assert np.all(expected_.std(axis=1) < 0.8 * sampled.std(axis=1))
