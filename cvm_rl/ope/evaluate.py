"""Candidates against the logging policy: every estimator, the lift, the diagnostics and a
recommendation, from one decision log.

:func:`load_log` reads a log (an export directory of ``cvm logs export`` or the SQLite log
itself) into :class:`~cvm_rl.logs.arrays.LoggedDecisions`, refusing what OPE cannot use with
one line naming the column or the mismatch. :func:`evaluate_candidates` then values each
candidate policy on it:

* single step (value per decision: the week's reward): DM, IPS, SNIPS, DR, SNDR, Switch-DR
  and DRos, with a cross-fitted reward model on ``FeatureTransform.scaled`` features;
* long run (value per customer: the sum of its rewards over the logged weeks): PDIS, WPDIS,
  FQE, sequential DR and WDR, MIS, MDR and WMDR over per-customer trajectories;
* the lift over the logger, paired: single step, the estimate minus the logged mean reward on
  the SAME bootstrap resamples of rows; long run, the estimate minus the logged mean return
  per customer on the same resamples of customers;
* diagnostics (effective sample size, weight quantiles, support, the effective sample size of
  the cumulative weights week by week) with plain-language warnings, DM and DR values by
  lifecycle stage and segment (the observation's ``stage_*`` and ``segment_*`` one-hot
  features), and the share of decisions per channel under the logger and the candidate.

When every logged row holds the logger's whole distribution, the logger itself is evaluated
as one more candidate from those probabilities (:data:`LOGGER_CHECK`): a self-check whose lift
must be about 0.

Primary estimators and the recommendation. Single step: DR (unbiased whatever the reward
model when the propensities are right, and lower in variance than IPS). Long run, by the
weights' effective sample size as a share of the customers, week by week
(:func:`long_run_primary`): sequential DR while the cumulative importance weights keep at
least :data:`LONG_RUN_ESS_COLLAPSE` at every week; once they collapse (products of 52 weekly
ratios do, for any candidate that differs much from the logger), marginalized DR (MDR), whose
state-distribution ratios do not compound over the weeks and which stays consistent if either
those ratios or the Q model are right; and when even MIS's marginalized weights collapse (a
few rows of very large single-step weight), weighted MDR (WMDR), self-normalized week by week.
The recommended candidate is the one whose primary lift (long run when evaluated, else single
step) has the highest lower confidence bound, and only if that bound is above 0; otherwise
the advice is to keep the logging policy.

Memory. Long-run estimators need every customer's trajectory in memory (padded to the longest
one), so :func:`load_log` refuses logs of more than ``max_rows`` decisions.
:func:`evaluate_export_streaming` reads an export of any size in record batches for the
single-step estimators: IPS and SNIPS sums exactly, DM and DR with a reward model fitted on a
bounded uniform sample of rows (out-of-fold for the sampled rows), intervals from the Poisson
bootstrap (each row drawn Poisson(1) times per resample), diagnostics on the sample.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cvm_rl.logs.arrays import LoggedDecisions
from cvm_rl.ope.base import (
    BanditInputs,
    BaseOffPolicyEstimator,
    RatioPart,
    stack_terms,
)
from cvm_rl.ope.diagnostics import WeightDiagnostics, diagnose_bandit_feedback
from cvm_rl.ope.intervals import (
    Interval,
    bootstrap_multiplicities,
    check_alpha,
    check_n_bootstrap,
    percentile_interval,
)
from cvm_rl.ope.reward_model import CrossFittedRewardModel, RewardModelFit
from cvm_rl.ope.sequential import (
    FittedQEvaluation,
    MarginalizedDoublyRobust,
    MarginalizedIS,
    PerDecisionIS,
    SequentialDoublyRobust,
    SequentialEstimator,
    WeightedMarginalizedDoublyRobust,
    WeightedPerDecisionIS,
    WeightedSequentialDoublyRobust,
    cumulative_weight_diagnostics,
    step_weight_diagnostics,
)
from cvm_rl.ope.single_step import (
    DirectMethod,
    DoublyRobust,
    DoublyRobustWithShrinkage,
    InverseProbabilityWeighting,
    SelfNormalizedDR,
    SelfNormalizedIPS,
    SwitchDR,
)
from cvm_rl.ope.trajectories import Trajectories
from cvm_rl.policies.base import Policy
from cvm_rl.policies.features import FeatureTransform
from simulator.config import Scenario

if TYPE_CHECKING:
    import pyarrow as pa

LOGGER_CHECK = "logger (self-check)"
"""The candidate made of the logger's own logged probabilities (a lift of about 0 expected)."""
SINGLE_STEP_PRIMARY = "dr"
LONG_RUN_ESS_COLLAPSE = 0.1
"""Below this share of customers, the cumulative weights' effective sample size has collapsed:
the long-run primary estimator becomes MDR instead of sequential DR."""
SWITCH_TAU = 100.0
"""Switch-DR uses the reward model alone on rows weighing more than this (the weight at which
the diagnostics warn that one row counts like a hundred)."""
SHRINKAGE_LAMBDA = 100.0
"""DRos's shrinkage: weights shrunk to lambda w / (w^2 + lambda), at most 5 at lambda = 100."""
DEFAULT_MAX_ROWS = 1_000_000
"""Decisions held in memory at most (long-run estimators need them all at once)."""
REWARD_MODEL_SAMPLE_ROWS = 200_000
"""Rows the reward model is fitted on when an export is streamed."""
BATCH_ROWS = 65_536
"""Rows per record batch when an export is streamed."""
NO_CONTACT_CHANNEL = "no contact"
NO_GROUP = "(none)"

Kind = Literal["export", "sqlite", "arrays"]
ProgressCallback = Callable[[int, int, str], None]
"""Called as ``progress(done, total, description)`` before each step of an evaluation."""


# --- errors ----------------------------------------------------------------------------------


class OpeInputError(ValueError):
    """Input that off-policy evaluation cannot use; the message names the column, the
    candidate or the mismatch."""


class LogInputError(OpeInputError):
    """The log cannot be evaluated against (no propensities, no exploration, nothing read)."""


class CandidateError(OpeInputError):
    """A candidate cannot be evaluated on this log (another schema, no support)."""


