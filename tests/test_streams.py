"""Per-customer random streams: common random numbers between policies, and the inverse
transforms that turn the streams' uniforms into the dynamics' distributions."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from simulator.config import load_scenario
from simulator.streams import (
    CustomerStreams,
    Purpose,
    gamma_from_uniform,
    poisson_from_uniform,
)
from simulator.vector_env import CustomerLifecycleVectorEnv

SCENARIO = load_scenario("default")


def _run(
    actions_for_week: Callable[[int, np.ndarray], np.ndarray], n: int, seed: int
) -> tuple[np.ndarray, list[dict]]:
    """Per-customer rewards (n, weeks) and the infos of a run deciding ``actions_for_week``."""
    env = CustomerLifecycleVectorEnv(n, SCENARIO)
    _, info = env.reset(seed=seed)
    rewards, infos = [], []
    for week in range(SCENARIO.horizon_weeks):
        _, reward, _, _, info = env.step(actions_for_week(week, info["action_mask"]))
        rewards.append(reward)
        infos.append(info)
    return np.stack(rewards, axis=1), infos


def test_a_uniform_depends_on_its_key_customer_week_and_purpose_only() -> None:
    streams = CustomerStreams(12345)
    everyone = streams.uniform(Purpose.PURCHASES, 7, np.arange(1000))
    some = np.array([999, 3, 500])
    np.testing.assert_array_equal(streams.uniform(Purpose.PURCHASES, 7, some), everyone[some])
    assert np.all((everyone > 0) & (everyone < 1))
    others = [
        CustomerStreams(12346).uniform(Purpose.PURCHASES, 7, np.arange(1000)),
        streams.uniform(Purpose.PURCHASES, 8, np.arange(1000)),
        streams.uniform(Purpose.SPEND, 7, np.arange(1000)),
    ]
    for other in others:
        assert not np.any(other == everyone)
        # independent-looking: no correlation between streams
        assert abs(np.corrcoef(other, everyone)[0, 1]) < 0.1
    # uniform: a Kolmogorov-Smirnov test on many customers
    many = streams.uniform(Purpose.WINBACK, 0, np.arange(200_000))
    assert stats.kstest(many, "uniform").pvalue > 0.001


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.7, 3.0, 40.0])
def test_poisson_by_inverse_transform_has_the_poisson_distribution(rate: float) -> None:
    u = CustomerStreams(1).uniform(Purpose.PURCHASES, 0, np.arange(200_000))
    counts = poisson_from_uniform(u, np.full(u.size, rate))
    expected = stats.poisson.ppf(u, rate) if rate > 0 else np.zeros(u.size)
    np.testing.assert_array_equal(counts, expected)


def test_poisson_counts_never_fall_when_the_rate_rises() -> None:
    u = CustomerStreams(2).uniform(Purpose.PURCHASES, 0, np.arange(50_000))
    low = poisson_from_uniform(u, np.full(u.size, 0.3))
    high = poisson_from_uniform(u, np.full(u.size, 0.6))
    assert np.all(high >= low) and high.sum() > low.sum()


def test_gamma_by_inverse_transform_has_the_gamma_distribution() -> None:
    u = CustomerStreams(4).uniform(Purpose.SPEND, 0, np.arange(50_000))
    draws = gamma_from_uniform(u, np.full(u.size, 2.5), np.full(u.size, 3.0))
    assert stats.kstest(draws, stats.gamma(2.5, scale=3.0).cdf).pvalue > 0.001


def test_policies_that_agree_on_every_decision_give_identical_outcomes() -> None:
    def contact_the_reachable(week: int, mask: np.ndarray) -> np.ndarray:
        return np.where(mask[:, 1] & (week % 4 == 0), 1, 0)

    def same_decisions_another_way(week: int, mask: np.ndarray) -> np.ndarray:
        actions = np.zeros(len(mask), dtype=np.int64)
        if week % 4 == 0:
            actions[np.flatnonzero(mask[:, 1])] = 1
        return actions

    first, _ = _run(contact_the_reachable, 500, seed=11)
    second, _ = _run(same_decisions_another_way, 500, seed=11)
    np.testing.assert_array_equal(first, second)


def test_a_decision_that_differs_for_one_customer_changes_only_that_customers_path() -> None:
    n, changed, week_changed = 2_000, 17, 3

    def never(week: int, mask: np.ndarray) -> np.ndarray:
        return np.zeros(len(mask), dtype=np.int64)

    def one_discount(week: int, mask: np.ndarray) -> np.ndarray:
        actions = never(week, mask)
        if week == week_changed:
            eligible = np.flatnonzero(mask[changed])
            actions[changed] = eligible[-1]  # its last eligible contact
        return actions

    base, base_infos = _run(never, n, seed=5)
    other, other_infos = _run(one_discount, n, seed=5)
    others = np.arange(n) != changed
    np.testing.assert_array_equal(other[others], base[others])
    for before, after in zip(base_infos, other_infos, strict=True):
        np.testing.assert_array_equal(after["purchases"][others], before["purchases"][others])
    assert other_infos[week_changed]["executed_action"][changed] > 0
    assert other_infos[week_changed]["contact_cost"][changed] > 0
    assert not np.array_equal(other[changed], base[changed])  # at least its contact cost


def test_reseeding_gives_new_draws_for_the_same_customers() -> None:
    env = CustomerLifecycleVectorEnv(3_000, SCENARIO)
    env.reset(seed=8)
    start = env.population.lam.copy()
    first = [env.step(np.zeros(3_000, dtype=np.int64))[1] for _ in range(10)]
    env.reset(seed=8)
    env.population.reseed(99)
    np.testing.assert_array_equal(env.population.lam, start)  # the same customers
    again = [env.step(np.zeros(3_000, dtype=np.int64))[1] for _ in range(10)]
    assert not np.array_equal(np.stack(first), np.stack(again))
    env.reset(seed=8)
    replay = [env.step(np.zeros(3_000, dtype=np.int64))[1] for _ in range(10)]
    np.testing.assert_array_equal(np.stack(first), np.stack(replay))


@pytest.mark.parametrize("dropout_on", ["every_purchase", "base_purchases"])
def test_offer_induced_purchases_carry_dropout_only_when_the_scenario_says_so(
    dropout_on: str,
) -> None:
    """One week, everyone reachable sent the strongest offer, against no contact on the same
    customers and streams (sleeping-dog churn off, so purchases are the only way to leave):
    with dropout on every purchase the added purchases add dropouts; with dropout on the
    base purchases only, exactly the same customers drop out (among those alive before: a
    contact can win a dropped-out customer back, who may then leave again)."""
    scenario = SCENARIO.with_overrides(
        {
            "segments.sleeping_dogs.contact_churn_prob": 0.0,
            "purchase.dropout_on": dropout_on,
        }
    )
    n = 50_000

    def dropouts(contact: bool) -> tuple[np.ndarray, np.ndarray]:
        env = CustomerLifecycleVectorEnv(n, scenario, oracle_info=True)
        _, info = env.reset(seed=21)
        lift = env.population.tables.action_base_lift
        strongest = np.where(info["action_mask"], lift[None, :], -np.inf).argmax(axis=1)
        actions = np.where(contact, strongest, 0)
        alive = env.population.alive.copy()
        _, _, _, _, info = env.step(actions)
        return info["oracle"]["dropped_out"] & alive, info["purchases"]

    quiet, quiet_purchases = dropouts(False)
    sent, sent_purchases = dropouts(True)
    assert sent_purchases.sum() > 1.2 * quiet_purchases.sum()  # the offers add purchases
    if dropout_on == "base_purchases":
        np.testing.assert_array_equal(sent, quiet)
    else:
        assert sent.sum() > quiet.sum() + 10


def test_an_unknown_dropout_choice_names_the_key_and_the_allowed_values() -> None:
    from simulator.config import ScenarioError

    with pytest.raises(ScenarioError, match=r"purchase\.dropout_on.*'every_purchase'.*"):
        SCENARIO.with_overrides({"purchase.dropout_on": "sometimes"})
