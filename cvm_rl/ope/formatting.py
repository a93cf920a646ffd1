"""How an OPE report writes numbers, intervals and decision times (the HTML, the Markdown,
the verdicts and the recommendation all write them the same way)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np

from cvm_rl.ope.intervals import Interval


def format_number(value: float | int | None) -> str:
    """How the report writes a number: integers with thousands separators, floats with 4
    significant digits (no exponent from 1e-4 up; whole numbers from 1,000 up), "n/a" for a
    missing or non-finite value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def format_interval(interval: Interval | None, *, signed: bool = False) -> str:
    """``estimate [low, high]`` ("+" before a positive estimate when ``signed``)."""
    if interval is None:
        return "not evaluated"
    estimate = format_number(interval.estimate)
    if signed and interval.estimate > 0:
        estimate = "+" + estimate
    return f"{estimate} [{format_number(interval.low)}, {format_number(interval.high)}]"


def format_decision_time(us: int) -> str:
    """A decision time (microseconds since the epoch) as ``YYYY-MM-DD HH:MM:SS UTC``."""
    return datetime.fromtimestamp(us / 1e6, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
