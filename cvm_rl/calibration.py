"""Calibrate the BG/NBD purchase model and Gamma-Gamma spend model on transaction data.

Time is measured in weeks (days / 7), the unit of the simulator's scenario files. Conventions,
chosen because they reproduce the published CDNOW numbers (Fader, Hardie & Lee 2005) and the
``cdnow_customers_summary.csv`` shipped with the ``lifetimes`` package:

* transactions of one customer on the same day are merged into one (amounts summed);
* ``x`` counts the purchase days after the first one, ``t_x`` is the time from the first to
  the last purchase day, ``T`` the time from the first purchase day to ``calibration_end``
  (which is inclusive: a purchase on that day counts, and ``T`` runs up to that day, not to
  the day after);
* ``m_x`` is the mean value of the repeat purchase days only (the first purchase is left out,
  as in Fader & Hardie's Gamma-Gamma note), NaN when ``x == 0``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
import tomli_w
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize
from scipy.special import betaln, digamma, gammaln

from simulator.config import PurchaseModel, load_scenario

__all__ = [
    "BGNBDParams",
    "CalibrationError",
    "CalibrationResult",
    "GammaGammaParams",
    "RFMSummary",
    "Transactions",
    "bgnbd_log_likelihood",
    "calibrate",
    "fit_bgnbd",
    "fit_gamma_gamma",
    "gamma_gamma_log_likelihood",
    "holdout_repeat_counts",
    "load_transactions",
    "repeat_purchase_histogram",
    "scenario_values",
    "summarize",
    "write_scenario_fragment",
]

DAYS_PER_WEEK = 7.0
# Log-parameters are kept in this box: wide enough for any real customer base, narrow enough
# that exp() cannot overflow; an estimate on its edge means the data do not identify the model.
_LOG_BOUND = 15.0

Column = int | str


class CalibrationError(ValueError):
    """Transaction data or fit inputs that cannot be used; the message says where and why."""


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True, eq=False)
class Transactions:
    """One row per transaction: customer id, day and amount."""

    customer_ids: NDArray[np.str_]
    dates: NDArray[np.datetime64]
    amounts: NDArray[np.float64]
    source: str = "<memory>"

    def __post_init__(self) -> None:
        n = len(self.customer_ids)
        if len(self.dates) != n or len(self.amounts) != n:
            raise CalibrationError(
                f"Transactions: customer_ids, dates and amounts differ in length "
                f"({n}, {len(self.dates)}, {len(self.amounts)})"
            )

    def __len__(self) -> int:
        return len(self.customer_ids)


def _resolve_column(
    column: Column, header_row: list[str] | None, role: str, where: str
) -> tuple[int, str]:
    """Turn a column index or header name into (index, label for messages)."""
    if isinstance(column, bool):  # bool is an int subclass; True as a column is a mistake
        raise CalibrationError(f"{role} column must be an index or a name, got {column!r}")
    if isinstance(column, int):
        if column < 0:
            raise CalibrationError(f"{role} column index must be >= 0, got {column}")
        if header_row is not None and column < len(header_row):
            return column, f"{role} column {column} ({header_row[column]!r})"
        return column, f"{role} column {column}"
    if header_row is None:
        raise CalibrationError(
            f"{where}: {role} column {column!r} is given by name but the file is read "
            "without a header"
        )
    names = [name.strip() for name in header_row]
    if column not in names:
        raise CalibrationError(
            f"{where}: unknown {role} column {column!r}; header has {', '.join(map(repr, names))}"
        )
    return names.index(column), f"{role} column {column!r}"


def _read_rows(path: Path, delimiter: str | None) -> list[tuple[int, list[str]]]:
    """(line number, fields) for every line of the file."""
    # utf-8-sig drops the byte-order mark that spreadsheet exports put before the header.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        if delimiter is None:
            return [(n, line.split()) for n, line in enumerate(handle, start=1)]
        reader = csv.reader(handle, delimiter=delimiter)
        # line_num is the reader's current line, right for quoted multi-line fields too.
        return [(reader.line_num, row) for row in reader]


def load_transactions(
    path: str | Path,
    *,
    customer_column: Column = 0,
    date_column: Column = 2,
    amount_column: Column = 4,
    date_format: str = "%Y%m%d",
    delimiter: str | None = None,
    header: bool | None = None,
) -> Transactions:
    """Read a transaction file (one transaction per line) into :class:`Transactions`.

    Columns are 0-based indices or header names. ``delimiter=None`` splits on any whitespace
    (the CDNOW layout, whose defaults these are). ``header=None`` means the first line is a
    header exactly when some column is given by name. Blank lines are skipped.
    """
    path = Path(path)
    if delimiter is not None and len(delimiter) != 1:
        raise CalibrationError(f"delimiter must be one character, got {delimiter!r}")
    columns = {"customer": customer_column, "date": date_column, "amount": amount_column}
    if header is None:
        header = any(isinstance(c, str) for c in columns.values())
    try:
        rows = _read_rows(path, delimiter)
    except UnicodeDecodeError as exc:
        raise CalibrationError(f"{path}: not a UTF-8 text file ({exc.reason})") from exc
    rows = [(n, row) for n, row in rows if any(field.strip() for field in row)]

    header_row: list[str] | None = None
    if header:
        if not rows:
            raise CalibrationError(f"{path}: empty file, expected a header line")
        header_line, header_row = rows[0]
        rows = rows[1:]
        where = f"{path}, line {header_line}"
    else:
        where = str(path)
    resolved = {
        role: _resolve_column(column, header_row, role, where) for role, column in columns.items()
    }
    if not rows:
        raise CalibrationError(f"{path}: empty file, no transactions found")

    (ci, c_label), (di, d_label), (ai, a_label) = (
        resolved["customer"],
        resolved["date"],
        resolved["amount"],
    )
    needed = max(ci, di, ai) + 1
    ids: list[str] = []
    days: list[date] = []
    amounts: list[float] = []
    for line, row in rows:
        if len(row) < needed:
            missing = [label for index, label in resolved.values() if index >= len(row)]
            raise CalibrationError(
                f"{path}, line {line}: missing {', '.join(missing)} "
                f"(expected at least {needed} fields, got {len(row)})"
            )
        customer = row[ci].strip()
        if not customer:
            raise CalibrationError(f"{path}, line {line}, {c_label}: empty customer id")
        raw_date = row[di].strip()
        try:
            day = datetime.strptime(raw_date, date_format).date()
        except ValueError:
            raise CalibrationError(
                f"{path}, line {line}, {d_label}: cannot parse date {raw_date!r} "
                f"with format {date_format!r}"
            ) from None
        raw_amount = row[ai].strip()
        try:
            amount = float(raw_amount)
        except ValueError:
            raise CalibrationError(
                f"{path}, line {line}, {a_label}: expected a number, got {raw_amount!r}"
            ) from None
        if not math.isfinite(amount) or amount < 0:
            raise CalibrationError(
                f"{path}, line {line}, {a_label}: expected a finite non-negative amount, "
                f"got {raw_amount!r}"
            )
        ids.append(customer)
        days.append(day)
        amounts.append(amount)
    return Transactions(
        customer_ids=np.array(ids, dtype=np.str_),
        dates=np.array(days, dtype="datetime64[D]"),
        amounts=np.array(amounts, dtype=np.float64),
        source=str(path),
    )


# ---------------------------------------------------------------------------------------------
# Recency / frequency / monetary summary


@dataclass(frozen=True, eq=False)
class RFMSummary:
    """Per-customer BG/NBD summary of the calibration period, time in weeks."""

    customer_ids: NDArray[np.str_]
    x: NDArray[np.int64]
    """Repeat purchase days in the calibration period."""
    t_x: NDArray[np.float64]
    """Weeks from the first to the last purchase day (0 when x == 0)."""
    T: NDArray[np.float64]
    """Weeks from the first purchase day to calibration_end."""
    m_x: NDArray[np.float64]
    """Mean value of the repeat purchase days; NaN when x == 0."""
    first_purchase: NDArray[np.datetime64]
    calibration_start: date | None
    calibration_end: date
    n_excluded_before_start: int = 0
    """Customers left out because they bought before calibration_start (acquired earlier)."""

    def __len__(self) -> int:
        return len(self.customer_ids)


def _day(value: date) -> np.datetime64:
    return np.datetime64(value.isoformat(), "D")


def _purchase_days(
    codes: NDArray[np.intp], dates: NDArray[np.datetime64], amounts: NDArray[np.float64]
) -> tuple[NDArray[np.intp], NDArray[np.int64], NDArray[np.float64]]:
    """Merge same-day transactions: (customer code, day number, summed amount), sorted."""
    day_numbers = dates.astype(np.int64)
    order = np.lexsort((day_numbers, codes))
    codes, day_numbers, amounts = codes[order], day_numbers[order], amounts[order]
    new = np.ones(len(codes), dtype=bool)
    new[1:] = (codes[1:] != codes[:-1]) | (day_numbers[1:] != day_numbers[:-1])
    starts = np.flatnonzero(new)
    if len(starts) == 0:
        return codes, day_numbers, amounts
    return codes[starts], day_numbers[starts], np.add.reduceat(amounts, starts)


def summarize(
    transactions: Transactions,
    *,
    calibration_start: date | None = None,
    calibration_end: date,
) -> RFMSummary:
    """Compute x, t_x, T and m_x per customer over [calibration_start, calibration_end].

    Customers are the ones whose first purchase falls in the period. Customers who bought
    before calibration_start are left out (counted in ``n_excluded_before_start``): the model
    starts each customer at acquisition, and theirs predates the period. Transactions after
    calibration_end are ignored. Customers come out sorted by id.
    """
    if calibration_start is not None and calibration_start > calibration_end:
        raise CalibrationError(
            f"calibration_start {calibration_start} is after calibration_end {calibration_end}"
        )
    end = _day(calibration_end)
    uniq, codes = np.unique(transactions.customer_ids, return_inverse=True)
    codes = codes.astype(np.intp)
    keep = transactions.dates <= end
    n_excluded = 0
    if calibration_start is not None:
        first_ever = np.full(len(uniq), np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first_ever, codes, transactions.dates.astype(np.int64))
        early = first_ever < _day(calibration_start).astype(np.int64)
        # Only customers who would otherwise be in the cohort count as excluded.
        active = np.zeros(len(uniq), dtype=bool)
        active[codes[keep]] = True
        n_excluded = int(np.count_nonzero(early & active))
        keep &= ~early[codes]

    day_codes, day_numbers, day_amounts = _purchase_days(
        codes[keep], transactions.dates[keep], transactions.amounts[keep]
    )
    if len(day_codes) == 0:
        raise CalibrationError(
            f"no customer made a first purchase between {calibration_start or 'the start'} "
            f"and {calibration_end}"
        )
    starts = np.flatnonzero(np.r_[True, day_codes[1:] != day_codes[:-1]])
    ends = np.r_[starts[1:], len(day_codes)]
    first, last = day_numbers[starts], day_numbers[ends - 1]
    x = (ends - starts - 1).astype(np.int64)
    repeat_amounts = day_amounts.copy()
    repeat_amounts[starts] = 0.0  # m_x leaves the first (acquisition) purchase out
    repeat_total = np.add.reduceat(repeat_amounts, starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        m_x = np.where(x > 0, repeat_total / np.maximum(x, 1), np.nan)
    end_number = end.astype(np.int64)
    return RFMSummary(
        customer_ids=uniq[day_codes[starts]],
        x=x,
        t_x=(last - first) / DAYS_PER_WEEK,
        T=(end_number - first) / DAYS_PER_WEEK,
        m_x=m_x,
        first_purchase=first.astype("datetime64[D]"),
        calibration_start=calibration_start,
        calibration_end=calibration_end,
        n_excluded_before_start=n_excluded,
    )


def holdout_repeat_counts(
    transactions: Transactions, summary: RFMSummary, holdout_end: date
) -> NDArray[np.int64]:
    """Purchase days in (calibration_end, holdout_end] for each customer of ``summary``."""
    if holdout_end < summary.calibration_end:
        raise CalibrationError(
            f"holdout_end {holdout_end} is before calibration_end {summary.calibration_end}"
        )
    window = (transactions.dates > _day(summary.calibration_end)) & (
        transactions.dates <= _day(holdout_end)
    )
    ids = transactions.customer_ids[window]
    position = np.searchsorted(summary.customer_ids, ids)
    position = np.minimum(position, len(summary) - 1)
    known = summary.customer_ids[position] == ids
    counts = np.zeros(len(summary), dtype=np.int64)
    if np.any(known):
        codes, _, _ = _purchase_days(
            position[known].astype(np.intp),
            transactions.dates[window][known],
            transactions.amounts[window][known],
        )
        np.add.at(counts, codes, 1)
    return counts


def repeat_purchase_histogram(x: ArrayLike, max_count: int) -> NDArray[np.int64]:
    """Customers with 0, 1, ..., max_count - 1 repeat purchases; the last bin is >= max_count."""
    if max_count < 1:
        raise CalibrationError(f"max_count must be >= 1, got {max_count}")
    counts = _count_array(x, "x")
    return np.bincount(np.minimum(counts, max_count), minlength=max_count + 1).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Input checks shared by the fits


def _float_array(values: ArrayLike, name: str, *, allow_nan: bool = False) -> NDArray[np.float64]:
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


def _count_array(values: ArrayLike, name: str) -> NDArray[np.int64]:
    array = _float_array(values, name)
    fractional = array != np.round(array)
    if np.any(fractional):
        i = int(np.argmax(fractional))
        raise CalibrationError(
            f"{name}: expected whole counts, got {float(array[i])!r} at index {i}"
        )
    return array.astype(np.int64)


def _same_length(**arrays: NDArray[np.generic]) -> int:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) != 1:
        described = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise CalibrationError(f"arrays differ in length: {described}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise CalibrationError(f"no customers: {', '.join(lengths)} are empty")
    return n


def _maximize(
    neg_mean_ll: Callable[[NDArray[np.float64]], tuple[float, NDArray[np.float64]]],
    start: NDArray[np.float64],
    names: Sequence[str],
    model: str,
) -> NDArray[np.float64]:
    """Minimize a mean negative log-likelihood over log-parameters; return the parameters."""
    bounds = [(-_LOG_BOUND, _LOG_BOUND)] * len(start)
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
    at_edge = [n for n, v in zip(names, result.x, strict=True) if abs(v) >= _LOG_BOUND - 1e-6]
    if at_edge:
        raise CalibrationError(
            f"{model} fit ran off to the edge of the parameter space for {', '.join(at_edge)}; "
            "the data do not identify the model (too few customers or repeat purchases?)"
        )
    return np.exp(result.x)


# ---------------------------------------------------------------------------------------------
# BG/NBD


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
    xs = _count_array(x, "x").astype(np.float64)
    tx = _float_array(t_x, "t_x")
    tt = _float_array(T, "T")
    _same_length(x=xs, t_x=tx, T=tt)
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
    r, alpha, a, b = _maximize(objective, start, ("r", "alpha", "a", "b"), "BG/NBD")
    log_likelihood = -objective(np.log([r, alpha, a, b]))[0] * n
    return BGNBDParams(float(r), float(alpha), float(a), float(b), float(log_likelihood), n)


# ---------------------------------------------------------------------------------------------
# Gamma-Gamma


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
    xs = _count_array(x, "x").astype(np.float64)
    ms = _float_array(m_x, "m_x", allow_nan=True)
    _same_length(x=xs, m_x=ms)
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
    p, q, gamma = _maximize(objective, start, ("p", "q", "gamma"), "Gamma-Gamma")
    log_likelihood = -objective(np.log([p, q, gamma]))[0] * n
    return GammaGammaParams(float(p), float(q), float(gamma), float(log_likelihood), n)


# ---------------------------------------------------------------------------------------------
# End to end


@dataclass(frozen=True, eq=False)
class CalibrationResult:
    """Both fits together with the summary they were fitted on."""

    summary: RFMSummary
    bgnbd: BGNBDParams
    gamma_gamma: GammaGammaParams
    source: str
    n_zero_spend: int = 0
    """Repeat buyers left out of the spend fit because their repeat purchases were worth 0."""


def calibrate(
    transactions: Transactions, calibration_start: date | None, calibration_end: date
) -> CalibrationResult:
    """Summarize the calibration period and fit BG/NBD and Gamma-Gamma on it.

    Repeat buyers whose repeat purchases are all worth 0 are left out of the spend fit only
    (counted in ``n_zero_spend``).
    """
    summary = summarize(
        transactions, calibration_start=calibration_start, calibration_end=calibration_end
    )
    # A zero mean spend has zero Gamma-Gamma density (free items, refunds netted out); those
    # few customers still count for the purchase model but cannot inform the spend model.
    zero_spend = (summary.x > 0) & (summary.m_x == 0)
    return CalibrationResult(
        summary=summary,
        bgnbd=fit_bgnbd(summary.x, summary.t_x, summary.T),
        gamma_gamma=fit_gamma_gamma(np.where(zero_spend, 0, summary.x), summary.m_x),
        source=transactions.source,
        n_zero_spend=int(np.count_nonzero(zero_spend)),
    )


def _significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def scenario_values(result: CalibrationResult, *, rounded: bool = True) -> dict[str, float]:
    """The ``[purchase]`` keys of a scenario file, rounded to 4 significant digits."""
    bg, gg = result.bgnbd, result.gamma_gamma
    values = {
        "r": bg.r,
        "alpha": bg.alpha,
        "a": bg.a,
        "b": bg.b,
        "spend_p": gg.p,
        "spend_q": gg.q,
        "spend_gamma": gg.gamma,
    }
    if not rounded:
        return values
    # Four digits is finer than the standard errors of any realistic fit.
    return {key: _significant(value) for key, value in values.items()}


def purchase_model(result: CalibrationResult, base: PurchaseModel | None = None) -> PurchaseModel:
    """The simulator's purchase model with the fit in place (other keys from ``base``,
    by default the shipped default scenario's)."""
    base = base if base is not None else load_scenario("default").purchase
    return base.model_copy(update=scenario_values(result, rounded=False))


