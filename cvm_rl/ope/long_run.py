"""Long-run evaluation of one candidate: value per customer over the logged weeks, from each
customer's trajectory (the log's customer ids in decision-time order), with the lift over the
logged mean return paired on the same resamples of customers, the weights' diagnostics week
by week, and the primary estimator those diagnostics choose.

The primary long-run estimator (:func:`long_run_primary`) follows the weights' effective
sample size as a share of the customers, week by week: sequential DR (unbiased with right
propensities, whatever its Q model) while the cumulative importance weights keep at least
:data:`LONG_RUN_ESS_COLLAPSE` at every week; once they collapse (products of 52 weekly ratios
do, for any candidate that differs much from the logger), marginalized IS (MIS), whose
state-distribution ratios do not compound over the weeks. MIS rather than marginalized DR:
on the simulator (``experiments/ope_accuracy.py``, 10 seeds per size, two loggers) MIS had
the lowest long-run error of all estimators at 1M logged decisions, while MDR and WMDR
inherit the ridge Q model's extrapolation error (FQE's, which misses the truth by 11-35 %
there). When even the marginalized weights collapse, MIS stays primary with a warning: no
estimator held up in that regime.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cvm_rl.logs.arrays import LoggedDecisions
from cvm_rl.ope.estimators import LONG_RUN_LABELS, long_run_estimators
from cvm_rl.ope.inputs import LogInputError
from cvm_rl.ope.intervals import bootstrap_multiplicities
from cvm_rl.ope.results import Estimate, LongRunDiagnostics
from cvm_rl.ope.sequential import (
    MarginalizedIS,
    cumulative_weight_diagnostics,
    step_weight_diagnostics,
)
from cvm_rl.ope.trajectories import Trajectories
from simulator.config import Scenario

LONG_RUN_ESS_COLLAPSE = 0.1
"""Below this share of customers, the cumulative weights' effective sample size has collapsed:
the long-run primary estimator becomes MDR instead of sequential DR."""


def customer_trajectories(decisions: LoggedDecisions) -> Trajectories:
    """Each customer's decisions in time order (LogInputError when they cannot be built)."""
    data = decisions.data
    probabilities = decisions.probabilities
    complete = probabilities is not None and not np.isnan(probabilities).any()
    try:
        return Trajectories.from_rows(
            decisions.customer_ids.astype(str),
            decisions.decided_at_us,
            data.obs,
            data.mask,
            data.actions,
            data.propensities,
            data.rewards,
            logging_probabilities=probabilities if complete else None,
        )
    except ValueError as exc:
        raise LogInputError(str(exc)) from None


def trajectory_distribution(trajectories: Trajectories, flat: np.ndarray) -> np.ndarray:
    """(n, H, A) a candidate's distribution at every step, from its (N, A) distribution on
    the flat rows (padding: the neutral one-hot on action 0)."""
    assert trajectories.row_index is not None
    valid = trajectories.valid
    out = np.zeros((*valid.shape, flat.shape[1]))
    out[..., 0] = 1.0
    out[valid] = flat[trajectories.row_index[valid]]
    return out


