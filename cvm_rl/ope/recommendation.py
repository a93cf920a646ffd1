"""The recommendation and each candidate's verdict.

The recommended candidate is the one whose primary lift (long run when evaluated, else single
step) has the highest lower confidence bound, and only if that bound is above 0; otherwise
the advice is to keep the logging policy. The logger's self-check passes when its own primary
lift intervals contain 0.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from cvm_rl.ope.estimators import SINGLE_STEP_PRIMARY
from cvm_rl.ope.formatting import format_interval
from cvm_rl.ope.results import (
    CandidateResult,
    DataSummary,
    LoggerValue,
    OpeResult,
    Recommendation,
    Settings,
)
from cvm_rl.ope.reward_model import RewardModelFit


def recommend(candidates: Sequence[CandidateResult], alpha: float) -> Recommendation:
    """The candidate whose primary lift has the highest lower bound, if that bound is > 0."""
    ranked = [c for c in candidates if not c.self_check]
    if not ranked:
        return Recommendation(None, "single_step", None, None, "no candidate was evaluated")
    horizon = ranked[0].primary[0]
    unit = "per customer over the logged weeks" if horizon == "long_run" else "per decision"
    level = f"{1 - alpha:.0%}"

    def lower(c: CandidateResult) -> float:
        low = c.primary[1].lift.low
        return low if math.isfinite(low) else -math.inf

    best = max(ranked, key=lower)
    _, estimate = best.primary
    lift = estimate.lift
    described = (
        f"{horizon.replace('_', '-')} lift {unit} {format_interval(lift, signed=True)} "
        f"({level} interval, {estimate.label})"
    )
    if lower(best) > 0:
        return Recommendation(
            best.name,
            horizon,
            estimate.estimator,
            lift,
            f"{best.name} has the highest lower bound of lift, above 0: {described}",
        )
    return Recommendation(
        None,
        horizon,
        estimate.estimator,
        lift,
        f"no candidate's lift is above 0 with {level} confidence; the highest lower bound is "
        f"{best.name}'s: {described}",
    )


def _verdict(candidate: CandidateResult, recommended: str | None) -> str:
    _, primary = candidate.primary
    lift = primary.lift
    if candidate.self_check:
        checked = [candidate.single_step_estimate(SINGLE_STEP_PRIMARY)]
        if candidate.long_run_primary is not None:
            checked.insert(0, primary)
        missed = [e for e in checked if not e.lift.low <= 0 <= e.lift.high]
        if not missed:
            return "self-check passed: the logger's own lift intervals contain 0"
        return (
            f"self-check failed: the logger's own {missed[0].label} lift interval "
            f"{format_interval(missed[0].lift)} excludes 0; by chance (one check in "
            f"{round(1 / primary.lift.alpha)} does) or wrong logged propensities"
        )
    if candidate.name == recommended:
        return "better than the logging policy: recommended"
    if lift.low > 0:
        return "better than the logging policy (a lower bound below the recommended one's)"
    if lift.high < 0:
        return "worse than the logging policy"
    return "no clear difference from the logging policy"


def finish_result(
    settings: Settings,
    data: DataSummary,
    logger: LoggerValue,
    reward_model: RewardModelFit,
    candidates: list[CandidateResult],
    notes: list[str],
) -> OpeResult:
    """The evaluation's result: the recommendation among ``candidates`` and each one's
    verdict."""
    recommendation = recommend(candidates, settings.alpha)
    finished = tuple(
        dataclasses.replace(c, verdict=_verdict(c, recommendation.candidate)) for c in candidates
    )
    return OpeResult(settings, data, logger, reward_model, finished, recommendation, tuple(notes))
