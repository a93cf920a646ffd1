"""Single-step evaluation of an export of any size, streamed in record batches
(:func:`evaluate_export_streaming`), for exports too large for the in-memory evaluation.

The export is read twice, file by file (its Parquet files in the dataset's order, each in
record batches of ``batch_rows``). The first pass counts the rows, customers, models and
outcome statuses, checks the log and keeps a bounded uniform sample of rows (those with the
smallest seeded random keys); the reward model is fitted on that sample. The second pass adds
each record batch's terms to every candidate's running sums: IPS and SNIPS sums exactly, DM
and DR with the sample's reward model (out-of-fold predictions for the sampled rows),
intervals from the Poisson bootstrap (each row drawn Poisson(1) times per resample, so
batches are resampled independently), diagnostics on the sample.

Every random draw (a batch's sample keys, its bootstrap multiplicities) is seeded by
``(seed, file, batch within the file)``, and each file's counts and sums are merged into the
totals in the files' order, so a run that reads the files elsewhere gives the same result to
the last bit: :mod:`cvm_rl.ope.distributed` runs the same two passes on a Ray cluster
(:class:`FileRunner`). The intervals depend on ``batch_rows`` (the batches' draws), the
estimates do not.

``path`` is a local export directory or a URI pyarrow opens (``s3://bucket/cvm/export/``,
``gs://...``, ``file:///...``; :meth:`ExportScan.open`).

Memory: one record batch at a time (read without pyarrow's read-ahead, whose buffers grow
with the files' size), the sample (merged a column at a time, a few times per pass), one
file's sums, and the distinct customer ids for their exact count, held as one sorted array
of fixed-width UTF-8 bytes (about the longest id's length per customer, up to 2.25 times that
while new ids are merged in) rather than a set of Python strings (about 100 bytes per
customer). Nothing else grows with the export; ``bench/ope_export.py`` measures the peak at
1M, 10M and 100M rows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from cvm_rl.logs.arrays import LoggedDecisions
from cvm_rl.ope.candidates import LOGGER_CHECK, candidate_distributions, check_candidates
from cvm_rl.ope.evaluate import ProgressCallback
from cvm_rl.ope.formatting import format_decision_time
from cvm_rl.ope.inputs import (
    MEMORY_NOTE,
    NO_EXPLORATION,
    LogInputError,
    LogSource,
    check_export_table,
    converted,
    export_dataset,
    nothing_to_evaluate,
    status_counts,
)
from cvm_rl.ope.intervals import check_alpha, check_n_bootstrap
from cvm_rl.ope.recommendation import finish_result
from cvm_rl.ope.results import DataSummary, LoggerValue, OpeResult, Settings, model_counts
from cvm_rl.ope.reward_model import CrossFittedRewardModel
from cvm_rl.ope.single_step_sums import (
    CandidateSums,
    LoggedRows,
    RowGroups,
    single_step_result,
)
from cvm_rl.policies.base import Policy
from cvm_rl.policies.features import FeatureTransform
from simulator.config import Scenario

if TYPE_CHECKING:
    import pyarrow as pa

REWARD_MODEL_SAMPLE_ROWS = 200_000
"""Rows the reward model is fitted on when an export is streamed."""
BATCH_ROWS = 65_536
"""Rows per record batch when an export is streamed."""


def _poisson_blocks(
    n: int, n_bootstrap: int, rng: np.random.Generator, block: int = 8
) -> Iterator[np.ndarray]:
    """Blocks of Poisson(1) multiplicities (b, n): the streaming bootstrap (each row drawn a
    Poisson number of times per resample, so batches can be resampled independently)."""
    for start in range(0, n_bootstrap, block):
        yield rng.poisson(1.0, (min(block, n_bootstrap - start), n)).astype(np.float64)


class _DistinctIds:
    """An exact count of distinct ids (compared as ``str``, as a set of them would) in one
    sorted array of their UTF-8 bytes (numpy ``S``: the longest id's length each) plus the new
    ids not merged into it yet. A batch's ids are looked up in the sorted array by binary
    search and only the new ones kept; they are merged (linearly, by insertion points) once
    they reach an eighth of it, so the array is rebuilt a logarithmic number of times and
    a merge holds at most about 2.25 times its bytes."""

    def __init__(self) -> None:
        self.sorted = np.zeros(0, dtype="S1")
        self.new: list[np.ndarray] = []
        self.new_rows = 0

    def add(self, ids: np.ndarray) -> None:
        # astype(str) as the set of ids before it did: numpy drops trailing NULs, so ids that
        # differ only by them count once, as they did.
        self._add_encoded(np.unique(np.char.encode(ids.astype(str), "utf-8", "surrogatepass")))

    def merge(self, other: _DistinctIds) -> None:
        """Add the ids counted by ``other`` (of other rows)."""
        other._merge()
        self._add_encoded(other.sorted)

    def _add_encoded(self, encoded: np.ndarray) -> None:
        """Add sorted, unique UTF-8 ids."""
        if len(self.sorted):
            at = np.minimum(np.searchsorted(self.sorted, encoded), len(self.sorted) - 1)
            encoded = encoded[self.sorted[at] != encoded]
        if len(encoded):
            self.new.append(encoded)
            self.new_rows += len(encoded)
            if 8 * self.new_rows >= len(self.sorted):
                self._merge()

    def _merge(self) -> None:
        if not self.new:
            return
        # Unique among themselves and none in ``sorted`` (each was looked up before).
        new = np.unique(np.concatenate(self.new))
        self.new, self.new_rows = [], 0
        width = max(self.sorted.dtype.itemsize, new.dtype.itemsize)
        self.sorted = np.insert(
            self.sorted.astype(f"S{width}"), np.searchsorted(self.sorted, new), new
        )

    def __len__(self) -> int:
        self._merge()
        return len(self.sorted)


@dataclass
class _Sample:
    """A bounded uniform sample of rows: those with the smallest seeded random keys, in time
    order (ties in the order offered). Offered rows that may enter it wait until they number
    a quarter of ``limit`` and are then merged in one column at a time: a merge copies one
    column beyond the old and the new sample, where merging each batch at once copied every
    column three times (concatenated, ordered, chosen) per batch."""

    limit: int
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0))
    decisions: LoggedDecisions | None = None
    pending: list[tuple[LoggedDecisions, np.ndarray]] = field(default_factory=list)
    pending_rows: int = 0

    def offer(self, decisions: LoggedDecisions, keys: np.ndarray) -> None:
        if len(self.keys) >= self.limit:
            # Rows above the sample's largest key can never enter it (that key only falls).
            keep = np.flatnonzero(keys < self.keys.max())
            decisions, keys = decisions.take(keep), keys[keep]
        if not len(keys):
            return
        self.pending.append((decisions, keys))
        self.pending_rows += len(keys)
        if self.pending_rows >= max(self.limit // 4, 1):
            self.merge()

    def merge_from(self, other: _Sample) -> None:
        """Offer the rows of ``other``'s sample (of rows offered after this one's): the
        sample of both, as if every row had been offered here."""
        decisions = other.merge()
        if decisions is not None:
            self.offer(decisions, other.keys)

    def merge(self) -> LoggedDecisions | None:
        """Merge the waiting rows in; the sample (None when no row was offered)."""
        if not self.pending:
            return self.decisions
        parts = [*([(self.decisions, self.keys)] if self.decisions is not None else [])]
        parts += self.pending
        self.pending, self.pending_rows = [], 0
        order = np.argsort(np.concatenate([d.decided_at_us for d, _ in parts]), kind="stable")
        keys = np.concatenate([k for _, k in parts])[order]
        if len(keys) > self.limit:
            # increasing indices keep the rows in time order
            chosen = np.sort(np.argpartition(keys, self.limit - 1)[: self.limit])
            order, keys = order[chosen], keys[chosen]
        self.decisions = _gather([d for d, _ in parts], order)
        self.keys = keys
        return self.decisions


def _gather(parts: list[LoggedDecisions], rows: np.ndarray) -> LoggedDecisions:
    """The given rows of the parts' rows one after the other, gathered one column at a time
    (so a single column's concatenation exists at once)."""
    from cvm_rl.logs.arrays import LoggedData

    def column(get: Callable[[LoggedDecisions], np.ndarray | None]) -> np.ndarray | None:
        arrays = [a for a in map(get, parts) if a is not None]
        return np.concatenate(arrays)[rows] if len(arrays) == len(parts) else None

    def required(get: Callable[[LoggedDecisions], np.ndarray | None]) -> np.ndarray:
        gathered = column(get)
        assert gathered is not None
        return gathered

    first = parts[0]
    return LoggedDecisions(
        data=LoggedData(
            obs=required(lambda d: d.data.obs),
            mask=required(lambda d: d.data.mask),
            actions=required(lambda d: d.data.actions),
            propensities=required(lambda d: d.data.propensities),
            rewards=required(lambda d: d.data.rewards),
            executed=required(lambda d: d.data.executed_actions),
        ),
        event_ids=required(lambda d: d.event_ids),
        customer_ids=required(lambda d: d.customer_ids),
        decided_at_us=required(lambda d: d.decided_at_us),
        model_ids=required(lambda d: d.model_ids),
        probabilities=column(lambda d: d.probabilities),
        feature_names=first.feature_names,
        action_names=first.action_names,
    )


def is_uri(path: str | Path) -> bool:
    """Whether ``path`` is a URI (``s3://``, ``gs://``, ``file://``...) rather than a local
    path (a :class:`~pathlib.Path` never is: it would fold the ``//``)."""
    return isinstance(path, str) and "://" in path


def _read_models_at(filesystem: Any, base: str) -> dict[str, dict[str, Any]]:
    """``_models.json`` (or the legacy ``models.json``) of the export at ``base`` on a pyarrow
    filesystem, as :func:`cvm_rl.logs.export.read_models` reads a local one."""
    import pyarrow.fs as pafs

    from cvm_rl.logs.export import LEGACY_MODELS_FILE, MODELS_FILE

    for name in (MODELS_FILE, LEGACY_MODELS_FILE):
        path = f"{base.rstrip('/')}/{name}"
        if filesystem.get_file_info(path).type == pafs.FileType.File:
            with filesystem.open_input_stream(path) as fh:
                models: dict[str, dict[str, Any]] = json.loads(fh.read().decode("utf-8"))
            return models
    raise LogInputError(f"{base.rstrip('/')}/{MODELS_FILE}: not found (not an export directory?)")


@dataclass(frozen=True, eq=False)
class ExportScan:
    """What both passes read, in order: the export's Parquet files (pyarrow fragments, each
    read alone in record batches of ``batch_rows``), the columns and the models. Picklable,
    so Ray workers read the files the driver listed (the filesystem travels with each
    fragment), in the same record batches as a stream on one machine."""

    path: str
    fragments: tuple[Any, ...]
    schema: pa.Schema
    columns: tuple[str, ...]
    models: dict[str, dict[str, Any]]
    batch_rows: int

    @classmethod
    def open(cls, path: str | Path, batch_rows: int = BATCH_ROWS) -> ExportScan:
        """The export at a local path or a URI that pyarrow opens (``s3://bucket/export/``,
        ``gs://``, ``file:///...``): a LogInputError without its models file."""
        from cvm_rl.logs.convert import TABLE_COLUMNS

        if is_uri(path):
            import pyarrow.dataset as ds
            import pyarrow.fs as pafs

            try:
                filesystem, base = pafs.FileSystem.from_uri(str(path))
            except (ValueError, OSError) as exc:
                raise LogInputError(f"{path}: {exc}") from None
            models = _read_models_at(filesystem, base)
            dataset = ds.dataset(base, filesystem=filesystem, format="parquet", partitioning="hive")
        else:
            from cvm_rl.logs.export import read_models

            dataset = export_dataset(path)  # a LogInputError without the models file
            models = read_models(path)
        present = set(dataset.schema.names)
        columns = tuple(c for c in (*TABLE_COLUMNS, "outcome_status") if c in present)
        return cls(
            str(path),
            tuple(dataset.get_fragments()),
            dataset.schema,
            columns,
            models,
            batch_rows,
        )

    def batches(self, fragment: int) -> Iterator[pa.RecordBatch]:
        """The record batches of one file, decoded one at a time in this thread. pyarrow's
        defaults read ahead (16 batches of each of 4 files, and with ``pre_buffer`` a file's
        whole byte ranges) while the evaluation consumes them, so their memory grows with
        the files' size (4.7 GB for an export of 2M-row files): without threads, read-ahead
        or pre-buffering, it is a batch's and a row group's. The batches are the same
        either way (and every file's, as the files' schema: missing columns are null)."""
        import pyarrow.dataset as ds

        return iter(
            self.fragments[fragment].to_batches(
                schema=self.schema,
                columns=list(self.columns),
                batch_size=self.batch_rows,
                batch_readahead=0,
                fragment_readahead=0,
                fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=False),
                use_threads=False,
            )
        )

    def decisions(self, batch: pa.RecordBatch) -> LoggedDecisions:
        """A record batch's rows with a reward, checked and converted."""
        import pyarrow as pa

        from cvm_rl.logs.convert import decisions_from_table

        check_export_table(batch)
        return converted(
            partial(decisions_from_table, pa.Table.from_batches([batch]), models=self.models)
        )


