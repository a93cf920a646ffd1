"""The oracle's expected values agree with simulation, and it plans as the model says."""

from __future__ import annotations

import numpy as np
import pytest

from cvm_rl.evaluation import evaluate_policies, run_episode
from cvm_rl.policies import NoContactPolicy, RuleBasedPolicy
from cvm_rl.policies.oracle import OraclePolicy
from simulator.config import load_scenario
from simulator.core import Population
from simulator.vector_env import CustomerLifecycleVectorEnv

SCENARIO = load_scenario("default")


def test_expected_no_contact_value_matches_simulation() -> None:
    """Week-0 expected value of never contacting equals the simulated mean within its noise."""
    n = 20_000
    env = CustomerLifecycleVectorEnv(n, SCENARIO)
    env.reset(seed=4)
    expected = OraclePolicy(SCENARIO).expected_values(env.population)[:, 0].mean()
    simulated = [run_episode(NoContactPolicy(SCENARIO), SCENARIO, n, seed=4)["value"]]
    # Same population (seed 4), other purchase draws: replay the horizon a few times.
    for replay in range(3):
        env = CustomerLifecycleVectorEnv(n, SCENARIO)
        env.reset(seed=4)
        env.population.reseed(100 + replay)  # new draws, same customers
        total = 0.0
        for _ in range(SCENARIO.horizon_weeks):
            _, reward, _, _, _ = env.step(np.zeros(n, dtype=np.int64))
            total += reward.sum()
        simulated.append(total / n)
    assert expected == pytest.approx(np.mean(simulated), rel=0.04)


def test_contacts_cost_what_the_model_says_for_dead_customers() -> None:
    """A latently dead customer with no reactivation chance gains nothing from a contact:
    every contact's expected value is minus its contact cost."""
    scenario = SCENARIO.with_overrides({"purchase.reactivation_prob": 0.0})
    pop = Population.create(scenario, 500, np.random.default_rng(0))
    pop.alive[:] = False
    values = OraclePolicy(scenario).expected_values(pop)
    np.testing.assert_allclose(values[:, 0], 0.0)
    np.testing.assert_allclose(
        values, -np.broadcast_to(pop.tables.action_contact_cost, values.shape)
    )


def test_oracle_never_contacts_a_live_dog_that_any_contact_kills() -> None:
    scenario = SCENARIO.with_overrides({"segments.sleeping_dogs.contact_churn_prob": 1.0})
    env = CustomerLifecycleVectorEnv(5_000, scenario)
    obs, info = env.reset(seed=1)
    oracle = OraclePolicy(scenario, seed=0)
    oracle.bind(env.population)
    actions, propensities = oracle.act(obs, info["action_mask"])
    assert info["action_mask"][np.arange(len(actions)), actions].all()
    np.testing.assert_array_equal(propensities, 1.0)
    pop = env.population
    live_dogs = (pop.segment == scenario.segment_names.index("sleeping_dogs")) & pop.alive
    assert live_dogs.sum() > 50 and np.all(actions[live_dogs] == 0)
    assert (actions[~live_dogs] > 0).mean() > 0.05


@pytest.mark.slow
def test_oracle_beats_no_contact_and_rules() -> None:
    results = evaluate_policies(
        [NoContactPolicy(SCENARIO), RuleBasedPolicy(SCENARIO), OraclePolicy(SCENARIO)],
        SCENARIO,
        n_customers=3_000,
        seeds=[7, 8, 9],
    )
    base, rules, oracle = results
    assert np.all(oracle.per_seed["value"] > base.per_seed["value"] + 1.0)
    assert np.all(oracle.per_seed["value"] > rules.per_seed["value"])


def test_oracle_needs_a_bound_matching_population() -> None:
    oracle = OraclePolicy(SCENARIO)
    env = CustomerLifecycleVectorEnv(10, SCENARIO)
    obs, info = env.reset(seed=0)
    with pytest.raises(ValueError, match=r"bind\(population\)"):
        oracle.action_probabilities(obs, info["action_mask"])
    oracle.bind(Population.create(SCENARIO, 11, np.random.default_rng(0)))
    with pytest.raises(ValueError, match="obs: 10 rows but the bound population has 11"):
        oracle.action_probabilities(obs, info["action_mask"])
    other = SCENARIO.with_overrides({"margin_rate": 0.5})
    with pytest.raises(ValueError, match="population: simulates a different scenario"):
        oracle.bind(Population.create(other, 10, np.random.default_rng(0)))
    with pytest.raises(ValueError, match="min_gain must be"):
        OraclePolicy(SCENARIO, min_gain=-1.0)
