"""Linear contextual bandits: the policy protocol, learning on a synthetic problem, errors."""

from __future__ import annotations

import numpy as np
import pytest

from cvm_rl.policies.bandits import (
    EpsilonGreedyPolicy,
    LinearBandit,
    LinTSPolicy,
    LinUCBPolicy,
)
from cvm_rl.policies.features import FeatureTransform
from cvm_rl.training import train_bandit
from simulator.config import load_scenario
from simulator.observation import observation_feature_names
from simulator.vector_env import CustomerLifecycleVectorEnv

SCENARIO = load_scenario("default")
N_FEATURES = len(observation_feature_names(SCENARIO))
BANDITS = [LinUCBPolicy, LinTSPolicy, EpsilonGreedyPolicy]


@pytest.fixture(scope="module")
def rollout() -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(obs, mask, executed action, reward) along a random-action rollout of 2000 customers."""
    env = CustomerLifecycleVectorEnv(2000, SCENARIO)
    obs, info = env.reset(seed=0)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(10):
        mask = info["action_mask"].copy()
        probs = mask / mask.sum(axis=1, keepdims=True)
        actions = (probs.cumsum(axis=1) < rng.random((len(obs), 1))).sum(axis=1)
        next_obs, reward, _, _, info = env.step(actions)
        out.append((obs, mask, info["executed_action"].copy(), reward.copy()))
        obs = next_obs
    return out


def trained(policy_cls, rollout, **kwargs) -> LinearBandit:
    policy = policy_cls(SCENARIO, seed=0, **kwargs)
    for obs, _, actions, reward in rollout[:-2]:
        policy.update(obs, actions, reward)
    return policy


def test_feature_transform_is_bounded_and_has_bias(rollout) -> None:
    transform = FeatureTransform.from_scenario(SCENARIO)
    X = transform(np.vstack([obs for obs, *_ in rollout]))
    assert X.shape[1] == transform.dim == N_FEATURES + 1
    assert np.all(X[:, 0] == 1.0)
    assert np.all(np.abs(X) <= 1.0 + 1e-12)


def test_scaled_features_are_the_formula_per_value_whatever_the_batch(rollout) -> None:
    """clip, log1p on the heavy-tailed columns only, then / scale; a row's values do not
    depend on the rows decided with it (a served decision must not), and the input is kept."""
    transform = FeatureTransform.from_scenario(SCENARIO)
    obs = np.vstack([obs for obs, *_ in rollout])[:257].astype(np.float32)
    obs[0] = transform.high * 2  # clipped at the top
    before = obs.copy()
    scaled = transform.scaled(obs)
    x = np.clip(obs.astype(np.float64), transform.low, transform.high)
    expected = np.where(transform.log, np.log1p(x), x) / transform.scale
    np.testing.assert_allclose(scaled, expected, rtol=1e-15, atol=0)
    np.testing.assert_array_equal(obs, before)
    one_by_one = np.vstack([transform.scaled(row[None, :]) for row in obs])
    np.testing.assert_array_equal(one_by_one, scaled)


def test_lints_propensity_is_the_monte_carlo_probability_of_the_action(rollout) -> None:
    policy = trained(LinTSPolicy, rollout, n_propensity_samples=32)
    assert isinstance(policy, LinTSPolicy)
    obs, mask, _, _ = rollout[-1]
    policy.seed(5)
    actions, propensities, probs = policy.act_with_distribution(obs, mask)
    rows = np.arange(len(actions))
    assert np.all(propensities >= 1 / 33)
    np.testing.assert_array_equal(propensities, probs[rows, actions])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(probs[~mask] == 0.0)
    # act() consumes the generator like action_probabilities with one extra draw per row.
    policy.seed(5)
    np.testing.assert_array_equal(policy.act(obs, mask)[1], propensities)
    policy.seed(5)
    policy.n_propensity_samples = 33
    np.testing.assert_array_equal(policy.action_probabilities(obs, mask), probs)
    # Trained on data, TS is far from uniform where many actions are eligible.
    many = mask.sum(axis=1) >= 5
    assert (probs.max(axis=1) - 1 / mask.sum(axis=1))[many].mean() > 0.2


def test_linucb_is_one_hot_and_untrained_ties_are_uniform(rollout) -> None:
    obs, mask, _, _ = rollout[0]
    fresh = LinUCBPolicy(SCENARIO).action_probabilities(obs, mask)
    np.testing.assert_allclose(fresh, mask / mask.sum(axis=1, keepdims=True))
    probs = trained(LinUCBPolicy, rollout).action_probabilities(obs, mask)
    assert np.all((probs == 1.0).sum(axis=1) == 1)


def test_epsilon_greedy_sampling_frequencies_match_probabilities(rollout) -> None:
    policy = trained(EpsilonGreedyPolicy, rollout, epsilon=0.3)
    obs, mask, _, _ = rollout[-1]
    row = int(np.argmax(mask.sum(axis=1)))
    reps = 20_000
    obs_rep = np.repeat(obs[row : row + 1], reps, 0)
    mask_rep = np.repeat(mask[row : row + 1], reps, 0)
    expected = policy.action_probabilities(obs_rep[:1], mask_rep[:1])[0]
    actions, _ = policy.act(obs_rep, mask_rep)
    freq = np.bincount(actions, minlength=SCENARIO.n_actions) / reps
    tol = 5 * np.sqrt(expected * (1 - expected) / reps) + 1e-12
    assert np.all(np.abs(freq - expected) <= tol)
    assert expected.max() > 0.7  # the greedy action carries 1 - epsilon


@pytest.mark.parametrize("policy_cls", BANDITS)
def test_seeded_reproducibility_and_state_round_trip(policy_cls, rollout) -> None:
    obs, mask, _, _ = rollout[-1]
    first, second = trained(policy_cls, rollout), trained(policy_cls, rollout)
    np.testing.assert_array_equal(first.act(obs, mask)[0], second.act(obs, mask)[0])

    state = first.state_dict()
    assert state["policy"] == policy_cls.name
    for loaded in (
        policy_cls.from_state_dict(state, SCENARIO),
        LinearBandit.from_state_dict(state, SCENARIO),
    ):
        assert type(loaded) is policy_cls
        assert loaded.hyperparameters() == first.hyperparameters()
        for key in ("A", "b", "A_inv", "theta", "counts"):
            np.testing.assert_array_equal(getattr(loaded, key), getattr(first, key))
        first.seed(9)
        loaded.seed(9)
        np.testing.assert_array_equal(
            loaded.action_probabilities(obs, mask), first.action_probabilities(obs, mask)
        )
    # The saved arrays are copies: training on does not change the saved state.
    obs, _, actions, reward = rollout[-1]
    first.update(obs, actions, reward)
    assert not np.array_equal(first.A, state["A"])


def test_state_dict_needs_a_matching_scenario(rollout) -> None:
    state = trained(LinUCBPolicy, rollout).state_dict()
    with pytest.raises(ValueError, match="scenario"):
        LinUCBPolicy.from_state_dict(state)
    with pytest.raises(ValueError, match="state"):
        LinTSPolicy.from_state_dict(state, SCENARIO)


def test_update_matches_the_ridge_solution() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 3))
    actions = rng.integers(0, 4, size=300)
    rewards = rng.normal(size=300)
    policy = LinUCBPolicy(None, n_features=3, n_actions=4, ridge=2.0)
    policy.update(X[:100], actions[:100], rewards[:100])
    policy.update(X[100:], actions[100:], rewards[100:])
    design = np.hstack([np.ones((300, 1)), X])
    for a in range(4):
        Xa, ra = design[actions == a], rewards[actions == a]
        theta = np.linalg.solve(2.0 * np.eye(4) + Xa.T @ Xa, Xa.T @ ra)
        np.testing.assert_allclose(policy.theta[a], theta, rtol=1e-10, atol=1e-12)
    assert policy.counts.tolist() == np.bincount(actions, minlength=4).tolist()


def test_a_full_information_update_fits_every_eligible_action_on_every_row() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 3))
    mask = rng.random((200, 4)) < 0.7
    scores = rng.normal(size=(200, 4))
    scores[~mask] = np.nan  # read only where eligible
    policy = LinUCBPolicy(None, n_features=3, n_actions=4, ridge=2.0)
    policy.update_all(X, mask, scores)
    design = np.hstack([np.ones((200, 1)), X])
    for a in range(4):
        rows = mask[:, a]
        Xa = design[rows]
        theta = np.linalg.solve(2.0 * np.eye(4) + Xa.T @ Xa, Xa.T @ scores[rows, a])
        np.testing.assert_allclose(policy.theta[a], theta, rtol=1e-10, atol=1e-12)
    assert policy.counts.tolist() == mask.sum(axis=0).tolist()
    with pytest.raises(ValueError, match="scores must have shape"):
        policy.update_all(X, mask, scores[:, :3])
    with pytest.raises(ValueError, match="mask must be a boolean"):
        policy.update_all(X, mask.astype(int), scores)


# --------------------------------------------------------------------------- learning
D, K, BATCH, ROUNDS, NOISE = 5, 5, 20, 2000, 2.0


def regret_curve(policy: LinearBandit, seed: int, masked: bool) -> np.ndarray:
    """Per-round regret of ``policy`` on reward = theta_a^T x + N(0, NOISE^2)."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(K, D))
    regret = []
    for _ in range(ROUNDS // BATCH):
        X = rng.normal(size=(BATCH, D))
        mask = np.ones((BATCH, K), dtype=bool)
        if masked:
            mask = rng.random((BATCH, K)) < 0.6
            mask[np.arange(BATCH), rng.integers(0, K, BATCH)] = True
        mean = X @ theta.T
        actions, _ = policy.act(X, mask)
        chosen = mean[np.arange(BATCH), actions]
        regret.append(np.where(mask, mean, -np.inf).max(axis=1) - chosen)
        policy.update(X, actions, chosen + NOISE * rng.normal(size=BATCH))
    return np.concatenate(regret)


def quarters(regret: np.ndarray) -> tuple[float, float]:
    q = len(regret) // 4
    return float(regret[:q].mean()), float(regret[-q:].mean())


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bandits_learn_a_synthetic_linear_problem(seed: int, masked: bool) -> None:
    # Margins from 30 seeds: LinUCB/LinTS last/first quarter ratio <= 0.21 and last-quarter
    # regret <= 0.08 (random policy >= 1.2); epsilon-greedy (0.05) ratio <= 0.65.
    dims = {"n_features": D, "n_actions": K, "seed": seed}
    random_first, random_last = quarters(
        regret_curve(EpsilonGreedyPolicy(None, epsilon=1.0, **dims), seed, masked)
    )
    random_regret = 0.5 * (random_first + random_last)
    for policy in (LinUCBPolicy(None, **dims), LinTSPolicy(None, **dims)):
        first, last = quarters(regret_curve(policy, seed, masked))
        assert last < 0.5 * first, (policy.name, first, last)
        assert last < 0.2 * random_regret, (policy.name, last, random_regret)
    first, last = quarters(
        regret_curve(EpsilonGreedyPolicy(None, epsilon=0.05, **dims), seed, masked)
    )
    assert last < 0.8 * first, ("epsilon_greedy", first, last)
    assert last < 0.3 * random_regret, ("epsilon_greedy", last, random_regret)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("policy_cls", "kwargs", "match"),
    [
        (LinUCBPolicy, {"alpha": -0.1}, "alpha"),
        (LinUCBPolicy, {"alpha": float("nan")}, "alpha"),
        (LinUCBPolicy, {"ridge": 0.0}, "ridge"),
        (LinTSPolicy, {"ridge": -1.0}, "ridge"),
        (LinTSPolicy, {"v": 0.0}, "v must"),
        (LinTSPolicy, {"v": float("inf")}, "v must"),
        (LinTSPolicy, {"n_propensity_samples": 0}, "n_propensity_samples"),
        (EpsilonGreedyPolicy, {"epsilon": 1.5}, "epsilon"),
        (EpsilonGreedyPolicy, {"epsilon": -0.01}, "epsilon"),
        (EpsilonGreedyPolicy, {"epsilon": "a lot"}, "epsilon"),
        (LinUCBPolicy, {"n_actions": 3}, "n_features/n_actions"),
    ],
)
def test_bad_hyperparameters_name_the_argument(policy_cls, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        policy_cls(SCENARIO, **kwargs)


def test_raw_mode_needs_dimensions() -> None:
    with pytest.raises(ValueError, match="n_features"):
        LinUCBPolicy(None, n_actions=3)
    with pytest.raises(ValueError, match="n_actions"):
        LinTSPolicy(None, n_features=3, n_actions=0)


def _bad_updates():
    obs = np.zeros((4, N_FEATURES), dtype=np.float32)
    acts = np.array([0, 1, 2, 3])
    rew = np.zeros(4)
    return [
        ((obs, acts[:3], rew), "actions must have shape"),
        ((obs, acts, rew[:3]), "rewards must have shape"),
        ((obs, acts, np.array([0.0, np.nan, 0.0, 0.0])), "rewards must be finite"),
        ((obs, acts, np.array([0.0, np.inf, 0.0, 0.0])), "rewards must be finite"),
        ((obs, np.array([0, 1, 2, 25]), rew), "actions must be in"),
        ((obs, np.array([0, -1, 2, 3]), rew), "actions must be in"),
        ((obs, acts.astype(float), rew), "actions must be integers"),
        ((obs[:, : N_FEATURES - 1], acts, rew), "obs must have shape"),
        ((np.full((4, N_FEATURES), np.nan), acts, rew), "obs must be finite"),
    ]


@pytest.mark.parametrize(("args", "match"), _bad_updates())
def test_bad_updates_name_the_argument(args, match) -> None:
    policy = LinUCBPolicy(SCENARIO)
    with pytest.raises(ValueError, match=match):
        policy.update(*args)
    assert np.all(policy.counts == 0)  # nothing half-applied


def test_train_bandit_smoke() -> None:
    policy = EpsilonGreedyPolicy(SCENARIO, seed=0)
    weeks = SCENARIO.horizon_weeks + 2  # crosses the horizon: a fresh population is drawn
    curve = train_bandit(policy, SCENARIO, n_customers=200, weeks=weeks, seed=3)
    assert len(curve) == weeks
    assert np.all(np.isfinite(curve))
    assert policy.counts.sum() == 200 * weeks