def long_run_estimates(
    trajectories: Trajectories,
    action_dist: np.ndarray,
    returns: np.ndarray,
    logged_return_reps: np.ndarray,
    *,
    scenario: Scenario,
    alpha: float,
    n_bootstrap: int,
    seed: int,
) -> tuple[tuple[Estimate, ...], LongRunDiagnostics]:
    """Every long-run estimate with its lift over the logged mean return, paired over the
    same customer resamples as ``logged_return_reps``, and the weights' diagnostics."""
    estimators = long_run_estimators(scenario, seed)
    functions = [e.replicates(trajectories, action_dist) for e in estimators]
    n = trajectories.n_customers
    points = [float(f(np.ones((1, n)))[0]) for f in functions]
    draws = np.zeros((len(functions), n_bootstrap))
    start = 0
    for multiplicities in bootstrap_multiplicities(n, n_bootstrap, seed):
        stop = start + len(multiplicities)
        for k, function in enumerate(functions):
            draws[k, start:stop] = function(multiplicities)
        start = stop
    logged = float(returns.mean())
    estimates = tuple(
        Estimate.paired(
            e.estimator_name,
            LONG_RUN_LABELS[e.estimator_name],
            point,
            reps,
            logged,
            logged_return_reps,
            alpha,
        )
        for e, point, reps in zip(estimators, points, draws, strict=True)
    )
    cumulative = cumulative_weight_diagnostics(trajectories, action_dist)
    mis = next(e for e in estimators if type(e) is MarginalizedIS)
    assert isinstance(mis, MarginalizedIS)
    marginal = step_weight_diagnostics(
        mis.marginal_weights(trajectories, action_dist), trajectories.valid
    )
    share = cumulative.ess_share
    diagnostics = LongRunDiagnostics(
        ess_share_by_step=tuple(share.tolist()),
        marginal_ess_share_by_step=tuple(marginal.ess_share.tolist()),
        min_ess_share=float(share.min()),
        collapse_step=_first_below(share),
        final_max_weight=float(cumulative.max_weight[-1]),
    )
    return estimates, diagnostics


def _first_below(ess_share: Sequence[float] | np.ndarray) -> int | None:
    """The first week (1-based) whose effective sample size share is below the collapse
    threshold, None if none is."""
    below = np.flatnonzero(np.asarray(ess_share) < LONG_RUN_ESS_COLLAPSE)
    return int(below[0]) + 1 if len(below) else None


def long_run_primary(diagnostics: LongRunDiagnostics) -> tuple[str, str]:
    """(primary long-run estimator, why) by the rule of the module docstring."""
    threshold = f"{LONG_RUN_ESS_COLLAPSE:.0%}"
    if diagnostics.collapse_step is None:
        return (
            "dr",
            f"the cumulative importance weights keep an effective sample size of at least "
            f"{threshold} of the customers at every week, so sequential DR (unbiased with "
            "right propensities, whatever its Q model) is trusted",
        )
    collapsed = (
        f"the cumulative importance weights' effective sample size falls below {threshold} of "
        f"the customers at week {diagnostics.collapse_step}: estimators that multiply weekly "
        "weights (PDIS, WPDIS, DR, WDR) rest on a handful of customers"
    )
    marginal = _first_below(diagnostics.marginal_ess_share_by_step)
    if marginal is None:
        return (
            "mis",
            f"{collapsed}; the marginalized weights keep at least {threshold}, so marginalized "
            "IS, whose state ratios do not compound over the weeks and which was the most "
            "accurate long-run estimator on the simulator, is trusted",
        )
    return (
        "mis",
        f"{collapsed}, and even the marginalized weights fall below {threshold} at week "
        f"{marginal}: marginalized IS is reported as primary because no estimator did better "
        "on the simulator, but treat its interval as too narrow",
    )


def long_run_warnings(diagnostics: LongRunDiagnostics) -> list[str]:
    """Plain-language warnings about collapsed long-run weights (none when they hold up)."""
    warnings = []
    if diagnostics.collapse_step is not None:
        warnings.append(
            f"long run: the cumulative importance weights' effective sample size falls below "
            f"{LONG_RUN_ESS_COLLAPSE:.0%} of the customers at week {diagnostics.collapse_step} "
            f"and is {diagnostics.ess_share_by_step[-1]:.2%} at week "
            f"{len(diagnostics.ess_share_by_step)}: PDIS, WPDIS, DR and WDR are unreliable "
            "here; the marginalized estimators (MIS, MDR, WMDR) are less affected"
        )
    marginal = diagnostics.marginal_ess_share_by_step
    if marginal and min(marginal) < LONG_RUN_ESS_COLLAPSE:
        worst = int(np.argmin(marginal)) + 1
        warnings.append(
            f"long run: even the marginalized weights' effective sample size drops to "
            f"{min(marginal):.2%} of the customers (week {worst}): the candidate visits states "
            "the logger rarely reached; MIS rests on a few customers there and its interval is "
            "too narrow, and MDR leans on its Q model (FQE)"
        )
    return warnings
