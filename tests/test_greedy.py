"""Greedy uplift policy: logged data, the closed-form fit, the mask, state, errors, value."""

from __future__ import annotations

import numpy as np
import pytest

import cvm_rl.policies.greedy as greedy_module
from cvm_rl.evaluation import evaluate_policies
from cvm_rl.logs.arrays import LoggedData
from cvm_rl.logs.simulated import collect_logged_data
from cvm_rl.policies.baselines import ExplorationPolicy, RandomPolicy
from cvm_rl.policies.greedy import GreedyUpliftPolicy
from simulator.config import load_scenario
from simulator.observation import observation_feature_names

SCENARIO = load_scenario("default")
N_FEATURES = len(observation_feature_names(SCENARIO))
SMALL = SCENARIO.model_copy(update={"offers": dict(list(SCENARIO.offers.items())[:2])})


@pytest.fixture(scope="module")
def logged() -> LoggedData:
    return collect_logged_data(SCENARIO, n_customers=1500, weeks=12, seed=3)


@pytest.fixture(scope="module")
def fitted(logged: LoggedData) -> GreedyUpliftPolicy:
    return GreedyUpliftPolicy(SCENARIO, seed=0).fit(logged)


def reference_coef(policy: GreedyUpliftPolicy, data: LoggedData) -> np.ndarray:
    """Per-action ridge solution on the explicit design matrix (intercept not penalized)."""
    X = policy.features(data.obs)
    penalty = policy.ridge * np.eye(X.shape[1])
    penalty[0, 0] = 0.0
    coef = np.zeros((policy.n_actions, X.shape[1]))
    for a in np.unique(data.actions):
        Xa, ra = X[data.actions == a], data.rewards[data.actions == a]
        coef[a] = np.linalg.solve(Xa.T @ Xa + penalty, Xa.T @ ra)
    return coef


# --------------------------------------------------------------------------- logged data
def test_logged_data_is_one_row_per_customer_week_with_honest_propensities(logged) -> None:
    n = 1500 * 12
    assert logged.obs.shape == (n, N_FEATURES) and logged.mask.shape == (n, SCENARIO.n_actions)
    rows = np.arange(n)
    assert logged.mask[rows, logged.actions].all()
    probs = ExplorationPolicy(SCENARIO).action_probabilities(logged.obs, logged.mask)
    np.testing.assert_allclose(logged.propensities, probs[rows, logged.actions])
    # Half of the decisions with a contact eligible are no contact; every action is logged.
    assert abs(np.mean(logged.actions == 0) - probs[:, 0].mean()) < 0.02
    assert 0.5 <= probs[:, 0].mean() < 0.7
    assert np.all(np.bincount(logged.actions, minlength=SCENARIO.n_actions) > 0)


def test_logging_across_the_horizon_draws_a_fresh_population() -> None:
    weeks = SCENARIO.horizon_weeks + 2
    data = collect_logged_data(SCENARIO, n_customers=50, weeks=weeks, seed=1)
    progress = data.obs[:, -1].reshape(weeks, 50)[:, 0]  # horizon_progress
    assert progress[SCENARIO.horizon_weeks] == progress[0] < progress[1]


def test_exploration_policy_shares() -> None:
    mask = np.array(
        [[True] * 5 + [False] * 20, [True] + [False] * 24, [False, True] + [False] * 23]
    )
    obs = np.zeros((3, N_FEATURES), dtype=np.float32)
    probs = ExplorationPolicy(SCENARIO, no_contact_share=0.2).action_probabilities(obs, mask)
    np.testing.assert_allclose(probs[0, :5], [0.2, 0.2, 0.2, 0.2, 0.2])
    assert probs[1, 0] == 1.0 and probs[2, 1] == 1.0
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_seeding_reproduces_data_and_coefficients(logged, fitted) -> None:
    again = collect_logged_data(SCENARIO, n_customers=1500, weeks=12, seed=3)
    for field in ("obs", "mask", "actions", "propensities", "rewards"):
        np.testing.assert_array_equal(getattr(again, field), getattr(logged, field))
    refit = GreedyUpliftPolicy(SCENARIO, seed=0).fit(again)
    np.testing.assert_array_equal(refit.coef, fitted.coef)
    other = collect_logged_data(SCENARIO, n_customers=1500, weeks=12, seed=4)
    assert not np.array_equal(other.actions, logged.actions)


