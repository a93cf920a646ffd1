"""Calibrate the BG/NBD purchase model and Gamma-Gamma spend model on transaction data.

Time is measured in weeks, the unit of the simulator's scenario files. The parts:

* :mod:`~cvm_rl.calibration.transactions`: reading a transaction file (:func:`load_transactions`);
* :mod:`~cvm_rl.calibration.summary`: each customer's recency / frequency / monetary summary
  (:func:`summarize`) and its conventions, holdout counts and the repeat-purchase histogram;
* :mod:`~cvm_rl.calibration.bgnbd`: the BG/NBD purchase model, likelihood and fit;
* :mod:`~cvm_rl.calibration.gamma_gamma`: the Gamma-Gamma spend model, likelihood and fit;
* :mod:`~cvm_rl.calibration.result`: both fits end to end (:func:`calibrate`) and the
  simulator's ``[purchase]`` parameters made from them;
* :mod:`~cvm_rl.calibration.errors`: :class:`CalibrationError`, raised by all of them.
"""

from cvm_rl.calibration.bgnbd import BGNBDParams, bgnbd_log_likelihood, fit_bgnbd
from cvm_rl.calibration.errors import CalibrationError
from cvm_rl.calibration.gamma_gamma import (
    GammaGammaParams,
    fit_gamma_gamma,
    gamma_gamma_log_likelihood,
)
from cvm_rl.calibration.result import (
    CalibrationResult,
    calibrate,
    purchase_model,
    scenario_values,
    write_scenario_fragment,
)
from cvm_rl.calibration.summary import (
    RFMSummary,
    holdout_repeat_counts,
    repeat_purchase_histogram,
    summarize,
)
from cvm_rl.calibration.transactions import Column, Transactions, load_transactions

__all__ = [
    "BGNBDParams",
    "CalibrationError",
    "CalibrationResult",
    "Column",
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
    "purchase_model",
    "repeat_purchase_histogram",
    "scenario_values",
    "summarize",
    "write_scenario_fragment",
]
