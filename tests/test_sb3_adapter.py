"""The SB3 VecEnv view of the native vectorized env."""

from __future__ import annotations

import numpy as np
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