def _batch_rng(seed: int, stream: int, fragment: int, batch: int) -> np.random.Generator:
    """The generator of one record batch: seeded by the file and the batch within it, so a
    file's draws are the same whoever reads it (one machine or a Ray worker) and whenever.
    Stream 0 draws the sample's keys, stream 1 the bootstrap's multiplicities."""
    return np.random.default_rng([seed, stream, fragment, batch])


@dataclass
class ExportCounts:
    """Pass 1 over some of an export's files: rows, customers, models, outcome statuses,
    what the log allows (exploration, logged distributions, one feature schema) and the
    reward model's bounded sample. The counts of disjoint files merge (:meth:`merge`, in
    the files' order, so the sample's ties in time keep the export's order)."""

    sample: _Sample
    statuses: dict[str, int] = field(default_factory=dict)
    customers: _DistinctIds = field(default_factory=lambda: _DistinctIds())
    models: dict[str, int] = field(default_factory=dict)
    n: int = 0
    explored: bool = False
    complete: bool = True
    first_us: float = math.inf
    last_us: float = -math.inf
    schema: tuple[tuple[str, ...], tuple[str, ...]] | None = None

    def add_file(self, scan: ExportScan, fragment: int, seed: int) -> None:
        """Every record batch of one file."""
        for index, batch in enumerate(scan.batches(fragment)):
            if not batch.num_rows:
                continue
            if "outcome_status" in scan.columns:
                column = batch.column(scan.columns.index("outcome_status"))
                for status, count in status_counts(column.to_pylist()).items():
                    self.statuses[status] = self.statuses.get(status, 0) + count
            decisions = scan.decisions(batch)
            if len(decisions):
                self.add(decisions, _batch_rng(seed, 0, fragment, index).random(len(decisions)))

    def _check_schema(self, schema: tuple[tuple[str, ...], tuple[str, ...]] | None) -> None:
        if self.schema is not None and schema is not None and schema != self.schema:
            raise LogInputError(
                "mixed feature schemas: rows of models whose feature_names or action_names "
                f"differ (models so far: {', '.join(sorted(self.models))}); evaluate one at a time"
            )
        self.schema = self.schema or schema

    def add(self, decisions: LoggedDecisions, keys: np.ndarray) -> None:
        """One batch of converted rows and their sample keys."""
        self._check_schema((decisions.feature_names, decisions.action_names))
        self.n += len(decisions)
        self.customers.add(decisions.customer_ids)
        for model, count in model_counts(decisions.model_ids).items():
            self.models[model] = self.models.get(model, 0) + count
        self.first_us = min(self.first_us, int(decisions.decided_at_us.min()))
        self.last_us = max(self.last_us, int(decisions.decided_at_us.max()))
        self.explored |= bool((decisions.data.propensities < 1).any())
        self.complete &= decisions.probabilities is not None and not bool(
            np.isnan(decisions.probabilities).any()
        )
        self.sample.offer(decisions, keys)

    def merge(self, other: ExportCounts) -> None:
        """Add the counts of later files."""
        self._check_schema(other.schema)
        for status, count in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + count
        self.customers.merge(other.customers)
        for model, count in other.models.items():
            self.models[model] = self.models.get(model, 0) + count
        self.n += other.n
        self.explored |= other.explored
        self.complete &= other.complete
        self.first_us = min(self.first_us, other.first_us)
        self.last_us = max(self.last_us, other.last_us)
        self.sample.merge_from(other.sample)