# --- estimators ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LoggedMean(BaseOffPolicyEstimator):
    """The logger's observed mean reward as an estimator, so that its bootstrap replicates
    come from the same resamples as every estimator's (the lift is then paired)."""

    estimator_name = "logged"

    def ratio_parts(self, inputs: BanditInputs) -> tuple[RatioPart, ...]:
        return ((inputs.reward, None),)


SINGLE_STEP_LABELS: dict[str, str] = {
    "dm": "Direct method (DM)",
    "ipw": "Inverse probability weighting (IPS)",
    "snipw": "Self-normalized IPS (SNIPS)",
    "dr": "Doubly robust (DR)",
    "sndr": "Self-normalized DR (SNDR)",
    "switch-dr": f"Switch-DR (tau = {SWITCH_TAU:g})",
    "dr-os": f"DR with shrinkage (DRos, lambda = {SHRINKAGE_LAMBDA:g})",
}
LONG_RUN_LABELS: dict[str, str] = {
    "pdis": "Per-decision IS (PDIS)",
    "wpdis": "Weighted PDIS (WPDIS)",
    "fqe": "Fitted Q evaluation (FQE)",
    "dr": "Sequential doubly robust (DR)",
    "wdr": "Weighted sequential DR (WDR)",
    "mis": "Marginalized IS (MIS)",
    "mdr": "Marginalized DR (MDR)",
    "wmdr": "Weighted marginalized DR (WMDR)",
}


def single_step_estimators() -> list[BaseOffPolicyEstimator]:
    """The single-step estimators of the report, in its order."""
    return [
        DirectMethod(),
        InverseProbabilityWeighting(),
        SelfNormalizedIPS(),
        DoublyRobust(),
        SelfNormalizedDR(),
        SwitchDR(tau=SWITCH_TAU),
        DoublyRobustWithShrinkage(lambda_=SHRINKAGE_LAMBDA),
    ]


def long_run_estimators(scenario: Scenario, seed: int) -> list[SequentialEstimator]:
    """The long-run estimators of the report (ridge nuisance models on the scaled features,
    cross-fitted over customers), in its order."""
    features = FeatureTransform.from_scenario(scenario).scaled
    return [
        PerDecisionIS(),
        WeightedPerDecisionIS(),
        FittedQEvaluation(feature_map=features, seed=seed),
        SequentialDoublyRobust(feature_map=features, seed=seed),
        WeightedSequentialDoublyRobust(feature_map=features, seed=seed),
        MarginalizedIS(feature_map=features, seed=seed),
        MarginalizedDoublyRobust(feature_map=features, seed=seed),
        WeightedMarginalizedDoublyRobust(feature_map=features, seed=seed),
    ]


# --- reading the log -------------------------------------------------------------------------


@dataclass(frozen=True)
class LogSource:
    """Where the decisions came from and how rewards were completed."""

    path: str = ""
    kind: Kind = "arrays"
    reported: int | None = None  # rows with a reported outcome
    defaulted: int | None = None  # rows given the default reward (outcome window passed)
    pending: int | None = None  # rows left out: no outcome yet, inside the window
    default_reward: float | None = None
    outcome_window_days: float | None = None


@dataclass(frozen=True)
class LoadedLog:
    decisions: LoggedDecisions
    source: LogSource


def detect_log_kind(path: str | Path) -> Literal["export", "sqlite"]:
    """``"export"`` for a directory (of ``cvm logs export``), ``"sqlite"`` for a SQLite file."""
    root = Path(path)
    if root.is_dir():
        return "export"
    if not root.exists():
        raise LogInputError(f"{root}: no such file or directory")
    with root.open("rb") as fh:
        header = fh.read(16)
    if header == b"SQLite format 3\x00":
        return "sqlite"
    raise LogInputError(
        f"{root}: neither a decision log (SQLite file) nor an export directory of `cvm logs export`"
    )


def count_export_rows(path: str | Path) -> int:
    """Rows of an export (from the Parquet metadata: nothing is decoded)."""
    return int(_export_dataset(path).count_rows())


def load_log(
    path: str | Path,
    *,
    outcome_window_s: float = 7 * 86400,
    default_reward: float = 0.0,
    now_us: int | None = None,
    max_rows: int | None = DEFAULT_MAX_ROWS,
) -> LoadedLog:
    """The decisions of the log at ``path`` that have a reward, in memory, checked for what
    OPE needs. ``outcome_window_s``, ``default_reward`` and ``now_us`` complete a SQLite log's
    rewards as ``cvm logs export`` does (an export carries its own). More than ``max_rows``
    decisions are refused (long-run estimators hold them all)."""
    from cvm_rl.logs.convert import decisions_from_log, decisions_from_table
    from cvm_rl.logs.reader import OutcomeWindow
    from cvm_rl.logs.reader import now_us as wall_clock_us

    kind = detect_log_kind(path)
    if kind == "export":
        rows = count_export_rows(path)
        _check_max_rows(rows, max_rows, streamable=True)
        table = _read_export_table(path)
        check_export_table(table)
        # An export's pending rows (if it kept them) are left out by the converter.
        statuses = (
            table.column("outcome_status").to_pylist()
            if "outcome_status" in table.column_names
            else []
        )
        counts = _status_counts(statuses)
        decisions = _converted(lambda: decisions_from_table(table))
        source = LogSource(
            str(path),
            "export",
            reported=counts.get("reported", 0),
            defaulted=counts.get("default", 0),
            pending=counts.get("pending", 0),
        )
    else:
        # One "now" for the counts and the conversion, so both see the same window.
        now = wall_clock_us() if now_us is None else now_us
        window = OutcomeWindow(outcome_window_s, default_reward, now)
        counts = _sqlite_status_counts(path, window)
        _check_max_rows(sum(counts.values()), max_rows, streamable=False)
        decisions = _converted(
            lambda: decisions_from_log(
                path, outcome_window_s=outcome_window_s, default_reward=default_reward, now_us=now
            )
        )
        source = LogSource(
            str(path),
            "sqlite",
            reported=counts.get("reported", 0),
            defaulted=counts.get("default", 0),
            pending=counts.get("pending", 0),
            default_reward=default_reward,
            outcome_window_days=outcome_window_s / 86400,
        )
    check_decisions(decisions, pending=source.pending or 0)
    return LoadedLog(decisions, source)