# --------------------------------------------------------------------------- the fit
def test_fit_equals_the_ridge_solution_on_the_design_matrix(logged, monkeypatch) -> None:
    # The fast per-cell route (exact one-hots) and the direct route (blocks where they are
    # not) must both give the closed-form ridge solution; small blocks exercise accumulation.
    monkeypatch.setattr(greedy_module, "_FIT_CHUNK_ROWS", 3000)
    n = 8000
    part = LoggedData(
        logged.obs[:n],
        logged.mask[:n],
        logged.actions[:n],
        logged.propensities[:n],
        logged.rewards[:n],
    )
    policy = GreedyUpliftPolicy(SCENARIO).fit(part)
    np.testing.assert_allclose(policy.coef, reference_coef(policy, part), rtol=1e-7, atol=1e-9)
    obs = part.obs.copy()
    obs[:4000, policy._stage] *= 0.5  # inexact one-hots in the first two blocks only
    blurred = LoggedData(obs, part.mask, part.actions, part.propensities, part.rewards)
    policy = GreedyUpliftPolicy(SCENARIO, ridge=3.0).fit(blurred)
    np.testing.assert_allclose(policy.coef, reference_coef(policy, blurred), rtol=1e-7, atol=1e-9)
    # bias, the features, stage x segment, stage x plain, segment x plain (segments are latent
    # in the default scenario: no segment one-hots, so only the stage crosses remain)
    n_stage, n_segment = len(policy._stage), len(policy._segment)
    n_plain = N_FEATURES - n_stage - n_segment
    expected = 1 + N_FEATURES + n_stage * n_segment + (n_stage + n_segment) * n_plain
    assert (n_stage, n_segment) == (7, 0)
    assert policy.design_names()[0] == "bias" and len(policy.design_names()) == expected