@dataclass(frozen=True, eq=False)
class SumsModel:
    """What pass 2 needs besides the rows, shipped once to every Ray worker: the candidates,
    the reward model fitted on the sample (and the sample's out-of-fold predictions) and the
    bootstrap's settings."""

    names: tuple[str, ...]
    candidates: Mapping[str, Policy]
    transform: FeatureTransform
    predict: Callable[[np.ndarray], np.ndarray]
    sample_rows: Mapping[str, int]  # event id -> row of the sample
    sample_estimates: np.ndarray  # (sample rows, A): out-of-fold predictions
    complete: bool
    groups: RowGroups
    n_bootstrap: int
    seed: int

    def file_sums(self, scan: ExportScan, fragment: int) -> dict[str, CandidateSums]:
        """Every candidate's sums over one file's rows."""
        sums = {name: CandidateSums(self.groups, self.n_bootstrap) for name in self.names}
        for index, batch in enumerate(scan.batches(fragment)):
            if not batch.num_rows:
                continue
            decisions = scan.decisions(batch)
            if len(decisions):
                self.add(sums, decisions, fragment, index)
        return sums

    def add(
        self, sums: dict[str, CandidateSums], decisions: LoggedDecisions, fragment: int, index: int
    ) -> None:
        """One batch's terms, added to every candidate's sums."""
        estimated = self.predict(self.transform.scaled(decisions.data.obs))
        # Rows of the sample keep their out-of-fold predictions: no row is predicted by a
        # model that saw its reward.
        found = np.array([self.sample_rows.get(str(e), -1) for e in decisions.event_ids.tolist()])
        in_sample = found >= 0
        estimated[in_sample] = self.sample_estimates[found[in_sample]]
        logging = decisions.probabilities if self.complete else None
        rows = LoggedRows.of(decisions, estimated, logging, self.groups)
        dists = candidate_distributions(self.names, self.candidates, decisions, logging)
        for name, dist in dists.items():
            # The same seeded resamples of this batch for every candidate: lifts stay paired.
            blocks = _poisson_blocks(
                len(decisions), self.n_bootstrap, _batch_rng(self.seed, 1, fragment, index)
            )
            sums[name].add(rows, dist, blocks)


