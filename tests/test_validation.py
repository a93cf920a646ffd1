"""The simulator against the CDNOW data its purchase model was calibrated on."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from cvm_rl.calibration import calibrate, load_transactions, purchase_model
from cvm_rl.datasets import lifetimes_dataset
from simulator.config import load_scenario
from simulator.validation import compare_repeat_histograms, simulate_repeat_counts


@pytest.fixture(scope="module")
def cdnow_fit():
    path = lifetimes_dataset("CDNOW_sample.txt")
    result = calibrate(load_transactions(path), date(1997, 1, 1), date(1997, 9, 30))
    purchase = purchase_model(result)
    return purchase, result.summary


def test_no_contact_repeat_histogram_matches_cdnow(cdnow_fit) -> None:
    purchase, summary = cdnow_fit
    simulated = simulate_repeat_counts(purchase, summary.T, replications=10, seed=0)
    comparison = compare_repeat_histograms(summary.x, simulated)
    assert comparison.observed.sum() == len(summary.x) == 2357
    # A 5 % goodness-of-fit test: the simulated distribution is not rejected.
    assert comparison.p_value > 0.05, comparison.table()


def test_histogram_check_rejects_a_wrong_purchase_model(cdnow_fit) -> None:
    """The same check fails for a model with twice the purchase rate: it has teeth."""
    purchase, summary = cdnow_fit
    wrong = purchase.model_copy(update={"alpha": purchase.alpha / 2})
    simulated = simulate_repeat_counts(wrong, summary.T, replications=10, seed=0)
    assert compare_repeat_histograms(summary.x, simulated).p_value < 1e-6


def test_simulate_repeat_counts_is_seeded() -> None:
    purchase = load_scenario("default").purchase
    weeks = np.linspace(26, 39, 500)
    first = simulate_repeat_counts(purchase, weeks, replications=2, seed=7)
    assert first.shape == (1000,)
    np.testing.assert_array_equal(
        first, simulate_repeat_counts(purchase, weeks, replications=2, seed=7)
    )
    assert not np.array_equal(
        first, simulate_repeat_counts(purchase, weeks, replications=2, seed=8)
    )


@pytest.mark.parametrize(
    ("weeks", "replications", "match"),
    [
        (np.array([]), 1, "observation_weeks"),
        (np.array([3.0, -1.0]), 1, "observation_weeks"),
        (np.array([3.0, np.nan]), 1, "observation_weeks"),
        (np.array([3.0]), 0, "replications"),
    ],
)
def test_simulate_repeat_counts_rejects_bad_input(weeks, replications, match) -> None:
    with pytest.raises(ValueError, match=match):
        simulate_repeat_counts(load_scenario("default").purchase, weeks, replications=replications)
