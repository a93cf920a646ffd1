"""The Gamma-Gamma spend model (Fader & Hardie 2013): log-likelihood and maximum-likelihood fit.

A transaction's value is Gamma(p, nu) with the customer's nu ~ Gamma(q, gamma), so the mean
value m_x of a customer's x repeat purchases has density (eq. 4 of the note)

    f(m_x | x) = Gamma(p x + q) / (Gamma(p x) Gamma(q)) * gamma^q m_x^(p x - 1) x^(p x)
                 / (gamma + m_x x)^(p x + q).

Only repeat buyers (x > 0) carry information about spend; the fit leaves the others out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import digamma, gammaln

from cvm_rl.calibration._fitting import count_array, float_array, maximize_likelihood, same_length
from cvm_rl.calibration.errors import CalibrationError


@dataclass(frozen=True)
class GammaGammaParams:
    """Fitted Gamma-Gamma spend parameters (fitted on repeat buyers only)."""

    p: float
    q: float
    gamma: float
    log_likelihood: float
    n_customers: int

    @property
    def mean_spend(self) -> float:
        """Population mean of a transaction's value, p * gamma / (q - 1); inf when q <= 1."""
        return self.p * self.gamma / (self.q - 1.0) if self.q > 1.0 else math.inf


def _gamma_gamma_terms(
    params: NDArray[np.float64], x: NDArray[np.float64], m: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-customer log-density of m_x given x, and its gradient w.r.t. log-parameters."""
    p, q, gamma = params
    px = p * x
    log_total = np.log(gamma + m * x)
    # Fader & Hardie (2013), eq. 4: density of the mean of x transaction values.
    ll = (
        gammaln(px + q)
        - gammaln(px)
        - gammaln(q)
        + q * np.log(gamma)
        + (px - 1.0) * np.log(m)
        + px * np.log(x)
        - (px + q) * log_total
    )
    psi = digamma(px + q)
    d_p = x * (psi - digamma(px) + np.log(m) + np.log(x) - log_total)
    d_q = psi - digamma(q) + np.log(gamma) - log_total
    d_gamma = q / gamma - (px + q) / (gamma + m * x)
    return ll, np.column_stack([d_p * p, d_q * q, d_gamma * gamma])


def _check_gamma_gamma_inputs(
    x: ArrayLike, m_x: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    xs = count_array(x, "x").astype(np.float64)
    ms = float_array(m_x, "m_x", allow_nan=True)
    same_length(x=xs, m_x=ms)
    repeat = xs > 0
    if not np.any(repeat):
        raise CalibrationError("x: no repeat buyers (x > 0) to fit the spend model on")
    unusable = repeat & ~(ms > 0)  # also catches NaN
    if np.any(unusable):
        i = int(np.argmax(unusable))
        raise CalibrationError(
            f"m_x must be > 0 for repeat buyers; m_x = {float(ms[i])!r} at index {i} "
            f"({int(np.count_nonzero(unusable))} such customers)"
        )
    return xs[repeat], ms[repeat]


def gamma_gamma_log_likelihood(
    x: ArrayLike, m_x: ArrayLike, p: float, q: float, gamma: float
) -> float:
    """Total Gamma-Gamma log-likelihood of the repeat buyers at the given parameters."""
    xs, ms = _check_gamma_gamma_inputs(x, m_x)
    ll, _ = _gamma_gamma_terms(np.array([p, q, gamma], dtype=np.float64), xs, ms)
    return float(ll.sum())


def fit_gamma_gamma(x: ArrayLike, m_x: ArrayLike) -> GammaGammaParams:
    """Maximum-likelihood Gamma-Gamma fit; customers with x == 0 are skipped."""
    xs, ms = _check_gamma_gamma_inputs(x, m_x)
    n = len(xs)

    def objective(log_params: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        ll, gradient = _gamma_gamma_terms(np.exp(log_params), xs, ms)
        return -float(ll.mean()), -gradient.mean(axis=0)

    # gamma scales with the currency; start it near the mean spend.
    start = np.log([1.0, 1.0, max(float(np.mean(ms)), 1e-3)])
    p, q, gamma = maximize_likelihood(objective, start, ("p", "q", "gamma"), "Gamma-Gamma")
    log_likelihood = -objective(np.log([p, q, gamma]))[0] * n
    return GammaGammaParams(float(p), float(q), float(gamma), float(log_likelihood), n)
