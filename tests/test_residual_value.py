"""The residual value a customer carries out of the horizon (``expected_no_contact_margin``)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from simulator.config import Scenario
from simulator.core import Population


def _mid_episode(scenario: Scenario, n: int, seed: int, weeks: int = 6) -> Population:
    """A population after ``weeks`` of random contact: some dead, some with a retention bonus
    or pull-forward debt running, prospects among them; every arrival present."""
    pop = Population.create(scenario, n, np.random.default_rng(seed))
    pop.present[:] = True  # arrivals joined (the residual is taken once everyone has)
    rng = np.random.default_rng(seed + 1)
    for _ in range(weeks):
        pop.step(rng.integers(0, scenario.n_actions, size=n))
    return pop


def _simulated(
    pop: Population, weeks: int, discount: float, reseeds: int
) -> tuple[np.ndarray, np.ndarray]:
    """(reseeds, N) discounted margin of no-contact continuations with fresh draws, and the
    same with each week's spend replaced by its expectation given the purchases (far less
    noise, so it tests the purchase and dropout dynamics more sharply)."""
    margin, smooth = np.zeros((reseeds, pop.n)), np.zeros((reseeds, pop.n))
    per_purchase = pop.scenario.margin_rate * pop.scenario.purchase.spend_p / pop.nu
    for k in range(reseeds):
        run = copy.deepcopy(pop)
        run.reseed(100 + k)
        for w in range(weeks):
            result = run.step(np.zeros(pop.n, dtype=np.int64))
            margin[k] += discount**w * result.reward
            smooth[k] += discount**w * result.purchases * per_purchase
    return margin, smooth


@pytest.mark.parametrize("discount", [1.0, 0.98])
def test_the_residual_value_is_the_mean_of_simulated_continuations(
    default_scenario: Scenario, discount: float
) -> None:
    pop = _mid_episode(default_scenario, 10_000, seed=21)
    assert (~pop.alive).any() and (pop.retention_left > 0).any() and (pop.pf_debt > 0).any()
    assert (~pop.purchased_ever).any()
    weeks = 30
    expected = pop.expected_no_contact_margin(weeks, discount)
    margin, smooth = _simulated(pop, weeks, discount, reseeds=24)
    # The mean over customers and continuations, and per group of customers, within 3.5
    # standard errors (the continuations of one customer are independent draws).
    groups = {
        "all": np.ones(pop.n, dtype=bool),
        "dead": ~pop.alive,
        "prospects": ~pop.purchased_ever,
        "bonus running": pop.retention_left > 0,
        "pull-forward debt": pop.pf_debt > 0,
    }
    # Per customer, simulated minus expected: the customers' own spread cancels out.
    for simulated in (margin, smooth):
        for name, rows in groups.items():
            gaps = simulated[:, rows].mean(axis=0) - expected[rows]
            se = gaps.std(ddof=1) / np.sqrt(rows.sum())
            assert abs(gaps.mean()) < 3.5 * se + 1e-9, (name, gaps.mean(), se)
    # The spend-smoothed check is sharp: within 1 % over all customers.
    assert smooth.mean() == pytest.approx(expected.mean(), rel=0.01)


def test_the_residual_value_of_the_dead_is_their_comeback(default_scenario: Scenario) -> None:
    no_comeback = default_scenario.with_overrides({"purchase.reactivation_prob": 0.0})
    pop = _mid_episode(no_comeback, 3000, seed=4)
    value = pop.expected_no_contact_margin()
    assert (value[~pop.alive] == 0).all() and (value[pop.alive] >= 0).all()
    assert (value[pop.alive] > 0).mean() > 0.99  # (a purchase rate drawn as 0.0 gives 0)
    assert (pop.expected_no_contact_margin(0) == 0).all()
    # Discounting only lowers it; a longer window only raises it.
    assert (pop.expected_no_contact_margin(52, 0.99) <= value + 1e-12).all()
    assert (pop.expected_no_contact_margin(104) >= value - 1e-12).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weeks": -1}, r"weeks must be >= 0, got -1"),
        ({"weekly_discount": 0.0}, r"weekly_discount must be in \(0, 1\], got 0.0"),
        ({"weekly_discount": 1.5}, r"weekly_discount must be in \(0, 1\]"),
    ],
)
def test_bad_arguments_are_named(default_scenario: Scenario, kwargs: dict, match: str) -> None:
    pop = _mid_episode(default_scenario, 50, seed=1, weeks=1)
    with pytest.raises(ValueError, match=match):
        pop.expected_no_contact_margin(**kwargs)


def test_customers_yet_to_arrive_are_refused(default_scenario: Scenario) -> None:
    pop = Population.create(default_scenario, 2000, np.random.default_rng(0))
    assert not pop.present.all()
    with pytest.raises(ValueError, match="have not arrived yet"):
        pop.expected_no_contact_margin()


def test_customers_yet_to_arrive_count_zero_when_asked(default_scenario: Scenario) -> None:
    pop = Population.create(default_scenario, 2000, np.random.default_rng(0))
    absent = ~pop.present
    values = pop.expected_no_contact_margin(absent_as_zero=True)
    assert absent.any() and (values[absent] == 0).all()
    # The present customers' values are those of the same customers once everyone is present.
    pop.present[:] = True
    everyone = pop.expected_no_contact_margin()
    np.testing.assert_array_equal(values[~absent], everyone[~absent])
    assert (everyone[absent] > 0).all()
