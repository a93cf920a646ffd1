"""The CLV planner: BG/NBD formulas as the reference package has them, observations only,
a response measured on a randomized campaign, bundles the server can load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cvm_rl.bundle import load_bundle, save_bundle
from cvm_rl.evaluation import evaluate_policies
from cvm_rl.policies import NoContactPolicy, RuleBasedPolicy
from cvm_rl.policies.planner import (
    CLVPlannerPolicy,
    ResponseEstimate,
    _bgnbd_log_likelihood,
    _bgnbd_p_alive,
    estimate_response,
)
from cvm_rl.rollout import rollout
from simulator.config import load_scenario
from simulator.core import Tables
from simulator.vector_env import CustomerLifecycleVectorEnv

SCENARIO = load_scenario("default")


def test_bgnbd_formulas_match_lifetimes() -> None:
    """Log-likelihood and P(alive) of (x, t_x, T) equal the lifetimes package's."""
    lifetimes = pytest.importorskip("lifetimes")
    rng = np.random.default_rng(0)
    big_t = rng.uniform(1.0, 100.0, 200)
    t_x = big_t * rng.uniform(0.0, 1.0, 200)
    x = rng.integers(0, 30, 200).astype(np.float64)
    t_x[x == 0] = 0.0
    r, alpha, a, b = 0.243, 4.414, 0.793, 2.426
    fitter = lifetimes.BetaGeoFitter()
    fitter.params_ = pd.Series({"r": r, "alpha": alpha, "a": a, "b": b})
    np.testing.assert_allclose(
        _bgnbd_p_alive(x, t_x, big_t, r, alpha, a, b),
        fitter.conditional_probability_alive(x, t_x, big_t),
        rtol=1e-9,
    )
    # lifetimes' negative log-likelihood is the mean over customers, of log parameters.
    neg_mean = lifetimes.BetaGeoFitter._negative_log_likelihood(
        np.log([r, alpha, a, b]), x, t_x, big_t, np.ones_like(x), 0.0
    )
    assert -_bgnbd_log_likelihood(x, t_x, big_t, r, alpha, a, b).mean() == pytest.approx(
        neg_mean, rel=1e-9
    )


def test_the_planner_reads_observations_only() -> None:
    """No ``bind``: the rollout never hands it the population; and two populations whose
    latent state differs but whose observations agree get the same decisions."""
    planner = CLVPlannerPolicy(SCENARIO)
    assert not hasattr(planner, "bind") and not planner.uses_latent_state
    env = CustomerLifecycleVectorEnv(2_000, SCENARIO)
    obs, info = env.reset(seed=5)
    before = planner.action_probabilities(obs, info["action_mask"])
    pop = env.population
    pop.lam *= 3.0
    pop.alive[:] = ~pop.alive
    pop.segment[:] = 0
    obs_after = pop.observe()
    np.testing.assert_array_equal(obs_after, obs)
    np.testing.assert_array_equal(
        planner.action_probabilities(obs_after, pop.action_mask()), before
    )


def test_the_segment_posterior_follows_attributes_and_history() -> None:
    """Posterior weights sum to one; customers of a segment put more weight on it on average
    than the others do; with the segment observed (the ablation) the posterior is its one-hot."""
    env = CustomerLifecycleVectorEnv(20_000, SCENARIO)
    obs, _ = env.reset(seed=2)
    weights, _ = CLVPlannerPolicy(SCENARIO).belief(obs.astype(np.float64))
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    segment = env.population.segment
    for s in range(len(SCENARIO.segment_names)):
        assert weights[segment == s, s].mean() > weights[segment != s, s].mean() + 0.02
    observed = SCENARIO.with_overrides({"segment_observed": True})
    env = CustomerLifecycleVectorEnv(500, observed)
    obs, _ = env.reset(seed=2)
    weights, _ = CLVPlannerPolicy(observed).belief(obs.astype(np.float64))
    np.testing.assert_array_equal(weights.argmax(axis=1), env.population.segment)
    np.testing.assert_allclose(weights.max(axis=1), 1.0)


