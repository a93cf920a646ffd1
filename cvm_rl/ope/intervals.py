"""Confidence intervals shared by every estimator: a seeded bootstrap, and closed forms
(normal, empirical Bernstein) for estimators that are means of per-row terms.

The bootstrap resamples rows (or customers, for trajectories) with replacement. A resample is
represented by each row's multiplicity, so an estimator that is a ratio of sums (SNIPS, weighted
PDIS) is recomputed from two weighted sums, and all estimators share one set of resamples.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided ``1 - alpha`` interval made by ``method``."""

    estimate: float
    low: float
    high: float
    alpha: float
    method: str

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def check_alpha(alpha: float) -> float:
    if not (isinstance(alpha, float | int) and 0.0 < float(alpha) < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return float(alpha)


def check_n_bootstrap(n_bootstrap: int) -> int:
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 2:
        raise ValueError(f"n_bootstrap must be an int >= 2, got {n_bootstrap!r}")
    return n_bootstrap


def bootstrap_multiplicities(
    n: int, n_bootstrap: int, seed: int | None, *, block: int = 8
) -> Iterator[np.ndarray]:
    """Blocks of resamples: arrays of shape (b, n) (b <= ``block``) holding how many times
    each of the ``n`` rows is drawn in each resample (each row sums to ``n``). Seeded: the same
    seed gives the same resamples; blocks bound the memory to ``block * n`` floats."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    check_n_bootstrap(n_bootstrap)
    rng = np.random.default_rng(seed)
    for start in range(0, n_bootstrap, block):
        b = min(block, n_bootstrap - start)
        out = np.empty((b, n))
        for i in range(b):
            out[i] = np.bincount(rng.integers(0, n, n), minlength=n)
        yield out


def clustered_multiplicities(
    clusters: np.ndarray, n_bootstrap: int, seed: int | None, *, block: int = 8
) -> Iterator[np.ndarray]:
    """Like :func:`bootstrap_multiplicities`, but resampling whole clusters: ``clusters``
    (n,) gives each row's cluster (e.g. its customer), each resample draws the clusters with
    replacement and a row counts as often as its cluster is drawn. For rows that are not
    independent within a cluster (one customer's weeks)."""
    _, codes = np.unique(np.asarray(clusters), return_inverse=True)
    n_clusters = int(codes.max()) + 1 if len(codes) else 0
    for drawn in bootstrap_multiplicities(n_clusters, n_bootstrap, seed, block=block):
        yield drawn[:, codes]


def percentile_interval(
    estimate: float, replicates: np.ndarray, alpha: float, method: str = "bootstrap"
) -> Interval:
    """The ``alpha/2`` and ``1 - alpha/2`` quantiles of bootstrap ``replicates``."""
    alpha = check_alpha(alpha)
    finite = replicates[np.isfinite(replicates)]
    if not len(finite):
        return Interval(estimate, math.nan, math.nan, alpha, method)
    low, high = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    return Interval(float(estimate), float(low), float(high), alpha, method)


def normal_interval(terms: np.ndarray, alpha: float) -> Interval:
    """CLT interval of the mean of i.i.d. per-row ``terms``: mean +- z * sd / sqrt(n)."""
    alpha = check_alpha(alpha)
    n = len(terms)
    mean = float(np.mean(terms))
    if n < 2:
        return Interval(mean, math.nan, math.nan, alpha, "normal")
    half = float(stats.norm.ppf(1 - alpha / 2) * np.std(terms, ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, alpha, "normal")


def bernstein_interval(terms: np.ndarray, alpha: float, value_range: float) -> Interval:
    """Empirical Bernstein interval (Maurer & Pontil 2009, Thm 4) of the mean of i.i.d.
    ``terms`` known to lie in an interval of width ``value_range``: valid for any n, and
    wide when the terms can be large (unclipped importance weights)."""
    alpha = check_alpha(alpha)
    n = len(terms)
    mean = float(np.mean(terms))
    if n < 2 or not value_range > 0:
        return Interval(mean, math.nan, math.nan, alpha, "bernstein")
    log_term = math.log(4 / alpha)  # two-sided: alpha/2 per side, two events per side
    var = float(np.var(terms, ddof=1))
    half = math.sqrt(2 * var * log_term / n) + 7 * value_range * log_term / (3 * (n - 1))
    return Interval(mean, mean - half, mean + half, alpha, "bernstein")