def _check_max_rows(rows: int, max_rows: int | None, *, streamable: bool) -> None:
    if max_rows is None or rows <= max_rows:
        return
    way_out = (
        "or evaluate single-step only (long_run=False), which streams the export in record batches"
        if streamable
        else "or export it with `cvm logs export` and evaluate the export single-step only "
        "(long_run=False), which streams it in record batches"
    )
    raise LogInputError(
        f"the log has {rows:,} decisions, more than max_rows {max_rows:,}: long-run estimators "
        f"need every customer's trajectory in memory; raise max_rows if the memory allows, "
        f"{way_out}"
    )


def _converted(convert: Callable[[], LoggedDecisions]) -> LoggedDecisions:
    """Run a converter; its ValueErrors (a bad column, mixed schemas) become LogInputErrors."""
    try:
        return convert()
    except OpeInputError:
        raise
    except ValueError as exc:
        raise LogInputError(str(exc)) from None


def _export_dataset(path: str | Path) -> Any:
    import pyarrow.dataset as ds

    from cvm_rl.logs.export import read_models

    root = Path(path)
    try:
        read_models(root)
    except FileNotFoundError as exc:
        raise LogInputError(str(exc)) from None
    return ds.dataset(str(root), format="parquet", partitioning="hive")


def _read_export_table(path: str | Path) -> pa.Table:
    """The export as one table with its models in the schema metadata (whatever columns it
    has: the checks name the missing ones)."""
    import json

    from cvm_rl.logs.export import MODELS_METADATA_KEY, read_models

    table = _export_dataset(path).to_table()
    models = json.dumps(read_models(path), sort_keys=True).encode()
    return table.replace_schema_metadata({MODELS_METADATA_KEY: models})


def check_export_table(table: pa.Table | pa.RecordBatch) -> None:
    """An export's propensity and reward columns as OPE needs them, else a LogInputError
    naming the column, the first offending event and how many rows are affected."""
    import pyarrow.compute as pc

    names = set(table.schema.names)
    if "propensity" not in names:
        raise LogInputError(
            "propensity: the log has no propensity column: OPE needs the logging policy's "
            "probability of each logged action"
        )
    for column in ("reward", "event_id"):
        if column not in names:
            raise LogInputError(f"{column}: the log has no {column} column (not an export?)")
    propensity = table.column("propensity")
    event_ids = table.column("event_id")
    missing = pc.is_null(propensity, nan_is_null=True)
    if pc.any(missing).as_py():
        _raise_rows(
            "propensity",
            missing,
            event_ids,
            "has no propensity",
            ": OPE needs the logging policy's probability of each logged action",
        )
    outside = pc.or_(pc.less_equal(propensity, 0.0), pc.greater(propensity, 1.0))
    if pc.any(outside).as_py():
        first = pc.filter(propensity, outside)[0].as_py()
        _raise_rows("propensity", outside, event_ids, f"is {first:g}, outside (0, 1]")
    reward = table.column("reward")
    not_finite = pc.and_(pc.is_valid(reward), pc.invert(pc.is_finite(reward)))
    if pc.any(not_finite).as_py():
        first = pc.filter(reward, not_finite)[0].as_py()
        _raise_rows("reward", not_finite, event_ids, f"is {first}")


def _rows(count: int) -> str:
    return f"{count:,} row" + ("" if count == 1 else "s")


def _raise_rows(column: str, bad: Any, event_ids: Any, problem: str, why: str = "") -> None:
    import pyarrow.compute as pc

    count = int(pc.sum(bad).as_py())
    first = pc.filter(event_ids, bad)[0].as_py()
    raise LogInputError(f"{column}: decision {first!r} {problem} ({_rows(count)} in all){why}")


def _status_counts(statuses: Iterable[str]) -> dict[str, int]:
    values, counts = np.unique(np.asarray(list(statuses), dtype=object), return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts, strict=True)}


def _sqlite_status_counts(path: str | Path, window: Any) -> dict[str, int]:
    """Decisions of the SQLite log by outcome status, by the rule the export applies."""
    from cvm_rl.logs.reader import CHUNK_ROWS, open_read_only
    from cvm_rl.logs.records import DecisionLogError

    totals: dict[str, int] = {}
    try:
        with open_read_only(path) as reader, reader.snapshot():
            for rows in reader.chunks(CHUNK_ROWS):
                for status, count in _status_counts(window.status(rows)).items():
                    totals[status] = totals.get(status, 0) + count
    except (FileNotFoundError, DecisionLogError) as exc:
        raise LogInputError(str(exc)) from None
    return totals


def check_decisions(decisions: LoggedDecisions, *, pending: int = 0) -> None:
    """What every evaluation needs of the converted rows (LogInputError otherwise): some rows,
    propensities in (0, 1], finite rewards, and exploration (a propensity below 1)."""
    if not len(decisions):
        raise _nothing_to_evaluate(pending)
    data = decisions.data
    bad = ~((data.propensities > 0) & (data.propensities <= 1))
    if bad.any():
        row = int(np.argmax(bad))
        raise LogInputError(
            f"propensity: decision {decisions.event_ids[row]!r} has propensity "
            f"{data.propensities[row]:g}, outside (0, 1] ({_rows(int(bad.sum()))} in all)"
        )
    bad = ~np.isfinite(data.rewards)
    if bad.any():
        row = int(np.argmax(bad))
        raise LogInputError(
            f"reward: decision {decisions.event_ids[row]!r} has reward {data.rewards[row]} "
            f"({_rows(int(bad.sum()))} in all)"
        )
    if (data.propensities == 1).all():
        raise LogInputError(_NO_EXPLORATION)


def _nothing_to_evaluate(pending: int) -> LogInputError:
    if pending:
        return LogInputError(
            f"outcome_status: all {pending:,} decisions are pending (no outcome yet, inside "
            "the outcome window): nothing to evaluate yet; wait for the outcomes or shorten "
            "the outcome window"
        )
    return LogInputError("the log holds no decisions")


_NO_EXPLORATION = (
    "propensity: every logged propensity is 1: the logging policy never explored, so the log "
    "shows only what it chose; OPE cannot evaluate a different policy from it (serve with "
    "exploration, e.g. cvm serve --exploration epsilon --epsilon 0.1)"
)


# --- candidates ------------------------------------------------------------------------------