def test_fit_recovers_a_known_per_action_linear_reward() -> None:
    # Reward linear in the scaled observation for four logged actions (a sub-model of the
    # design), decisions at random; held-out customer-weeks drawn from the same weeks.
    data = collect_logged_data(SCENARIO, n_customers=4000, weeks=10, seed=7)
    rng = np.random.default_rng(0)
    k, logged_actions = SCENARIO.n_actions, np.array([0, 1, 6, 22])
    z = GreedyUpliftPolicy(SCENARIO).transform.scaled(data.obs)
    weights = rng.normal(size=(k, z.shape[1]))
    intercept = rng.normal(size=k)
    actions = rng.choice(logged_actions, size=len(z))
    rewards = intercept[actions] + np.einsum("nd,nd->n", z, weights[actions])
    mask = np.ones((len(z), k), dtype=bool)
    order = rng.permutation(len(z))
    train, test = order[: len(z) // 2], order[len(z) // 2 :]
    props = np.full(len(train), 0.25)
    truth = (intercept + z[test] @ weights.T)[:, logged_actions]
    uplift = truth - truth[:, :1]

    def fitted_on(r: np.ndarray) -> GreedyUpliftPolicy:
        data_train = LoggedData(data.obs[train], mask[train], actions[train], props, r[train])
        return GreedyUpliftPolicy(SCENARIO, ridge=1e-3).fit(data_train)

    # Noise-free: rewards and uplifts are recovered (up to the slight ridge shrinkage) ...
    exact = fitted_on(rewards)
    pred = exact.predict_rewards(data.obs[test])[:, logged_actions]
    np.testing.assert_allclose(pred, truth, atol=0.01)
    np.testing.assert_allclose(
        exact.predict_uplift(data.obs[test])[:, logged_actions], uplift, atol=0.02
    )
    # ... and the policy picks the true best action (or no contact, whose uplift is 0)
    # wherever the runner-up is clearly worse.
    top2 = np.sort(uplift, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.05
    best = logged_actions[uplift.argmax(axis=1)]
    chosen = exact.action_probabilities(data.obs[test], mask[test]).argmax(axis=1)
    assert clear.sum() > 15_000
    np.testing.assert_array_equal(chosen[clear], best[clear])
    # With noise (sd 0.1, ~5000 rows per action for 268 columns) the error stays small:
    # expected RMSE about 0.1 * sqrt(268 / 5000) = 0.023.
    noisy = fitted_on(rewards + 0.1 * rng.normal(size=len(z)))
    error = noisy.predict_rewards(data.obs[test])[:, logged_actions] - truth
    assert np.sqrt(np.mean(error**2)) < 0.035


# --------------------------------------------------------------------------- the policy
def test_probabilities_respect_the_mask(logged, fitted) -> None:
    rng = np.random.default_rng(1)
    obs = logged.obs[:4000]
    mask = logged.mask[:4000] & (rng.random((4000, SCENARIO.n_actions)) < 0.5)
    mask[:, 0] = True
    mask[:100, 0] = False  # no contact ineligible: the best contact regardless of margin
    mask[:100, 5] = True
    for m in (logged.mask[:4000], mask):
        probs = fitted.action_probabilities(obs, m)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
        assert np.all(probs[~m] == 0.0)
        actions, propensities = fitted.act(obs, m)
        assert m[np.arange(len(actions)), actions].all()
        assert np.all(propensities > 0)
    # It does contact some customers, only where the predicted uplift beats the margin.
    probs = fitted.action_probabilities(obs, logged.mask[:4000])
    contacted = probs[:, 0] == 0
    assert 0 < contacted.mean() < 1
    best = np.where(logged.mask[:4000], fitted.predict_uplift(obs), -np.inf)[:, 1:].max(axis=1)
    np.testing.assert_array_equal(contacted, best > 0)
    cautious = GreedyUpliftPolicy.from_state_dict(
        {**fitted.state_dict(), "hyperparameters": {"ridge": 1.0, "margin": 1e6}}, SCENARIO
    )
    assert np.all(cautious.action_probabilities(obs, logged.mask[:4000])[:, 0] == 1.0)


def test_ties_split_evenly_and_unlogged_actions_are_never_chosen(logged) -> None:
    k = SCENARIO.n_actions
    n = 200
    obs = logged.obs[:n]
    # Constant rewards: actions 3 and 4 tie for best; action 7 was never logged.
    actions = np.tile(np.array([0, 3, 4, 5]), n // 4)
    rewards = np.select([actions == 3, actions == 4, actions == 5], [2.0, 2.0, 1.0], 0.0)
    mask = np.ones((n, k), dtype=bool)
    data = LoggedData(obs, mask, actions, np.full(n, 0.25), rewards)
    policy = GreedyUpliftPolicy(SCENARIO).fit(data)
    probs = policy.action_probabilities(obs, mask)
    np.testing.assert_allclose(probs[:, [3, 4]], 0.5)
    assert np.isnan(policy.predict_rewards(obs)[:, 7]).all()
    only_unlogged = np.zeros((n, k), dtype=bool)
    only_unlogged[:, [0, 7]] = True
    assert np.all(policy.action_probabilities(obs, only_unlogged)[:, 0] == 1.0)


def test_state_dict_round_trip(logged, fitted) -> None:
    state = fitted.state_dict()
    assert state["policy"] == "greedy"
    assert all(
        isinstance(v, np.ndarray | dict | list | str | int) for v in state.values()
    )  # numpy and plain python only: a model bundle can store it without torch
    loaded = GreedyUpliftPolicy.from_state_dict(state, SCENARIO, seed=5)
    assert loaded.hyperparameters() == fitted.hyperparameters()
    obs, mask = logged.obs[:3000], logged.mask[:3000]
    np.testing.assert_array_equal(
        loaded.action_probabilities(obs, mask), fitted.action_probabilities(obs, mask)
    )
    state["coef"][:] = 0.0  # the saved arrays are copies
    assert np.any(fitted.coef != 0.0)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: GreedyUpliftPolicy(SCENARIO, ridge=0.0), "ridge"),
        (lambda: GreedyUpliftPolicy(SCENARIO, ridge=float("nan")), "ridge"),
        (lambda: GreedyUpliftPolicy(SCENARIO, ridge="big"), "ridge"),
        (lambda: GreedyUpliftPolicy(SCENARIO, margin=-0.1), "margin"),
        (lambda: GreedyUpliftPolicy(SCENARIO, margin=float("inf")), "margin"),
        (lambda: ExplorationPolicy(SCENARIO, no_contact_share=1.5), "no_contact_share"),
        (lambda: collect_logged_data(SCENARIO, n_customers=0), "n_customers"),
        (lambda: collect_logged_data(SCENARIO, weeks=2.5), "weeks"),
        (
            lambda: GreedyUpliftPolicy.fit_from_simulation(SCENARIO, n_customers=10, ridge=-1),
            "ridge",
        ),
        (lambda: GreedyUpliftPolicy(SCENARIO).fit("logs"), "data must be a LoggedData"),
    ],
)
def test_bad_arguments_name_the_argument(make, match) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def _bad_logged_data(logged: LoggedData) -> list[tuple[dict, str]]:
    n = 10
    base = {
        "obs": logged.obs[:n],
        "mask": logged.mask[:n],
        "actions": logged.actions[:n],
        "propensities": logged.propensities[:n],
        "rewards": logged.rewards[:n],
    }
    blocked = logged.mask[:n].copy()
    blocked[np.arange(n), logged.actions[:n]] = False
    return [
        ({**base, "obs": logged.obs[0]}, "obs must have shape"),
        ({**base, "obs": np.full((n, N_FEATURES), np.nan)}, "obs must be finite"),
        ({**base, "mask": logged.mask[:n].astype(int)}, "mask must be a boolean"),
        ({**base, "actions": logged.actions[: n - 1]}, "actions must be"),
        ({**base, "actions": logged.actions[:n] + 0.0}, "actions must be"),
        ({**base, "actions": np.full(n, 25)}, r"actions must be in \[0, 25\)"),
        ({**base, "mask": blocked}, "actions: every logged action must be eligible"),
        ({**base, "propensities": np.full(n, 1.5)}, "propensities"),
        ({**base, "rewards": np.full(n, np.inf)}, "rewards"),
    ]


