"""The BG/NBD purchase model (Fader, Hardie & Lee 2005): log-likelihood and maximum-likelihood fit.

Each customer buys at Poisson rate lambda ~ Gamma(r, alpha) while active and drops out after any
purchase with probability p ~ Beta(a, b). The likelihood of a customer's summary (x, t_x, T),
time in weeks, is (eq. 6 of the paper)

    L = Gamma(r + x) alpha^r / Gamma(r) * B(a, b + x) / B(a, b)
        * [(alpha + T)^-(r + x) + [x > 0] a / (b + x - 1) * (alpha + t_x)^-(r + x)].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import betaln, digamma, gammaln

from cvm_rl.calibration._fitting import count_array, float_array, maximize_likelihood, same_length
from cvm_rl.calibration.errors import CalibrationError


@dataclass(frozen=True)
class BGNBDParams:
    """Fitted BG/NBD parameters (time unit: weeks)."""

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float
    n_customers: int


def _bgnbd_terms(
    params: NDArray[np.float64],
    x: NDArray[np.float64],
    t_x: NDArray[np.float64],
    T: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-customer log-likelihood and its gradient w.r.t. log-parameters (n x 4)."""
    r, alpha, a, b = params
    repeat = x > 0
    # Fader, Hardie & Lee (2005), eq. 6: L = A1 * A2 * (A3 + [x > 0] * A4), in logs.
    log_a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    log_a2 = betaln(a, b + x) - betaln(a, b)
    log_a3 = -(r + x) * np.log(alpha + T)
    b_x1 = np.where(repeat, b + x - 1.0, 1.0)  # placeholder where x == 0, masked below
    log_a4 = np.where(repeat, np.log(a) - np.log(b_x1) - (r + x) * np.log(alpha + t_x), -np.inf)
    log_mix = np.logaddexp(log_a3, log_a4)
    ll = log_a1 + log_a2 + log_mix

    # Shares of the two terms of the mixture; w4 is exactly 0 where x == 0.
    w3 = np.exp(log_a3 - log_mix)
    w4 = np.exp(log_a4 - log_mix)
    psi_ab, psi_abx = digamma(a + b), digamma(a + b + x)
    d_r = digamma(r + x) - digamma(r) + np.log(alpha)
    d_r -= w3 * np.log(alpha + T) + w4 * np.log(alpha + t_x)
    d_alpha = r / alpha - (r + x) * (w3 / (alpha + T) + w4 / (alpha + t_x))
    d_a = psi_ab - psi_abx + w4 / a
    d_b = digamma(b + x) - digamma(b) + psi_ab - psi_abx - w4 / b_x1
    gradient = np.column_stack([d_r * r, d_alpha * alpha, d_a * a, d_b * b])
    return ll, gradient


def _check_bgnbd_inputs(
    x: ArrayLike, t_x: ArrayLike, T: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    xs = count_array(x, "x").astype(np.float64)
    tx = float_array(t_x, "t_x")
    tt = float_array(T, "T")
    same_length(x=xs, t_x=tx, T=tt)
    late = tx > tt
    if np.any(late):
        i = int(np.argmax(late))
        raise CalibrationError(f"t_x > T at index {i} ({float(tx[i])!r} > {float(tt[i])!r})")
    stray = (xs == 0) & (tx != 0)
    if np.any(stray):
        i = int(np.argmax(stray))
        raise CalibrationError(f"t_x must be 0 where x == 0; t_x = {float(tx[i])!r} at index {i}")
    return xs, tx, tt


def bgnbd_log_likelihood(
    x: ArrayLike, t_x: ArrayLike, T: ArrayLike, r: float, alpha: float, a: float, b: float
) -> float:
    """Total BG/NBD log-likelihood of the customers at the given parameters."""
    xs, tx, tt = _check_bgnbd_inputs(x, t_x, T)
    ll, _ = _bgnbd_terms(np.array([r, alpha, a, b], dtype=np.float64), xs, tx, tt)
    return float(ll.sum())


def fit_bgnbd(x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> BGNBDParams:
    """Maximum-likelihood BG/NBD fit on (x, t_x, T) per customer."""
    xs, tx, tt = _check_bgnbd_inputs(x, t_x, T)
    n = len(xs)
    if not np.any(xs > 0):
        # Then the likelihood does not depend on a and b and grows as r -> 0: no estimate.
        raise CalibrationError("x: no repeat purchases (all x == 0); BG/NBD cannot be fitted")

    def objective(log_params: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        ll, gradient = _bgnbd_terms(np.exp(log_params), xs, tx, tt)
        # The mean keeps tolerances independent of the number of customers.
        return -float(ll.mean()), -gradient.mean(axis=0)

    # alpha scales with the time unit; start it at the mean observation length.
    start = np.log([1.0, max(float(tt.mean()), 1e-3), 1.0, 1.0])
    r, alpha, a, b = maximize_likelihood(objective, start, ("r", "alpha", "a", "b"), "BG/NBD")
    log_likelihood = -objective(np.log([r, alpha, a, b]))[0] * n
    return BGNBDParams(float(r), float(alpha), float(a), float(b), float(log_likelihood), n)
