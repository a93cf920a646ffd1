"""Calibration end to end: summarize the transactions, fit both models, and turn the fit into
the ``[purchase]`` parameters of a simulator scenario."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import tomli_w

from cvm_rl.calibration.bgnbd import BGNBDParams, fit_bgnbd
from cvm_rl.calibration.errors import CalibrationError
from cvm_rl.calibration.gamma_gamma import GammaGammaParams, fit_gamma_gamma
from cvm_rl.calibration.summary import RFMSummary, summarize
from cvm_rl.calibration.transactions import Transactions
from simulator.config import PurchaseModel, load_scenario


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


def significant(value: float, digits: int = 4) -> float:
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
    return {key: significant(value) for key, value in values.items()}


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
