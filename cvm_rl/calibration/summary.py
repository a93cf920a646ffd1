"""The recency / frequency / monetary summary of each customer that both models are fitted on.

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

Also here: repeat purchase days in a holdout period after ``calibration_end``, and the histogram
of repeat purchases that the fit is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cvm_rl.calibration._fitting import count_array
from cvm_rl.calibration.errors import CalibrationError
from cvm_rl.calibration.transactions import Transactions

DAYS_PER_WEEK = 7.0


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
    counts = count_array(x, "x")
    return np.bincount(np.minimum(counts, max_count), minlength=max_count + 1).astype(np.int64)