def write_scenario_fragment(result: CalibrationResult, path: str | Path) -> None:
    """Write the fitted parameters as a TOML ``[purchase]`` table for a scenario file."""
    values = scenario_values(result)
    if values["spend_q"] <= 1.0:
        # The simulator needs a finite mean spend, which Gamma-Gamma has only for q > 1.
        raise CalibrationError(
            f"fitted spend_q = {values['spend_q']} <= 1 gives an infinite mean spend; "
            "the simulator's scenario files require spend_q > 1"
        )
    s = result.summary
    start = f"{s.calibration_start.isoformat()} to" if s.calibration_start else "up to"
    source = " ".join(result.source.splitlines())
    header = (
        f"# fitted by cvm calibrate on {source}\n"
        f"# calibration period {start} {s.calibration_end.isoformat()} (inclusive), "
        f"time unit weeks\n"
        f"# {len(s)} customers, {result.gamma_gamma.n_customers} repeat buyers in the spend fit; "
        f"log-likelihood BG/NBD {result.bgnbd.log_likelihood:.2f}, "
        f"Gamma-Gamma {result.gamma_gamma.log_likelihood:.2f}\n"
    )
    Path(path).write_text(header + tomli_w.dumps({"purchase": values}), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Command line (wired into ``cvm calibrate`` by cvm_rl.cli)