def schema_mismatch(
    features: Sequence[str],
    actions: Sequence[str],
    log_features: Sequence[str],
    log_actions: Sequence[str],
) -> str | None:
    """The first difference between a policy's schema and the log's, in words (None if the
    same)."""
    for what, mine, theirs in (
        ("feature", list(features), list(log_features)),
        ("action", list(actions), list(log_actions)),
    ):
        if mine == theirs:
            continue
        for i, (a, b) in enumerate(zip(mine, theirs, strict=False)):
            if a != b:
                return f"{what} {i} is {a!r}, the log's is {b!r}"
        return f"it has {len(mine)} {what}s, the log has {len(theirs)}"
    return None


def _check_candidates(decisions: LoggedDecisions, candidates: Mapping[str, Policy]) -> None:
    if not candidates:
        raise CandidateError("no candidate policy to evaluate")
    for name, policy in candidates.items():
        if name == LOGGER_CHECK:
            raise CandidateError(f"{name!r} is the name of the logger's self-check; rename it")
        if getattr(policy, "uses_latent_state", False):
            raise CandidateError(
                f"{name}: reads the simulator's latent state, which a log does not hold; it "
                "cannot be evaluated off-policy"
            )
        mismatch = schema_mismatch(
            policy.feature_names,
            policy.scenario.action_names(),
            decisions.feature_names,
            decisions.action_names,
        )
        if mismatch is not None:
            raise CandidateError(
                f"{name}: its features or actions differ from the log's ({mismatch})"
            )


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """One estimator's value of a candidate and its lift over the logger, both with
    intervals (the lift's from the same resamples: paired)."""

    estimator: str
    label: str
    value: Interval
    lift: Interval


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


# --- how numbers are written ----------------------------------------------------------------


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
    if interval is None:
        return "not evaluated"
    estimate = format_number(interval.estimate)
    if signed and interval.estimate > 0:
        estimate = "+" + estimate
    return f"{estimate} [{format_number(interval.low)}, {format_number(interval.high)}]"


# --- single-step sums ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Rows:
    """Decisions and what every candidate's single-step terms share: scaled features' reward
    model, lifecycle stage and segment of each row."""

    obs: np.ndarray
    mask: np.ndarray
    actions: np.ndarray
    pscore: np.ndarray
    rewards: np.ndarray
    estimated_rewards: np.ndarray
    logging_probabilities: np.ndarray | None
    stage: np.ndarray  # group index per row; len(stage names) = no stage
    segment: np.ndarray

    @classmethod
    def of(
        cls,
        decisions: LoggedDecisions,
        estimated_rewards: np.ndarray,
        logging_probabilities: np.ndarray | None,
        groups: _Groups,
    ) -> _Rows:
        data = decisions.data
        return cls(
            obs=data.obs,
            mask=data.mask,
            actions=data.actions,
            pscore=data.propensities,
            rewards=data.rewards,
            estimated_rewards=estimated_rewards,
            logging_probabilities=logging_probabilities,
            stage=groups.index(data.obs, groups.stage_columns),
            segment=groups.index(data.obs, groups.segment_columns),
        )

    def __len__(self) -> int:
        return len(self.rewards)