class FileRunner(Protocol):
    """How the passes run over an export's files: one after the other here, or on Ray
    workers (:mod:`cvm_rl.ope.distributed`); either way the results are merged in the
    files' order."""

    where: str  # the settings' words on where the rows were read

    def counts(self, scan: ExportScan, seed: int, sample_rows: int) -> ExportCounts: ...

    def sums(self, scan: ExportScan, model: SumsModel) -> dict[str, CandidateSums]: ...


def merge_sums(
    total: dict[str, CandidateSums] | None, part: dict[str, CandidateSums]
) -> dict[str, CandidateSums]:
    """Add one file's sums to the sums of the files before it (the first file's are the
    total so far)."""
    if total is None:
        return part
    for name, sums in part.items():
        total[name].merge(sums)
    return total


class LocalRunner:
    """The files one after the other in this process, one record batch in memory at a time
    (pass 1 into one running count: one sample, one set of customer ids)."""

    where = "streamed in record batches"

    def counts(self, scan: ExportScan, seed: int, sample_rows: int) -> ExportCounts:
        counts = ExportCounts(_Sample(sample_rows))
        for fragment in range(len(scan.fragments)):
            counts.add_file(scan, fragment, seed)
        return counts

    def sums(self, scan: ExportScan, model: SumsModel) -> dict[str, CandidateSums]:
        total = {name: CandidateSums(model.groups, model.n_bootstrap) for name in model.names}
        for fragment in range(len(scan.fragments)):
            total = merge_sums(total, model.file_sums(scan, fragment))
        return total


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
    the module docstring): memory is bounded by ``batch_rows`` and ``sample_rows``, and by
    the distinct customer ids' bytes (their exact count), not by the export's rows.
    ``path`` is a local directory or a URI pyarrow opens (``s3://bucket/cvm/export/``,
    ``file:///...``)."""
    return evaluate_export_files(
        path,
        candidates,
        LocalRunner(),
        scenario=scenario,
        alpha=alpha,
        n_bootstrap=n_bootstrap,
        seed=seed,
        reward_model=reward_model,
        sample_rows=sample_rows,
        batch_rows=batch_rows,
        self_check=self_check,
        sources=sources,
        progress=progress,
    )


def evaluate_export_files(
    path: str | Path,
    candidates: Mapping[str, Policy],
    runner: FileRunner,
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
    notes: Sequence[str] = (),
) -> OpeResult:
    """:func:`evaluate_export_streaming` with its passes run by ``runner`` (the estimator
    code is this module's either way); ``notes`` are added to the report's."""
    alpha = check_alpha(alpha)
    check_n_bootstrap(n_bootstrap)
    sources = dict(sources or {})
    reward_model = reward_model or CrossFittedRewardModel(seed=seed)

    if progress is not None:
        progress(0, 3, "reading the export (pass 1 of 2)")
    scan = ExportScan.open(path, batch_rows)
    counts = runner.counts(scan, seed, sample_rows)
    n = counts.n
    source = LogSource.from_counts(path, "export", counts.statuses)
    sampled = counts.sample.merge()
    if sampled is None:
        raise nothing_to_evaluate(source.pending or 0)
    if not counts.explored:
        raise LogInputError(NO_EXPLORATION)
    check_candidates(sampled, candidates)
    complete = counts.complete

    if progress is not None:
        progress(1, 3, f"fitting the reward model on {len(sampled):,} sampled rows")
    transform = FeatureTransform.from_scenario(scenario)
    n_actions = len(sampled.action_names)
    sample_features = transform.scaled(sampled.data.obs)
    fit = reward_model.fit_predict(
        sample_features, sampled.data.actions, sampled.data.rewards, n_actions
    )
    predict = reward_model.fit(
        sample_features, sampled.data.actions, sampled.data.rewards, n_actions
    )
    names = (*candidates, *([LOGGER_CHECK] if self_check and complete else []))
    model = SumsModel(
        names=names,
        candidates=candidates,
        transform=transform,
        predict=predict,
        sample_rows={str(e): i for i, e in enumerate(sampled.event_ids.tolist())},
        sample_estimates=fit.estimated_rewards,
        complete=complete,
        groups=RowGroups.of(sampled.feature_names, sampled.action_names),
        n_bootstrap=n_bootstrap,
        seed=seed,
    )

    if progress is not None:
        progress(2, 3, "single-step sums (pass 2 of 2)")
    sums = runner.sums(scan, model)

    results = []
    sampled_logging = sampled.probabilities if complete else None
    sampled_dists = candidate_distributions(names, candidates, sampled, sampled_logging)
    for name, dist in sampled_dists.items():
        result, logger_reward = single_step_result(
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
        customers=len(counts.customers),
        weeks=None,
        mean_weeks=None,
        first_decision=format_decision_time(int(counts.first_us)),
        last_decision=format_decision_time(int(counts.last_us)),
        models=counts.models,
        logging_probabilities=complete,
        streamed=True,
        reward_model_rows=len(sampled),
    )
    settings = Settings(
        alpha,
        n_bootstrap,
        seed,
        False,
        f"Poisson bootstrap, {n_bootstrap} resamples (seed {seed}) of rows {runner.where} "
        f"(record batches of {batch_rows:,} per file); each lift from the same resamples as "
        f"its estimate (paired); reward model fitted once on a uniform sample of "
        f"{len(sampled):,} rows",
    )
    all_notes = [
        MEMORY_NOTE,
        f"The export was streamed in record batches ({n:,} decisions): single-step estimates "
        "only; weight diagnostics on the reward model's sample.",
        *notes,
    ]
    if progress is not None:
        progress(3, 3, "done")
    return finish_result(
        settings, summary, LoggerValue(logger_reward, None), fit, results, all_notes
    )
