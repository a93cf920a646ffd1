"""Per-customer random streams: every random draw of the weekly dynamics is a function of
(dynamics key, customer, week, purpose) alone.

With one shared generator, a customer's draws depend on how many draws came before it that
week, which depends on every other customer's decisions: two policies run on the same
population part ways in *all* customers as soon as they differ in one, and the paired
difference of their values carries the full noise of two independent runs. Counter-based
streams keep common random numbers: a customer whose decisions agree under both policies
gets the very same draws, and one whose decisions differ gets the same uniforms pushed
through a different distribution (inverse transforms are monotone, so outcomes stay
coupled).

The uniforms come from a stateless 64-bit hash (the MurmurHash3 finalizer applied in a chain
over the key, customer, week and purpose): vectorized over customers, no state to carry, and
the same value whichever subset of customers asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy.special import gammaincinv

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)
_S11 = np.uint64(11)
_TO_UNIT = 1.0 / float(1 << 53)
POISSON_MAX_ITERATIONS = 10_000
"""A cap on the inverse-CDF search (never reached for the weekly rates of a scenario)."""


class Purpose(IntEnum):
    """What a draw decides: each has a stream of its own per customer and week."""

    BUDGET_ORDER = 1
    OPT_OUT = 2
    CONTACT_CHURN = 3
    WINBACK = 4
    PURCHASES = 5
    DROPOUT_BUDGET = 6
    SPEND = 7
    ATTRIBUTE = 8  # static: the "week" is the attribute's index


def _fmix(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (a bijection with full avalanche), in place."""
    x ^= x >> _S33
    x *= _M1
    x ^= x >> _S33
    x *= _M2
    x ^= x >> _S33
    return x


@dataclass(frozen=True)
class CustomerStreams:
    """Uniform draws keyed by (``key``, customer, week, purpose). ``key`` is the dynamics
    seed of a population: the same key replays the same draws, another gives new ones."""

    key: int

    @classmethod
    def from_rng(cls, rng: np.random.Generator) -> CustomerStreams:
        """Streams whose key is drawn from ``rng`` (so a seeded env's dynamics are seeded)."""
        return cls(int(rng.integers(0, 2**63)))

    def uniform(
        self, purpose: Purpose, step: int | np.ndarray, customers: np.ndarray
    ) -> np.ndarray:
        """One uniform in (0, 1) per customer index in ``customers``, for ``purpose`` at
        ``step`` (the episode week, or a per-customer counter such as the customer's number
        of lives so far, one per customer): the same number whoever else is drawn with it."""
        with np.errstate(over="ignore"):
            x = np.asarray(customers, dtype=np.uint64) * _GOLDEN
            x += np.uint64(self.key % 2**64)
            x = _fmix(x)
            x += np.asarray(step, dtype=np.uint64) * _GOLDEN
            x = _fmix(x)
            x += np.uint64(int(purpose)) * _GOLDEN
            x = _fmix(x)
        # 53 random bits, shifted half a step off 0 so that log(u) and log(1 - u) are finite
        return ((x >> _S11).astype(np.float64) + 0.5) * _TO_UNIT


def poisson_from_uniform(u: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """Poisson(``rate``) counts by inverse transform of ``u``: the smallest k whose CDF
    reaches u. Monotone in the rate for a fixed u, so a higher rate never gives fewer. The
    same numbers as ``scipy.stats.poisson.ppf(u, rate)`` (a test checks it), which is about
    40x slower on a week of 100,000 customers (most of whom buy nothing): this runs in the
    step kernel."""
    u = np.asarray(u, dtype=np.float64)
    rate = np.asarray(rate, dtype=np.float64)
    counts = np.zeros(u.shape, dtype=np.int64)
    term = np.exp(-rate)
    cdf = term.copy()
    pending = np.flatnonzero(u > cdf)
    k = 0
    while pending.size and k < POISSON_MAX_ITERATIONS:
        k += 1
        term[pending] *= rate[pending] / k
        cdf[pending] += term[pending]
        counts[pending] = k
        # a term that underflowed to 0 cannot move the CDF further: stop there
        pending = pending[(u[pending] > cdf[pending]) & (term[pending] > 0)]
    return counts


def exponential_from_uniform(u: np.ndarray) -> np.ndarray:
    """Exponential(1) by inverse transform of ``u``."""
    return -np.log1p(-np.asarray(u, dtype=np.float64))


def gamma_from_uniform(u: np.ndarray, shape: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Gamma(``shape``, ``scale``) by inverse transform of ``u`` (the regularized incomplete
    gamma function's inverse)."""
    return gammaincinv(np.asarray(shape, dtype=np.float64), u) * np.asarray(scale)