@dataclass(frozen=True)
class _Groups:
    """Group names from the one-hot observation columns ``{prefix}_*``."""

    stages: tuple[str, ...]
    segments: tuple[str, ...]
    stage_columns: np.ndarray
    segment_columns: np.ndarray
    channels: tuple[str, ...]
    channel_of_action: np.ndarray  # (A,) channel index per action

    @classmethod
    def of(cls, feature_names: Sequence[str], action_names: Sequence[str]) -> _Groups:
        def one_hot(prefix: str) -> tuple[tuple[str, ...], np.ndarray]:
            columns = [i for i, n in enumerate(feature_names) if n.startswith(prefix)]
            return tuple(feature_names[i][len(prefix) :] for i in columns), np.array(
                columns, dtype=np.intp
            )

        stages, stage_columns = one_hot("stage_")
        segments, segment_columns = one_hot("segment_")
        channel_names = [
            name.split("@", 1)[1] if "@" in name else NO_CONTACT_CHANNEL for name in action_names
        ]
        channels = tuple(dict.fromkeys(channel_names))
        return cls(
            stages,
            segments,
            stage_columns,
            segment_columns,
            channels,
            np.array([channels.index(c) for c in channel_names], dtype=np.intp),
        )

    def index(self, obs: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """The set one-hot column of each row (len(columns) where none is set)."""
        if not len(columns):
            return np.zeros(len(obs), dtype=np.intp)
        block = obs[:, columns] > 0.5
        found: np.ndarray = np.where(block.any(axis=1), np.argmax(block, axis=1), len(columns))
        return found


class _RatioSums:
    """Running sums of the per-row terms of ``estimators`` (the first is the logged mean),
    at multiplicity 1 and at each bootstrap resample's multiplicities: every single-step
    estimator is a sum of ratios of such sums, so batches of rows can be added one at a time
    and the resamples never materialized."""

    def __init__(self, estimators: Sequence[BaseOffPolicyEstimator], n_bootstrap: int) -> None:
        self.estimators = list(estimators)
        self.n_bootstrap = n_bootstrap
        self.plans: list[list[tuple[int, int | None]]] | None = None
        self.point = np.zeros(0)
        self.rows = 0.0
        self.boot = np.zeros((n_bootstrap, 0))
        self.boot_rows = np.zeros(n_bootstrap)

    def add(self, inputs: BanditInputs, blocks: Iterator[np.ndarray]) -> None:
        stacked, plans = stack_terms(self.estimators, inputs)
        if self.plans is None:
            self.plans = plans
            self.point = np.zeros(len(stacked))
            self.boot = np.zeros((self.n_bootstrap, len(stacked)))
        elif plans != self.plans:  # pragma: no cover - the estimators' structure is fixed
            raise RuntimeError("estimator terms changed between batches")
        self.point += stacked.sum(axis=1)
        self.rows += inputs.n
        start = 0
        for multiplicities in blocks:
            stop = start + len(multiplicities)
            self.boot[start:stop] += multiplicities @ stacked.T
            self.boot_rows[start:stop] += multiplicities.sum(axis=1)
            start = stop

    def values(self) -> tuple[np.ndarray, np.ndarray]:
        """(E,) estimates and (E, B) replicates (NaN where a resample's weights vanish)."""
        assert self.plans is not None
        points = np.zeros(len(self.plans))
        replicates = np.zeros((len(self.plans), self.n_bootstrap))
        with np.errstate(divide="ignore", invalid="ignore"):
            for k, plan in enumerate(self.plans):
                for num, den in plan:
                    points[k] += self.point[num] / (self.rows if den is None else self.point[den])
                    replicates[k] += self.boot[:, num] / (
                        self.boot_rows if den is None else self.boot[:, den]
                    )
        return points, replicates


@dataclass
class _GroupSums:
    """Per-group sums of the rows, the logged rewards and one candidate's DM and DR terms."""

    n_groups: int
    rows: np.ndarray = field(init=False)
    reward: np.ndarray = field(init=False)
    dm: np.ndarray = field(init=False)
    dr: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.rows, self.reward, self.dm, self.dr = (np.zeros(self.n_groups) for _ in range(4))

    def add(self, group: np.ndarray, reward: np.ndarray, dm: np.ndarray, dr: np.ndarray) -> None:
        for total, values in ((self.rows, None), (self.reward, reward), (self.dm, dm)):
            total += np.bincount(group, weights=values, minlength=self.n_groups)
        self.dr += np.bincount(group, weights=dr, minlength=self.n_groups)

    def values(self, names: Sequence[str]) -> tuple[GroupValue, ...]:
        total = self.rows.sum()
        out = []
        for g, name in enumerate([*names, NO_GROUP]):
            if self.rows[g] == 0:
                continue
            rows = self.rows[g]
            out.append(
                GroupValue(
                    group=name,
                    rows=int(rows),
                    share=float(rows / total),
                    logged_mean_reward=float(self.reward[g] / rows),
                    dm=float(self.dm[g] / rows),
                    dr=float(self.dr[g] / rows),
                )
            )
        return tuple(out)


class _CandidateSums:
    """Everything single-step about one candidate, added batch by batch."""

    def __init__(self, groups: _Groups, n_bootstrap: int) -> None:
        self.groups = groups
        self.ratios = _RatioSums([_LoggedMean(), *single_step_estimators()], n_bootstrap)
        self.by_stage = _GroupSums(len(groups.stages) + 1)
        self.by_segment = _GroupSums(len(groups.segments) + 1)
        self.candidate_channels = np.zeros(len(groups.channels))
        self.logger_channels = np.zeros(len(groups.channels))
        self.weight_sum = 0.0

    def add(self, rows: _Rows, action_dist: np.ndarray, blocks: Iterator[np.ndarray]) -> None:
        inputs = BanditInputs.validate(
            rows.rewards, rows.actions, rows.pscore, action_dist, rows.estimated_rewards
        )
        self.ratios.add(inputs, blocks)
        dm = inputs.q_target
        dr = dm + inputs.weight * inputs.residual
        self.by_stage.add(rows.stage, rows.rewards, dm, dr)
        self.by_segment.add(rows.segment, rows.rewards, dm, dr)
        n_channels = len(self.groups.channels)
        by_action = action_dist.sum(axis=0)
        self.candidate_channels += np.bincount(
            self.groups.channel_of_action, weights=by_action, minlength=n_channels
        )
        self.logger_channels += np.bincount(
            self.groups.channel_of_action[rows.actions], minlength=n_channels
        )
        self.weight_sum += float(inputs.weight.sum())

    def channel_shares(self) -> tuple[ChannelShare, ...]:
        n = self.ratios.rows
        return tuple(
            ChannelShare(channel, float(self.logger_channels[c] / n), float(share / n))
            for c, (channel, share) in enumerate(
                zip(self.groups.channels, self.candidate_channels, strict=True)
            )
        )


def _check_support(name: str, sums: _CandidateSums) -> None:
    """A candidate that never takes a logged action cannot be evaluated (SNIPS is 0/0)."""
    if sums.weight_sum == 0:
        raise CandidateError(
            f"{name}: never takes the action the logger took, in any of the "
            f"{int(sums.ratios.rows):,} rows (every importance weight is 0): it puts all its "
            "mass on actions the logger never takes here, so OPE cannot evaluate it from this log"
        )


def _single_step_estimates(
    sums: _RatioSums, alpha: float
) -> tuple[tuple[Estimate, ...], Interval, np.ndarray]:
    """Each estimator's value and paired lift, the logger's mean reward with its interval,
    and the logger's replicates."""
    points, replicates = sums.values()
    logged, logged_replicates = points[0], replicates[0]
    estimates = tuple(
        Estimate(
            estimator=est.estimator_name,
            label=SINGLE_STEP_LABELS[est.estimator_name],
            value=percentile_interval(point, reps, alpha),
            lift=percentile_interval(point - logged, reps - logged_replicates, alpha),
        )
        for est, point, reps in zip(sums.estimators[1:], points[1:], replicates[1:], strict=True)
    )
    return estimates, percentile_interval(logged, logged_replicates, alpha), logged_replicates


# --- long run --------------------------------------------------------------------------------


def _trajectories(decisions: LoggedDecisions) -> Trajectories:
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


def _trajectory_distribution(trajectories: Trajectories, flat: np.ndarray) -> np.ndarray:
    """(n, H, A) a candidate's distribution at every step, from its (N, A) distribution on
    the flat rows (padding: the neutral one-hot on action 0)."""
    assert trajectories.row_index is not None
    valid = trajectories.valid
    out = np.zeros((*valid.shape, flat.shape[1]))
    out[..., 0] = 1.0
    out[valid] = flat[trajectories.row_index[valid]]
    return out


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
            "mdr",
            f"{collapsed}; the marginalized weights keep at least {threshold}, so marginalized "
            "DR, whose state ratios do not compound over the weeks, is trusted",
        )
    return (
        "wmdr",
        f"{collapsed}, and even the marginalized weights fall below {threshold} at week "
        f"{marginal}: weighted marginalized DR, self-normalized week by week so that a few "
        "large weights cannot carry it outside the range of the values, is trusted",
    )


def _long_run_warnings(diagnostics: LongRunDiagnostics) -> list[str]:
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
            "the logger rarely reached, and MDR leans on its Q model (FQE) there"
        )
    return warnings