def test_a_randomized_campaign_recovers_the_uplifts() -> None:
    """The measured uplift per action follows the scenario's (average over the customers'
    segments), strongest for the strongest offers, and is larger for new customers."""
    estimate = estimate_response(SCENARIO, seed=1)  # 200,000 customers x 4 weeks
    tb = Tables.from_scenario(SCENARIO)
    truth = (
        tb.action_base_lift[1:]
        * (tb.segment_share @ (tb.segment_sensitivity[:, None] * tb.segment_affinity))[
            np.maximum(tb.action_channel[1:], 0)
        ]
    )
    established = estimate.lift[1:, 0]
    assert np.corrcoef(established, truth)[0, 1] > 0.85
    assert estimate.lift[1:, 1].mean() > 2.0 * established.mean() > 0
    assert estimate.orders[1:].min() > 500
    np.testing.assert_array_equal(estimate.lift[0], 0.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"optout_cost": -1.0}, "optout_cost must be"),
        ({"min_gain": float("nan")}, "min_gain must be"),
        ({"residual_weeks": -1}, "residual_weeks must be >= 0"),
        (
            {"response": ResponseEstimate(np.zeros((3, 2)), np.ones((3, 2)))},
            r"lift must have shape \(25, 2\)",
        ),
    ],
)
def test_bad_planner_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CLVPlannerPolicy(SCENARIO, **kwargs)


def test_a_bad_response_estimate_is_named() -> None:
    with pytest.raises(ValueError, match=r"lift must be a finite \(A, 2\) array"):
        ResponseEstimate(np.full((25, 2), np.nan), np.ones((25, 2)))


@pytest.mark.parametrize("estimated", [False, True])
def test_planner_bundles_round_trip_and_serve(tmp_path, estimated: bool) -> None:
    from server.config import Exploration
    from server.model import ServingModel

    response = None
    if estimated:
        lift = np.random.default_rng(0).uniform(0.0, 2.0, (SCENARIO.n_actions, 2))
        lift[0] = 0.0
        response = ResponseEstimate(lift, np.full_like(lift, 10.0))
    planner = CLVPlannerPolicy(SCENARIO, response=response, optout_cost=1.5)
    path = save_bundle(planner, tmp_path / "bundle", algo=planner.name, training_config={})
    bundle = load_bundle(path)
    assert bundle.kind == "clv_planner" and bundle.policy.name == planner.name
    env = CustomerLifecycleVectorEnv(300, SCENARIO)
    obs, info = env.reset(seed=3)
    expected = planner.action_probabilities(obs, info["action_mask"])
    np.testing.assert_array_equal(
        bundle.policy.action_probabilities(obs, info["action_mask"]), expected
    )
    model = ServingModel(bundle, Exploration())
    draws = model.decide([f"e{i}" for i in range(20)], obs[:20], info["action_mask"][:20])
    np.testing.assert_array_equal(draws.action, expected[:20].argmax(axis=1))


def test_planner_decisions_are_deterministic_and_eligible() -> None:
    planner = CLVPlannerPolicy(SCENARIO, seed=0)
    for t in rollout(planner, SCENARIO, n_customers=1_000, seed=11, weeks=3):
        assert t.mask[np.arange(len(t.mask)), t.decisions.actions].all()
        np.testing.assert_array_equal(t.decisions.propensities, 1.0)


@pytest.mark.slow
def test_planner_beats_the_rules_on_long_run_value() -> None:
    results = evaluate_policies(
        [NoContactPolicy(SCENARIO), RuleBasedPolicy(SCENARIO), CLVPlannerPolicy(SCENARIO)],
        SCENARIO,
        n_customers=2_000,
        seeds=[7, 8],
    )
    base, rules, planner = results
    assert np.all(planner.per_seed["long_run_value"] > rules.per_seed["long_run_value"])
    assert np.all(planner.per_seed["long_run_value"] > base.per_seed["long_run_value"] + 1.0)
