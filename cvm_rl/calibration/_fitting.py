"""Helpers shared by the fits: checks of array inputs and the likelihood maximizer.

Both fits search over log-parameters, so every parameter stays positive; the search is kept in
the box [-LOG_BOUND, LOG_BOUND].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize

from cvm_rl.calibration.errors import CalibrationError

# Log-parameters are kept in this box: wide enough for any real customer base, narrow enough
# that exp() cannot overflow; an estimate on its edge means the data do not identify the model.
LOG_BOUND = 15.0


def float_array(values: ArrayLike, name: str, *, allow_nan: bool = False) -> NDArray[np.float64]:
    """``values`` as a 1-D array of finite (or, with ``allow_nan``, NaN) non-negative numbers."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{name}: expected numbers ({exc})") from None
    if array.ndim != 1:
        raise CalibrationError(f"{name}: expected a 1-D array, got shape {array.shape}")
    bad = np.isinf(array) if allow_nan else ~np.isfinite(array)
    if np.any(bad):
        raise CalibrationError(f"{name}: non-finite value at index {int(np.argmax(bad))}")
    negative = array < 0
    if np.any(negative):
        i = int(np.argmax(negative))
        raise CalibrationError(f"{name}: negative value {float(array[i])!r} at index {i}")
    return array


def count_array(values: ArrayLike, name: str) -> NDArray[np.int64]:
    """``values`` as a 1-D array of whole non-negative counts."""
    array = float_array(values, name)
    fractional = array != np.round(array)
    if np.any(fractional):
        i = int(np.argmax(fractional))
        raise CalibrationError(
            f"{name}: expected whole counts, got {float(array[i])!r} at index {i}"
        )
    return array.astype(np.int64)


def same_length(**arrays: NDArray[np.generic]) -> int:
    """The common length of the named arrays, which must be equal and non-zero."""
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) != 1:
        described = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise CalibrationError(f"arrays differ in length: {described}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise CalibrationError(f"no customers: {', '.join(lengths)} are empty")
    return n


def maximize_likelihood(
    neg_mean_ll: Callable[[NDArray[np.float64]], tuple[float, NDArray[np.float64]]],
    start: NDArray[np.float64],
    names: Sequence[str],
    model: str,
) -> NDArray[np.float64]:
    """Minimize a mean negative log-likelihood over log-parameters; return the parameters."""
    bounds = [(-LOG_BOUND, LOG_BOUND)] * len(start)
    result = minimize(
        neg_mean_ll,
        start,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 10_000},
    )
    # L-BFGS-B sometimes stops with a line-search failure at the optimum (the objective is
    # flat to rounding there); accept that when the gradient is negligible.
    _, gradient = neg_mean_ll(result.x)
    if not np.all(np.isfinite(result.x)) or (
        not result.success and float(np.max(np.abs(gradient))) > 1e-5
    ):
        raise CalibrationError(f"{model} fit did not converge: {result.message}")
    at_edge = [n for n, v in zip(names, result.x, strict=True) if abs(v) >= LOG_BOUND - 1e-6]
    if at_edge:
        raise CalibrationError(
            f"{model} fit ran off to the edge of the parameter space for {', '.join(at_edge)}; "
            "the data do not identify the model (too few customers or repeat purchases?)"
        )
    return np.exp(result.x)