# --- evaluation ------------------------------------------------------------------------------


def _candidate_distribution(name: str, policy: Policy, obs: np.ndarray, mask: np.ndarray) -> Any:
    try:
        return policy.action_probabilities(obs, mask)
    except ValueError as exc:
        raise CandidateError(f"{name}: {exc}") from None


def _distributions(
    names: Sequence[str],
    candidates: Mapping[str, Policy],
    decisions: LoggedDecisions,
    logging_probabilities: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Each candidate's (N, A) distribution on the rows; the self-check's is the logger's."""
    out = {}
    for name in names:
        if name == LOGGER_CHECK:
            assert logging_probabilities is not None
            out[name] = logging_probabilities
        else:
            out[name] = _candidate_distribution(
                name, candidates[name], decisions.data.obs, decisions.data.mask
            )
    return out


def _single_step_candidate(
    name: str,
    sums: _CandidateSums,
    diagnosed: LoggedDecisions,
    dist: np.ndarray,
    logging_probabilities: np.ndarray | None,
    *,
    alpha: float,
    weight_rows: str,
    source: str,
    long_run_reason: str,
) -> tuple[CandidateResult, Interval]:
    """The candidate's single-step result (weights diagnosed on the ``diagnosed`` rows, on
    which ``dist`` is its distribution) and the logger's mean reward."""
    _check_support(name, sums)
    single, logger_reward, _ = _single_step_estimates(sums.ratios, alpha)
    data = diagnosed.data
    try:
        weights = diagnose_bandit_feedback(
            data.actions, data.propensities, dist, logging_probabilities
        )
    except ValueError as exc:
        raise LogInputError(str(exc)) from None
    groups = sums.groups
    result = CandidateResult(
        name=name,
        source="the logger's logged probabilities" if name == LOGGER_CHECK else source,
        self_check=name == LOGGER_CHECK,
        single_step=single,
        long_run=(),
        long_run_primary=None,
        long_run_primary_reason=long_run_reason,
        weights=weights,
        weight_rows=weight_rows,
        long_run_diagnostics=None,
        by_stage=sums.by_stage.values(groups.stages),
        by_segment=sums.by_segment.values(groups.segments),
        by_channel=sums.channel_shares(),
        warnings=tuple(f"single step: {w}" for w in weights.warnings),
        weight_values=dist[np.arange(len(diagnosed)), data.actions] / data.propensities,
    )
    return result, logger_reward


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


def _finish(
    settings: Settings,
    data: DataSummary,
    logger: LoggerValue,
    reward_model: RewardModelFit,
    candidates: list[CandidateResult],
    notes: list[str],
) -> OpeResult:
    recommendation = recommend(candidates, settings.alpha)
    finished = tuple(
        dataclasses.replace(c, verdict=_verdict(c, recommendation.candidate)) for c in candidates
    )
    return OpeResult(settings, data, logger, reward_model, finished, recommendation, tuple(notes))


MEMORY_NOTE = (
    "Long-run estimators hold every customer's trajectory in memory (customers x weeks x "
    "features, padded to the longest trajectory); logs of more decisions than max_rows are "
    "refused for them, while single-step estimates of an export can stream in record batches."
)


def evaluate_candidates(
    decisions: LoggedDecisions,
    candidates: Mapping[str, Policy],
    *,
    scenario: Scenario,
    alpha: float = 0.05,
    n_bootstrap: int = 200,
    seed: int = 0,
    long_run: bool = True,
    reward_model: CrossFittedRewardModel | None = None,
    self_check: bool = True,
    source: LogSource | None = None,
    sources: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
) -> OpeResult:
    """Every candidate against the logger of ``decisions``, in memory (see the module
    docstring). ``scenario`` gives the reward and Q models their feature scaling;
    ``sources`` describes each candidate (e.g. its bundle path); ``source`` the log."""
    alpha = check_alpha(alpha)
    check_n_bootstrap(n_bootstrap)
    check_decisions(decisions)
    _check_candidates(decisions, candidates)
    source = source or LogSource()
    sources = sources or {}
    reward_model = reward_model or CrossFittedRewardModel(seed=seed)
    data = decisions.data
    n, n_actions = len(decisions), len(decisions.action_names)
    probabilities = decisions.probabilities
    complete = probabilities is not None and not np.isnan(probabilities).any()
    logging_dist = probabilities if complete else None

    n_candidates = len(candidates) + (1 if self_check and logging_dist is not None else 0)
    total = 2 + n_candidates * (2 if long_run else 1) + (1 if long_run else 0)
    done = 0

    def step(description: str) -> None:
        nonlocal done
        if progress is not None:
            progress(done, total, description)
        done += 1

    step("fitting the reward model")
    features = FeatureTransform.from_scenario(scenario).scaled(data.obs)
    fit = reward_model.fit_predict(features, data.actions, data.rewards, n_actions)
    groups = _Groups.of(decisions.feature_names, decisions.action_names)
    rows = _Rows.of(decisions, fit.estimated_rewards, logging_dist, groups)
    step("candidate distributions")
    names = [*candidates, *([LOGGER_CHECK] if self_check and logging_dist is not None else [])]
    dists = _distributions(names, candidates, decisions, logging_dist)

    trajectories = returns = logged_return_reps = None
    logger_return: Interval | None = None
    if long_run:
        step("per-customer trajectories")
        trajectories = _trajectories(decisions)
        if trajectories.n_customers < 4:
            raise LogInputError(
                f"customer_id: long-run estimators need at least 4 customers (cross-fitted "
                f"over 2 folds), the log has {trajectories.n_customers}; evaluate single-step "
                "only"
            )
        returns = trajectories.returns()
        logged_return_reps = np.concatenate(
            [
                m @ returns / m.sum(axis=1)
                for m in bootstrap_multiplicities(trajectories.n_customers, n_bootstrap, seed)
            ]
        )
        logger_return = percentile_interval(float(returns.mean()), logged_return_reps, alpha)

    results = []
    for name, dist in dists.items():
        step(f"{name}: single-step estimators")
        sums = _CandidateSums(groups, n_bootstrap)
        sums.add(rows, dist, bootstrap_multiplicities(n, n_bootstrap, seed))
        result, logger_reward = _single_step_candidate(
            name,
            sums,
            decisions,
            dist,
            logging_dist,
            alpha=alpha,
            weight_rows=f"all {n:,} rows",
            source=sources.get(name, ""),
            long_run_reason="long-run estimators not run",
        )
        if trajectories is not None and returns is not None and logged_return_reps is not None:
            step(f"{name}: long-run estimators")
            long_estimates, long_diagnostics = _long_run(
                trajectories,
                _trajectory_distribution(trajectories, dist),
                returns,
                logged_return_reps,
                scenario=scenario,
                alpha=alpha,
                n_bootstrap=n_bootstrap,
                seed=seed,
            )
            primary, reason = long_run_primary(long_diagnostics)
            result = dataclasses.replace(
                result,
                long_run=long_estimates,
                long_run_primary=primary,
                long_run_primary_reason=reason,
                long_run_diagnostics=long_diagnostics,
                warnings=result.warnings + tuple(_long_run_warnings(long_diagnostics)),
            )
        results.append(result)
    counts = np.unique(decisions.customer_ids.astype(str), return_counts=True)[1]
    summary = DataSummary(
        source=source,
        decisions=n,
        customers=len(counts),
        weeks=int(counts.max()),
        mean_weeks=float(counts.mean()),
        first_decision=_iso(int(decisions.decided_at_us.min())),
        last_decision=_iso(int(decisions.decided_at_us.max())),
        models=_model_counts(decisions.model_ids),
        logging_probabilities=complete,
        reward_model_rows=n,
    )
    settings = Settings(
        alpha,
        n_bootstrap,
        seed,
        long_run,
        f"percentile bootstrap, {n_bootstrap} resamples (seed {seed}) of rows for single-step "
        "values and of customers for long-run values; each lift from the same resamples as "
        "its estimate (paired); nuisance models fitted once",
    )
    notes = [MEMORY_NOTE] if long_run else []
    if progress is not None:
        progress(total, total, "done")
    return _finish(
        settings, summary, LoggerValue(logger_reward, logger_return), fit, results, notes
    )


def _long_run(
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
        Estimate(
            estimator=e.estimator_name,
            label=LONG_RUN_LABELS[e.estimator_name],
            value=percentile_interval(point, reps, alpha),
            lift=percentile_interval(point - logged, reps - logged_return_reps, alpha),
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


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _model_counts(model_ids: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(model_ids.astype(str), return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts, strict=True)}


# --- streaming an export ---------------------------------------------------------------------


def _poisson_blocks(
    n: int, n_bootstrap: int, rng: np.random.Generator, block: int = 8
) -> Iterator[np.ndarray]:
    """Blocks of Poisson(1) multiplicities (b, n): the streaming bootstrap (each row drawn a
    Poisson number of times per resample, so batches can be resampled independently)."""
    for start in range(0, n_bootstrap, block):
        yield rng.poisson(1.0, (min(block, n_bootstrap - start), n)).astype(np.float64)


@dataclass
class _Sample:
    """A bounded uniform sample of rows: those with the smallest seeded random keys."""

    limit: int
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0))
    decisions: LoggedDecisions | None = None

    def offer(self, decisions: LoggedDecisions, keys: np.ndarray) -> None:
        if self.decisions is not None:
            if len(self.keys) >= self.limit:
                keep = np.flatnonzero(keys < self.keys.max())
                decisions, keys = decisions.take(keep), keys[keep]
            decisions, order = _concatenate(self.decisions, decisions)
            keys = np.concatenate([self.keys, keys])[order]
        if len(keys) > self.limit:
            # increasing indices keep the rows in time order
            chosen = np.sort(np.argpartition(keys, self.limit - 1)[: self.limit])
            decisions, keys = decisions.take(chosen), keys[chosen]
        self.decisions, self.keys = decisions, keys


def _concatenate(a: LoggedDecisions, b: LoggedDecisions) -> tuple[LoggedDecisions, np.ndarray]:
    """The rows of both in time order, and that order (indices into a's rows then b's)."""
    from cvm_rl.logs.arrays import LoggedData

    def both(x: np.ndarray | None, y: np.ndarray | None) -> np.ndarray | None:
        return None if x is None or y is None else np.concatenate([x, y])

    order = np.argsort(np.concatenate([a.decided_at_us, b.decided_at_us]), kind="stable")
    probabilities = both(a.probabilities, b.probabilities)
    joined = LoggedDecisions(
        data=LoggedData(
            obs=np.concatenate([a.data.obs, b.data.obs])[order],
            mask=np.concatenate([a.data.mask, b.data.mask])[order],
            actions=np.concatenate([a.data.actions, b.data.actions])[order],
            propensities=np.concatenate([a.data.propensities, b.data.propensities])[order],
            rewards=np.concatenate([a.data.rewards, b.data.rewards])[order],
            executed=np.concatenate([a.data.executed_actions, b.data.executed_actions])[order],
        ),
        event_ids=np.concatenate([a.event_ids, b.event_ids])[order],
        customer_ids=np.concatenate([a.customer_ids, b.customer_ids])[order],
        decided_at_us=np.concatenate([a.decided_at_us, b.decided_at_us])[order],
        model_ids=np.concatenate([a.model_ids, b.model_ids])[order],
        probabilities=None if probabilities is None else probabilities[order],
        feature_names=a.feature_names,
        action_names=a.action_names,
    )
    return joined, order


def _export_batches(path: str | Path, batch_rows: int) -> Iterator[LoggedDecisions]:
    """The export's rows with a reward, one record batch at a time, checked and converted."""
    import pyarrow as pa

    from cvm_rl.logs.convert import TABLE_COLUMNS, decisions_from_table
    from cvm_rl.logs.export import read_models

    models = read_models(path)
    dataset = _export_dataset(path)
    present = set(dataset.schema.names)
    columns = [c for c in (*TABLE_COLUMNS, "outcome_status") if c in present]
    for batch in dataset.to_batches(columns=columns, batch_size=batch_rows):
        if not batch.num_rows:
            continue
        check_export_table(batch)
        yield _converted(
            partial(decisions_from_table, pa.Table.from_batches([batch]), models=models)
        )


def evaluate_export_streaming(
    path: str | Path,
    candidates: Mapping[str, Policy],
    *,
    scenario: Scenario,
    alpha: float = 0.05,
    n_bootstrap: int = 200,
    seed: int = 0,
    reward_model: CrossFittedRewardModel | None = None,
    sample_rows: int = REWARD_MODEL_SAMPLE_ROWS,
    batch_rows: int = BATCH_ROWS,
    self_check: bool = True,
    sources: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
) -> OpeResult:
    """Single-step evaluation of an export of any size, read twice in record batches (see
    the module docstring): memory is bounded by ``batch_rows`` and ``sample_rows``, not by
    the export's size."""
    alpha = check_alpha(alpha)
    check_n_bootstrap(n_bootstrap)
    sources = dict(sources or {})
    reward_model = reward_model or CrossFittedRewardModel(seed=seed)
    rng = np.random.default_rng(seed)
    sample = _Sample(sample_rows)
    statuses: dict[str, int] = {}
    customers: set[str] = set()
    models: dict[str, int] = {}
    n = 0
    explored = False
    first_us, last_us = math.inf, -math.inf
    complete = True
    schema: tuple[tuple[str, ...], tuple[str, ...]] | None = None

    if progress is not None:
        progress(0, 3, "reading the export (pass 1 of 2)")
    dataset = _export_dataset(path)
    if "outcome_status" in dataset.schema.names:
        for batch in dataset.to_batches(columns=["outcome_status"], batch_size=batch_rows):
            for status, count in _status_counts(batch.column(0).to_pylist()).items():
                statuses[status] = statuses.get(status, 0) + count
    for decisions in _export_batches(path, batch_rows):
        if not len(decisions):
            continue
        n += len(decisions)
        batch_schema = (decisions.feature_names, decisions.action_names)
        if schema is not None and batch_schema != schema:
            raise LogInputError(
                "mixed feature schemas: rows of models whose feature_names or action_names "
                f"differ (models so far: {', '.join(sorted(models))}); evaluate one at a time"
            )
        schema = batch_schema
        customers.update(decisions.customer_ids.astype(str).tolist())
        for model, count in _model_counts(decisions.model_ids).items():
            models[model] = models.get(model, 0) + count
        first_us = min(first_us, int(decisions.decided_at_us.min()))
        last_us = max(last_us, int(decisions.decided_at_us.max()))
        explored |= bool((decisions.data.propensities < 1).any())
        complete &= decisions.probabilities is not None and not bool(
            np.isnan(decisions.probabilities).any()
        )
        sample.offer(decisions, rng.random(len(decisions)))
    source = LogSource(
        str(path),
        "export",
        reported=statuses.get("reported", 0),
        defaulted=statuses.get("default", 0),
        pending=statuses.get("pending", 0),
    )
    if sample.decisions is None:
        raise _nothing_to_evaluate(source.pending or 0)
    if not explored:
        raise LogInputError(_NO_EXPLORATION)
    _check_candidates(sample.decisions, candidates)

    if progress is not None:
        progress(1, 3, f"fitting the reward model on {len(sample.decisions):,} sampled rows")
    transform = FeatureTransform.from_scenario(scenario)
    sampled = sample.decisions
    n_actions = len(sampled.action_names)
    sample_features = transform.scaled(sampled.data.obs)
    fit = reward_model.fit_predict(
        sample_features, sampled.data.actions, sampled.data.rewards, n_actions
    )
    predict = reward_model.fit(
        sample_features, sampled.data.actions, sampled.data.rewards, n_actions
    )
    sample_row = {str(e): i for i, e in enumerate(sampled.event_ids.tolist())}
    groups = _Groups.of(sampled.feature_names, sampled.action_names)
    names = [*candidates, *([LOGGER_CHECK] if self_check and complete else [])]
    sums = {name: _CandidateSums(groups, n_bootstrap) for name in names}

    if progress is not None:
        progress(2, 3, "single-step sums (pass 2 of 2)")
    for index, decisions in enumerate(_export_batches(path, batch_rows)):
        if not len(decisions):
            continue
        data = decisions.data
        estimated = predict(transform.scaled(data.obs))
        # Rows of the sample keep their out-of-fold predictions: no row is predicted by a
        # model that saw its reward.
        found = np.array([sample_row.get(str(e), -1) for e in decisions.event_ids.tolist()])
        in_sample = found >= 0
        estimated[in_sample] = fit.estimated_rewards[found[in_sample]]
        logging = decisions.probabilities if complete else None
        rows = _Rows.of(decisions, estimated, logging, groups)
        for name, dist in _distributions(names, candidates, decisions, logging).items():
            # The same seeded resamples of this batch for every candidate: lifts stay paired.
            blocks = _poisson_blocks(
                len(decisions), n_bootstrap, np.random.default_rng([seed, index])
            )
            sums[name].add(rows, dist, blocks)

    results = []
    sampled_logging = sampled.probabilities if complete else None
    sampled_dists = _distributions(names, candidates, sampled, sampled_logging)
    for name, dist in sampled_dists.items():
        result, logger_reward = _single_step_candidate(
            name,
            sums[name],
            sampled,
            dist,
            sampled_logging,
            alpha=alpha,
            weight_rows=f"a uniform sample of {len(sampled):,} of the {n:,} rows",
            source=sources.get(name, ""),
            long_run_reason="long-run estimators not run (the export was streamed)",
        )
        results.append(result)
    summary = DataSummary(
        source=source,
        decisions=n,
        customers=len(customers),
        weeks=None,
        mean_weeks=None,
        first_decision=_iso(int(first_us)),
        last_decision=_iso(int(last_us)),
        models=models,
        logging_probabilities=complete,
        streamed=True,
        reward_model_rows=len(sampled),
    )
    settings = Settings(
        alpha,
        n_bootstrap,
        seed,
        False,
        f"Poisson bootstrap, {n_bootstrap} resamples (seed {seed}) of rows streamed in record "
        f"batches of {batch_rows:,}; each lift from the same resamples as its estimate "
        f"(paired); reward model fitted once on a uniform sample of {len(sampled):,} rows",
    )
    notes = [
        MEMORY_NOTE,
        f"The export was streamed in record batches ({n:,} decisions): single-step estimates "
        "only; weight diagnostics on the reward model's sample.",
    ]
    if progress is not None:
        progress(3, 3, "done")
    return _finish(settings, summary, LoggerValue(logger_reward, None), fit, results, notes)
