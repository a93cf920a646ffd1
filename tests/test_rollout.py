"""The rollout's seeding: a policy's draws are independent of the population it acts on."""

from __future__ import annotations

import numpy as np

from cvm_rl.policies.baselines import ExplorationPolicy
from cvm_rl.rollout import policy_seed, rollout
from simulator.config import load_scenario

SCENARIO = load_scenario("default")


def test_uniform_exploration_is_independent_of_the_latent_segment() -> None:
    """Seeded with the population's own seed, the policy drew the uniforms that had chosen
    each customer's segment: in the first week it contacted no loyalist and 85 % of deal
    seekers. Every segment must now be contacted at the same rate (within 4 standard
    errors), and the same seed must still give the same draws."""
    actions = []
    for _ in range(2):
        for t in rollout(
            ExplorationPolicy(SCENARIO),
            SCENARIO,
            n_customers=40_000,
            seed=3,
            oracle_info=True,
            weeks=2,
        ):
            if t.week == 0:
                segment = t.info["oracle"]["segment"]
                contacted = t.decisions.actions > 0
                rate = contacted.mean()
                for s in range(len(SCENARIO.segment_names)):
                    members = segment == s
                    se = np.sqrt(rate * (1 - rate) / members.sum())
                    assert abs(contacted[members].mean() - rate) < 4 * se
            actions.append(t.decisions.actions)
    np.testing.assert_array_equal(actions[0], actions[2])
    np.testing.assert_array_equal(actions[1], actions[3])


def test_policy_seeds_are_derived_and_distinct() -> None:
    assert policy_seed(None) is None
    assert policy_seed(3) == policy_seed(3) != 3
    assert len({policy_seed(s) for s in range(100)}) == 100
