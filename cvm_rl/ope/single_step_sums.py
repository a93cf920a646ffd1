"""Single-step evaluation as running sums: each candidate's estimates, bootstrap replicates,
values by lifecycle stage and segment and channel shares, added one batch of rows at a time
(all rows at once in memory, record batch by record batch when an export is streamed), and
the candidate's single-step result made from them. Sums of disjoint rows merge
(:meth:`CandidateSums.merge`): an export's files are summed apart, on one machine or on Ray
workers, and their sums added up in the files' order.

Every single-step estimator is a sum of ratios of per-row sums, so a batch's terms can be
added to the point sums and, weighted by each bootstrap resample's multiplicities of its
rows, to every resample's sums, without materializing a resample. The logger's mean reward
is one more estimator on the same resamples, so each lift over it is paired.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from cvm_rl.logs.arrays import LoggedDecisions
from cvm_rl.ope.base import BanditInputs, BaseOffPolicyEstimator, stack_terms
from cvm_rl.ope.candidates import LOGGER_CHECK
from cvm_rl.ope.diagnostics import diagnose_bandit_feedback
from cvm_rl.ope.estimators import SINGLE_STEP_LABELS, LoggedMean, single_step_estimators
from cvm_rl.ope.inputs import CandidateError, LogInputError
from cvm_rl.ope.intervals import Interval, percentile_interval
from cvm_rl.ope.results import CandidateResult, ChannelShare, Estimate, GroupValue

NO_CONTACT_CHANNEL = "no contact"
NO_GROUP = "(none)"


@dataclass(frozen=True)
class RowGroups:
    """Group names from the one-hot observation columns ``{prefix}_*``."""

    stages: tuple[str, ...]
    segments: tuple[str, ...]
    stage_columns: np.ndarray
    segment_columns: np.ndarray
    channels: tuple[str, ...]
    channel_of_action: np.ndarray  # (A,) channel index per action

    @classmethod
    def of(cls, feature_names: Sequence[str], action_names: Sequence[str]) -> RowGroups:
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

    def same_as(self, other: RowGroups) -> bool:
        return (self.stages, self.segments, self.channels) == (
            other.stages,
            other.segments,
            other.channels,
        ) and all(
            np.array_equal(a, b)
            for a, b in (
                (self.stage_columns, other.stage_columns),
                (self.segment_columns, other.segment_columns),
                (self.channel_of_action, other.channel_of_action),
            )
        )

    def index(self, obs: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """The set one-hot column of each row (len(columns) where none is set)."""
        if not len(columns):
            return np.zeros(len(obs), dtype=np.intp)
        block = obs[:, columns] > 0.5
        found: np.ndarray = np.where(block.any(axis=1), np.argmax(block, axis=1), len(columns))
        return found


@dataclass(frozen=True, eq=False)
class LoggedRows:
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
        groups: RowGroups,
    ) -> LoggedRows:
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

    def merge(self, other: _RatioSums) -> None:
        """Add the sums of other rows (the same estimators and resamples)."""
        if other.plans is None:
            return
        if self.plans is None:
            self.plans = other.plans
            self.point = np.zeros(len(other.point))
            self.boot = np.zeros((self.n_bootstrap, len(other.point)))
        elif other.plans != self.plans:  # pragma: no cover - the estimators' structure is fixed
            raise RuntimeError("estimator terms differ between the merged sums")
        if other.n_bootstrap != self.n_bootstrap:
            raise ValueError(f"n_bootstrap differs: {self.n_bootstrap} and {other.n_bootstrap}")
        self.point += other.point
        self.rows += other.rows
        self.boot += other.boot
        self.boot_rows += other.boot_rows

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

    def merge(self, other: _GroupSums) -> None:
        for total, values in (
            (self.rows, other.rows),
            (self.reward, other.reward),
            (self.dm, other.dm),
            (self.dr, other.dr),
        ):
            total += values

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


class CandidateSums:
    """Everything single-step about one candidate, added batch by batch."""

    def __init__(self, groups: RowGroups, n_bootstrap: int) -> None:
        self.groups = groups
        self.ratios = _RatioSums([LoggedMean(), *single_step_estimators()], n_bootstrap)
        self.by_stage = _GroupSums(len(groups.stages) + 1)
        self.by_segment = _GroupSums(len(groups.segments) + 1)
        self.candidate_channels = np.zeros(len(groups.channels))
        self.logger_channels = np.zeros(len(groups.channels))
        self.weight_sum = 0.0

    def add(self, rows: LoggedRows, action_dist: np.ndarray, blocks: Iterator[np.ndarray]) -> None:
        """The rows' terms, at multiplicity 1 and at each resample's (``blocks``: (b, n)
        multiplicities, resamples in order)."""
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

    def merge(self, other: CandidateSums) -> None:
        """Add the sums of other rows (of the same groups and resamples): the sums of an
        export's files, added in the files' order, are the sums of the whole export."""
        if not self.groups.same_as(other.groups):
            raise ValueError("the merged sums are of other groups (another feature schema)")
        self.ratios.merge(other.ratios)
        self.by_stage.merge(other.by_stage)
        self.by_segment.merge(other.by_segment)
        self.candidate_channels += other.candidate_channels
        self.logger_channels += other.logger_channels
        self.weight_sum += other.weight_sum

    def channel_shares(self) -> tuple[ChannelShare, ...]:
        n = self.ratios.rows
        return tuple(
            ChannelShare(channel, float(self.logger_channels[c] / n), float(share / n))
            for c, (channel, share) in enumerate(
                zip(self.groups.channels, self.candidate_channels, strict=True)
            )
        )


def _check_support(name: str, sums: CandidateSums) -> None:
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
        Estimate.paired(
            est.estimator_name,
            SINGLE_STEP_LABELS[est.estimator_name],
            point,
            reps,
            logged,
            logged_replicates,
            alpha,
        )
        for est, point, reps in zip(sums.estimators[1:], points[1:], replicates[1:], strict=True)
    )
    return estimates, percentile_interval(logged, logged_replicates, alpha), logged_replicates


def single_step_result(
    name: str,
    sums: CandidateSums,
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