def test_bad_logged_data_names_the_field(logged) -> None:
    for kwargs, match in _bad_logged_data(logged):
        with pytest.raises(ValueError, match=match):
            LoggedData(**kwargs)


def test_misuse_of_the_policy_is_explained(logged, fitted) -> None:
    obs, mask = logged.obs[:10], logged.mask[:10]
    fresh = GreedyUpliftPolicy(SCENARIO)
    for call in (
        lambda: fresh.action_probabilities(obs, mask),
        lambda: fresh.predict_uplift(obs),
        fresh.state_dict,
    ):
        with pytest.raises(ValueError, match="not fitted"):
            call()
    no_control = LoggedData(obs[1:2], mask[1:2], np.array([1]), np.ones(1), np.zeros(1))
    with pytest.raises(ValueError, match="no contact"):
        fresh.fit(no_control)
    narrow = LoggedData(
        obs[:, : N_FEATURES - 1], mask, logged.actions[:10], np.ones(10), np.zeros(10)
    )
    with pytest.raises(ValueError, match="data: obs/mask widths"):
        fresh.fit(narrow)
    state = fitted.state_dict()
    with pytest.raises(ValueError, match="state: policy"):
        GreedyUpliftPolicy.from_state_dict({**state, "policy": "linucb"}, SCENARIO)
    with pytest.raises(ValueError, match="state: coef"):
        GreedyUpliftPolicy.from_state_dict({**state, "coef": state["coef"][:, 1:]}, SCENARIO)
    with pytest.raises(ValueError, match="scenario"):
        GreedyUpliftPolicy.from_state_dict({**state, "n_actions": 3}, SCENARIO)
    with pytest.raises(ValueError, match="logging_policy"):
        collect_logged_data(SCENARIO, n_customers=5, weeks=1, logging_policy=RandomPolicy(SMALL))


# --------------------------------------------------------------------------- value
def test_greedy_beats_uniform_random_on_the_default_scenario() -> None:
    policy = GreedyUpliftPolicy.fit_from_simulation(SCENARIO, n_customers=5000, weeks=26, seed=0)
    greedy, random = evaluate_policies(
        [policy, RandomPolicy(SCENARIO)], SCENARIO, n_customers=2000, seeds=[1000, 1001]
    )
    lift = greedy.per_seed["value"] - random.per_seed["value"]
    # Measured +3.0 and +5.4 per customer (random spends ~6 per customer on contacts).
    assert np.all(lift > 1.5), lift
