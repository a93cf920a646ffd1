"""Checks of the simulator against the purchase data it was calibrated on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from simulator.config import PurchaseModel, Scenario, Segment, load_scenario
from simulator.core import Population


def calibration_scenario(purchase: PurchaseModel, horizon_weeks: int) -> Scenario:
    """The default scenario reduced to its purchase model: one neutral segment (and no
    attributes hinting at segments), no seasonality, no acquisition mix. This is the model a
    calibration fits."""
    base = load_scenario("default")
    return base.model_copy(
        update={
            "purchase": purchase,
            "horizon_weeks": horizon_weeks,
            "seasonality": [],
            "segments": {"all": Segment(share=1.0)},
            "attributes": {},
        }
    )


def simulate_repeat_counts(
    purchase: PurchaseModel,
    observation_weeks: np.ndarray,
    *,
    replications: int = 1,
    seed: int | None = None,
) -> np.ndarray:
    """Repeat purchases per simulated customer under no contact.

    Customer ``i`` makes its first purchase ``observation_weeks[i]`` weeks (rounded to whole
    weeks) before the end of the window, as a customer of the data did; each data customer
    is simulated ``replications`` times. Returns an int array of length
    ``len(observation_weeks) * replications``.
    """
    weeks = np.asarray(observation_weeks, dtype=float)
    if weeks.ndim != 1 or weeks.size == 0 or np.any(weeks < 0) or not np.all(np.isfinite(weeks)):
        raise ValueError("observation_weeks must be a non-empty 1-d array of finite weeks >= 0")
    if replications < 1:
        raise ValueError(f"replications must be >= 1, got {replications}")
    whole = np.rint(np.tile(weeks, replications)).astype(np.int64)
    horizon = int(whole.max()) + 1
    scenario = calibration_scenario(purchase, horizon)
    rng = np.random.default_rng(seed)
    population = Population.create(scenario, whole.size, rng, arrival_week=horizon - 1 - whole)
    no_contact = np.zeros(whole.size, dtype=np.int64)
    for _ in range(horizon):
        population.step(no_contact)
    return population.n_repeat.copy()


@dataclass(frozen=True)
class HistogramComparison:
    """Observed vs simulated customers by number of repeat purchases (last bin: ``>= max``)."""

    labels: list[str]
    observed: np.ndarray
    expected: np.ndarray
    chi2: float
    dof: int
    p_value: float

    def table(self) -> str:
        lines = ["| repeat purchases | observed | simulated (expected) |", "|---|---:|---:|"]
        for label, obs, exp in zip(self.labels, self.observed, self.expected, strict=True):
            lines.append(f"| {label} | {int(obs)} | {exp:.1f} |")
        lines.append(f"\nPearson chi2 = {self.chi2:.2f}, dof = {self.dof}, p = {self.p_value:.3f}")
        return "\n".join(lines)


def compare_repeat_histograms(
    observed_counts: np.ndarray,
    simulated_counts: np.ndarray,
    *,
    max_count: int = 7,
    fitted_parameters: int = 4,
) -> HistogramComparison:
    """Pearson goodness of fit of the simulated repeat-purchase distribution to the data.

    Expected counts are the simulated shares scaled to the number of observed customers;
    degrees of freedom are bins - 1 - ``fitted_parameters`` (the BG/NBD has four).
    """

    def histogram(counts: np.ndarray) -> np.ndarray:
        return np.bincount(
            np.minimum(np.asarray(counts, dtype=np.int64), max_count), minlength=max_count + 1
        ).astype(float)

    observed = histogram(observed_counts)
    simulated = histogram(simulated_counts)
    expected = simulated / simulated.sum() * observed.sum()
    if np.any(expected <= 0):
        raise ValueError("every bin needs simulated customers; raise replications")
    dof = max_count + 1 - 1 - fitted_parameters
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    labels = [str(k) for k in range(max_count)] + [f"{max_count}+"]
    return HistogramComparison(
        labels, observed, expected, chi2, dof, float(stats.chi2.sf(chi2, dof))
    )
