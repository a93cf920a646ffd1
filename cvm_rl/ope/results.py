"""What an evaluation returns: :class:`OpeResult` (the settings, the data, the logger's value,
the reward model's fit, each candidate's :class:`CandidateResult` and the recommendation) and
its JSON form (:meth:`OpeResult.to_dict`, the report's ``report.json``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cvm_rl.ope.diagnostics import WeightDiagnostics
from cvm_rl.ope.estimators import SINGLE_STEP_PRIMARY
from cvm_rl.ope.inputs import LogSource
from cvm_rl.ope.intervals import Interval, percentile_interval
from cvm_rl.ope.reward_model import RewardModelFit


@dataclass(frozen=True)
class Estimate:
    """One estimator's value of a candidate and its lift over the logger, both with
    intervals (the lift's from the same resamples: paired)."""

    estimator: str
    label: str
    value: Interval
    lift: Interval

    @classmethod
    def paired(
        cls,
        estimator: str,
        label: str,
        point: float,
        replicates: np.ndarray,
        logged: float,
        logged_replicates: np.ndarray,
        alpha: float,
    ) -> Estimate:
        """The value's percentile interval, and the lift's over the logger's value from the
        same resamples (so the logger's own noise cancels)."""
        return cls(
            estimator=estimator,
            label=label,
            value=percentile_interval(point, replicates, alpha),
            lift=percentile_interval(point - logged, replicates - logged_replicates, alpha),
        )


@dataclass(frozen=True)
class GroupValue:
    """Value per decision in one group of rows (a lifecycle stage or a segment)."""

    group: str
    rows: int
    share: float  # of all rows
    logged_mean_reward: float
    dm: float
    dr: float


@dataclass(frozen=True)
class ChannelShare:
    """Share of decisions per channel: what the logger did, what the candidate would do."""

    channel: str
    logger: float
    candidate: float


@dataclass(frozen=True)
class LongRunDiagnostics:
    """The weights long-run estimators rest on, week by week (step 1 = first decision)."""

    ess_share_by_step: tuple[float, ...]  # cumulative weights W_t (PDIS, WPDIS, DR, WDR)
    marginal_ess_share_by_step: tuple[float, ...]  # MIS's marginal weights w_t(s) rho_t
    min_ess_share: float
    collapse_step: int | None  # first step whose ESS share is below LONG_RUN_ESS_COLLAPSE
    final_max_weight: float


@dataclass(frozen=True)
class CandidateResult:
    name: str
    source: str
    self_check: bool
    single_step: tuple[Estimate, ...]
    long_run: tuple[Estimate, ...]
    long_run_primary: str | None
    long_run_primary_reason: str
    weights: WeightDiagnostics
    weight_rows: str  # which rows the weight diagnostics describe
    long_run_diagnostics: LongRunDiagnostics | None
    by_stage: tuple[GroupValue, ...]
    by_segment: tuple[GroupValue, ...]
    by_channel: tuple[ChannelShare, ...]
    warnings: tuple[str, ...]
    verdict: str = ""
    # The single-step importance weights behind ``weights`` (for the report's histogram).
    weight_values: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def single_step_estimate(self, estimator: str) -> Estimate:
        return next(e for e in self.single_step if e.estimator == estimator)

    def long_run_estimate(self, estimator: str) -> Estimate:
        return next(e for e in self.long_run if e.estimator == estimator)

    @property
    def primary(self) -> tuple[str, Estimate]:
        """("long_run" | "single_step", the primary estimate the verdict rests on)."""
        if self.long_run_primary is not None:
            return "long_run", self.long_run_estimate(self.long_run_primary)
        return "single_step", self.single_step_estimate(SINGLE_STEP_PRIMARY)


@dataclass(frozen=True)
class LoggerValue:
    """What the logging policy achieved in the log, with bootstrap intervals."""

    per_decision: Interval  # mean reward per decision
    per_customer: Interval | None  # mean return per customer over the logged weeks


@dataclass(frozen=True)
class DataSummary:
    source: LogSource
    decisions: int
    customers: int
    weeks: int | None  # decisions per customer, at most (None when streamed)
    mean_weeks: float | None
    first_decision: str
    last_decision: str
    models: dict[str, int]  # model_id -> decisions
    logging_probabilities: bool  # every row holds the logger's whole distribution
    streamed: bool = False
    reward_model_rows: int = 0


def model_counts(model_ids: np.ndarray) -> dict[str, int]:
    """Decisions per model id (:attr:`DataSummary.models`), sorted by id."""
    values, counts = np.unique(model_ids.astype(str), return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts, strict=True)}


@dataclass(frozen=True)
class Recommendation:
    candidate: str | None  # None: keep the logging policy
    horizon: str  # "long_run" | "single_step"
    estimator: str | None
    lift: Interval | None
    reason: str

    @property
    def line(self) -> str:
        return ("recommend " + self.candidate if self.candidate else "keep the logging policy") + (
            f": {self.reason}"
        )


@dataclass(frozen=True)
class Settings:
    alpha: float
    n_bootstrap: int
    seed: int
    long_run: bool
    bootstrap: str  # how the intervals were made, in words


@dataclass(frozen=True)
class OpeResult:
    settings: Settings
    data: DataSummary
    logger: LoggerValue
    reward_model: RewardModelFit
    candidates: tuple[CandidateResult, ...]
    recommendation: Recommendation
    notes: tuple[str, ...]

    def candidate(self, name: str) -> CandidateResult:
        return next(c for c in self.candidates if c.name == name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: floats (NaN as None), strings, lists."""
        return _jsonable(
            {
                "settings": _fields(self.settings),
                "recommendation": {
                    "candidate": self.recommendation.candidate,
                    "horizon": self.recommendation.horizon,
                    "estimator": self.recommendation.estimator,
                    "lift": _interval(self.recommendation.lift),
                    "reason": self.recommendation.reason,
                },
                "logger": {
                    "per_decision": _interval(self.logger.per_decision),
                    "per_customer": _interval(self.logger.per_customer),
                },
                "data": {**_fields(self.data), "source": _fields(self.data.source)},
                "reward_model": self.reward_model.to_dict(),
                "candidates": [_candidate_dict(c) for c in self.candidates],
                "notes": list(self.notes),
            }
        )


# --- JSON ------------------------------------------------------------------------------------


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


def _interval(interval: Interval | None) -> dict[str, float] | None:
    if interval is None:
        return None
    return {"estimate": interval.estimate, "low": interval.low, "high": interval.high}


def _estimate_dict(e: Estimate) -> dict[str, Any]:
    return {
        "estimator": e.estimator,
        "label": e.label,
        "value": _interval(e.value),
        "lift": _interval(e.lift),
    }


def _candidate_dict(c: CandidateResult) -> dict[str, Any]:
    horizon, primary = c.primary
    return {
        "name": c.name,
        "source": c.source,
        "self_check": c.self_check,
        "verdict": c.verdict,
        "primary": {"horizon": horizon, **_estimate_dict(primary)},
        "single_step": [_estimate_dict(e) for e in c.single_step],
        "long_run": [_estimate_dict(e) for e in c.long_run],
        "long_run_primary": c.long_run_primary,
        "long_run_primary_reason": c.long_run_primary_reason,
        "weights": {"rows": c.weight_rows, **c.weights.to_dict()},
        "long_run_weights": None
        if c.long_run_diagnostics is None
        else _fields(c.long_run_diagnostics),
        "by_stage": [_fields(g) for g in c.by_stage],
        "by_segment": [_fields(g) for g in c.by_segment],
        "by_channel": [_fields(s) for s in c.by_channel],
        "warnings": list(c.warnings),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
