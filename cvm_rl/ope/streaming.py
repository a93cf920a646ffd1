"""Single-step evaluation of an export of any size, streamed in record batches
(:func:`evaluate_export_streaming`), for exports too large for the in-memory evaluation.

The export is read twice. The first pass counts the rows, customers, models and outcome
statuses, checks the log and keeps a bounded uniform sample of rows (those with the smallest
seeded random keys); the reward model is fitted on that sample. The second pass adds each
record batch's terms to every candidate's running sums: IPS and SNIPS sums exactly, DM and
DR with the sample's reward model (out-of-fold predictions for the sampled rows), intervals
from the Poisson bootstrap (each row drawn Poisson(1) times per resample, so batches are
resampled independently), diagnostics on the sample.

Memory: one record batch at a time (read without pyarrow's read-ahead, whose buffers grow
with the files' size), the sample (merged a column at a time, a few times per pass), and the
distinct customer ids for their exact count, held as one sorted array of fixed-width UTF-8
bytes (about the longest id's length per customer, up to 2.25 times that while new ids are
merged in) rather than a set of Python strings (about 100 bytes per customer). Nothing else
grows with the export; ``bench/ope_export.py`` measures the peak at 1M, 10M and 100M rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
        encoded = np.unique(np.char.encode(ids.astype(str), "utf-8", "surrogatepass"))
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


def _record_batches(dataset: Any, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The dataset's ``columns`` in record batches of at most ``batch_rows``, decoded one at a
    time in this thread. pyarrow's defaults read ahead (16 batches of each of 4 files, and
    with ``pre_buffer`` a file's whole byte ranges) while the evaluation consumes them, so
    their memory grows with the files' size (4.7 GB for an export of 2M-row files): without
    threads, read-ahead or pre-buffering, it is a batch's and a row group's. The batches are
    the same either way."""
    import pyarrow.dataset as ds

    return iter(
        dataset.to_batches(
            columns=columns,
            batch_size=batch_rows,
            batch_readahead=0,
            fragment_readahead=0,
            fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=False),
            use_threads=False,
        )
    )


def _export_batches(path: str | Path, batch_rows: int) -> Iterator[LoggedDecisions]:
    """The export's rows with a reward, one record batch at a time, checked and converted."""
    import pyarrow as pa

    from cvm_rl.logs.convert import TABLE_COLUMNS, decisions_from_table
    from cvm_rl.logs.export import read_models

    models = read_models(path)
    dataset = export_dataset(path)
    present = set(dataset.schema.names)
    columns = [c for c in (*TABLE_COLUMNS, "outcome_status") if c in present]
    for batch in _record_batches(dataset, columns, batch_rows):
        if not batch.num_rows:
            continue
        check_export_table(batch)
        yield converted(
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
    the module docstring): memory is bounded by ``batch_rows`` and ``sample_rows``, and by
    the distinct customer ids' bytes (their exact count), not by the export's rows."""
    alpha = check_alpha(alpha)
    check_n_bootstrap(n_bootstrap)
    sources = dict(sources or {})
    reward_model = reward_model or CrossFittedRewardModel(seed=seed)
    rng = np.random.default_rng(seed)
    sample = _Sample(sample_rows)
    statuses: dict[str, int] = {}
    customers = _DistinctIds()
    models: dict[str, int] = {}
    n = 0
    explored = False
    first_us, last_us = math.inf, -math.inf
    complete = True
    schema: tuple[tuple[str, ...], tuple[str, ...]] | None = None

    if progress is not None:
        progress(0, 3, "reading the export (pass 1 of 2)")
    dataset = export_dataset(path)
    if "outcome_status" in dataset.schema.names:
        for batch in _record_batches(dataset, ["outcome_status"], batch_rows):
            for status, count in status_counts(batch.column(0).to_pylist()).items():
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
        customers.add(decisions.customer_ids)
        for model, count in model_counts(decisions.model_ids).items():
            models[model] = models.get(model, 0) + count
        first_us = min(first_us, int(decisions.decided_at_us.min()))
        last_us = max(last_us, int(decisions.decided_at_us.max()))
        explored |= bool((decisions.data.propensities < 1).any())
        complete &= decisions.probabilities is not None and not bool(
            np.isnan(decisions.probabilities).any()
        )
        sample.offer(decisions, rng.random(len(decisions)))
    source = LogSource.from_counts(path, "export", statuses)
    sampled = sample.merge()
    if sampled is None:
        raise nothing_to_evaluate(source.pending or 0)
    if not explored:
        raise LogInputError(NO_EXPLORATION)
    check_candidates(sampled, candidates)

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
    sample_row = {str(e): i for i, e in enumerate(sampled.event_ids.tolist())}
    groups = RowGroups.of(sampled.feature_names, sampled.action_names)
    names = [*candidates, *([LOGGER_CHECK] if self_check and complete else [])]
    sums = {name: CandidateSums(groups, n_bootstrap) for name in names}

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
        rows = LoggedRows.of(decisions, estimated, logging, groups)
        for name, dist in candidate_distributions(names, candidates, decisions, logging).items():
            # The same seeded resamples of this batch for every candidate: lifts stay paired.
            blocks = _poisson_blocks(
                len(decisions), n_bootstrap, np.random.default_rng([seed, index])
            )
            sums[name].add(rows, dist, blocks)

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
        customers=len(customers),
        weeks=None,
        mean_weeks=None,
        first_decision=format_decision_time(int(first_us)),
        last_decision=format_decision_time(int(last_us)),
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
    return finish_result(settings, summary, LoggerValue(logger_reward, None), fit, results, notes)
