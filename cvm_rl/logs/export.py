"""Export a decision log (:mod:`cvm_rl.logs.store`) as Parquet: one row per decision, joined
with its outcome and with the model and settings that decided it.

The output is a hive-partitioned dataset ``out_dir/date=YYYY-MM-DD/part-0.parquet`` (UTC
date of the decision; ``part-SHARD-0.parquet`` with a ``shard``, see below) plus the side
file ``out_dir/_models.json`` (``model_id`` -> ``feature_names``, ``action_names``, ``kind``,
``version``) so a reader knows what the ``features`` and ``eligible`` lists mean. The same
JSON is in each file's Parquet schema metadata under ``b"cvm_rl.models"``. The side file's
leading ``_`` makes standard Parquet readers skip it, so the directory opens as a dataset as
it is
(``pyarrow.dataset.dataset(out_dir, partitioning="hive")``, ``pyarrow.parquet.read_table``,
``pandas.read_parquet``); :func:`read_export` reads it back with this schema.

=====================  ===================  =======================================================
column                 type                 meaning
=====================  ===================  =======================================================
event_id               string               the decision's unique id (the outcome's key)
customer_id            string               the caller's customer id
decided_at             timestamp[us, UTC]   decision time
date                   string               ``YYYY-MM-DD`` of ``decided_at`` in UTC (partition key)
model_id               string               the bundle that decided (key of ``_models.json``)
model_version          string               its version
learning_mode          string               ``online`` | ``apprentice``
exploration            string               ``policy`` | ``epsilon`` | ``softmax``
exploration_param      double               epsilon, temperature, or 0 for ``policy``
action_index           int32                the served action (0 = no contact)
action_name            string               its name in the model's action catalog
propensity             double               probability of the served action
policy_action_index    int32                the policy's draw (the served action when online)
policy_propensity      double               probability of the policy's draw
baseline_action_index  int32?               the caller's baseline action; null when none
explored               bool                 the policy's draw was not its greedy action
features               list<float32>        raw features in the model's feature order
eligible               list<bool>           eligibility mask, one entry per catalog action
probabilities          list<double>?        the policy's distribution; null when not logged
reward                 double?              reported, or ``default_reward``; null when pending
purchase               bool?                reported purchase flag
spend                  double?              reported spend
opt_out                bool?                reported opt-out flag
executed_action_index  int32?               the action the environment executed when it was not
                                            ``action_index``; null: ``action_index`` was
                                            executed (or it is not known)
reported_at            timestamp[us, UTC]?  when the outcome was observed; null without one
outcome_status         string               ``reported`` | ``default`` | ``pending``
=====================  ===================  =======================================================

(``?``: nullable.) Within one model every row has the same ``features`` and ``eligible``
lengths; rows of different models may differ.

``outcome_status``: ``reported`` when the log holds an outcome; ``default`` when it does not
and ``decided_at + outcome_window_s < now`` (the outcome is taken to be "nothing happened":
``reward = default_reward``, the other outcome fields null); ``pending`` when the window has
not passed yet (``reward`` null). Pending rows are left out unless ``include_pending``. (The
rule is :class:`~cvm_rl.logs.reader.OutcomeWindow`.)

The log is opened read-only (SQLite URI ``mode=ro``) and read in one read transaction, so an
export sees one consistent snapshot of a live log and never writes to it (SQLite may leave
empty ``-wal`` / ``-shm`` files next to a closed log). A log of an older schema version is
read as it is (see :mod:`cvm_rl.logs.schema`). Rows are read in chunks of ``chunk_rows`` by
``seq`` (:meth:`~cvm_rl.logs.reader.LogReader.chunks`) and decoded in bulk with numpy, so only
one chunk exists as Python objects at a time; the chunks stream into
``pyarrow.dataset.write_dataset``. With ``record=True`` (what ``cvm logs export`` does), once
the files are written, one row is added to the log's ``exports`` table saying what the
snapshot covered, which is what ``cvm logs prune`` may drop (:mod:`cvm_rl.logs.retention`).

Several logs into one dataset (one log per replica of the service, :mod:`cvm_rl.loop.replicas`):
export each with its own ``shard`` name (``cvm logs export --shard NAME``) into the same
``out_dir``. A shard's files are ``date=D/part-SHARD-N.parquet``, and re-exporting a shard
replaces only its own files of the dates it writes, so the shards' rows of one date sit side
by side and the directory reads as one dataset. Event ids are unique per decision, so rows
of different shards do not clash as long as each decision is made (and logged) by one replica.
An export without a shard replaces whole date partitions, other shards' files included: in
one directory, give every log a shard or none. Export the shards one after another (each
merges its models into ``_models.json``).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from cvm_rl.logs.reader import (
    CHUNK_ROWS,
    DecisionRows,
    OutcomeWindow,
    activation_positions,
    open_read_only,
)
from cvm_rl.logs.records import Activation, DecisionLogError, ModelRecord
from cvm_rl.logs.retention import ExportMark, record_export, snapshot_coverage
from cvm_rl.logs.schema import OutcomeStatus, values

MODELS_FILE = "_models.json"
"""The side file describing the models (``_``: skipped by Parquet dataset discovery)."""
LEGACY_MODELS_FILE = "models.json"
"""Its name in exports of earlier versions (read as a fallback, replaced on re-export)."""
MODELS_METADATA_KEY = b"cvm_rl.models"
SHARD_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""A shard name: letters, digits, ``_``, ``.``, ``-``, not first (a file whose name starts with
``_`` or ``.`` is skipped by Parquet dataset discovery), at most 64 characters."""
OUTCOME_STATUSES = values(OutcomeStatus)
_US = pa.timestamp("us", tz="UTC")

EXPORT_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("customer_id", pa.string()),
        ("decided_at", _US),
        ("date", pa.string()),
        ("model_id", pa.string()),
        ("model_version", pa.string()),
        ("learning_mode", pa.string()),
        ("exploration", pa.string()),
        ("exploration_param", pa.float64()),
        ("action_index", pa.int32()),
        ("action_name", pa.string()),
        ("propensity", pa.float64()),
        ("policy_action_index", pa.int32()),
        ("policy_propensity", pa.float64()),
        ("baseline_action_index", pa.int32()),
        ("explored", pa.bool_()),
        ("features", pa.list_(pa.float32())),
        ("eligible", pa.list_(pa.bool_())),
        ("probabilities", pa.list_(pa.float64())),
        ("reward", pa.float64()),
        ("purchase", pa.bool_()),
        ("spend", pa.float64()),
        ("opt_out", pa.bool_()),
        ("executed_action_index", pa.int32()),
        ("reported_at", _US),
        ("outcome_status", pa.string()),
    ]
)
"""Columns of an export, in order (the table in the module docstring)."""


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_parquet` wrote: ``rows`` written, of which ``with_outcome`` had a
    reported outcome and ``defaulted`` got ``default_reward``; ``pending`` rows had no outcome
    inside the window (``pending_skipped`` of them left out); the dates written."""

    rows: int
    with_outcome: int
    defaulted: int
    pending: int
    pending_skipped: int
    partitions: list[str] = field(default_factory=list)
    out_dir: Path = Path()
    mark: ExportMark | None = None

    def line(self) -> str:
        """One-line summary for the command line."""
        return (
            f"exported {self.rows} decisions to {self.out_dir}: {self.with_outcome} reported, "
            f"{self.defaulted} defaulted, {self.pending} pending "
            f"({self.pending_skipped} skipped), {len(self.partitions)} partitions"
            + (f" ({self.partitions[0]} .. {self.partitions[-1]})" if self.partitions else "")
            + ("" if self.mark is None else f"; {self.mark.line()}")
        )


@dataclass
class _Counts:
    rows: int = 0
    reported: int = 0
    defaulted: int = 0
    pending: int = 0
    pending_skipped: int = 0
    dates: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Activations:
    """Per-activation lookups (indexed by ``activations.seq``) for joining a chunk in numpy."""

    seqs: np.ndarray
    model_id: np.ndarray
    model_version: np.ndarray
    learning_mode: np.ndarray
    exploration: np.ndarray
    exploration_param: np.ndarray
    action_names: list[np.ndarray]

    @classmethod
    def of(cls, activations: list[Activation], models: dict[str, ModelRecord]) -> _Activations:
        ids = [a.model_id for a in activations]
        return cls(
            seqs=np.array([a.seq for a in activations], dtype=np.int64),
            model_id=np.array(ids, dtype=object),
            model_version=np.array([models[m].model_version for m in ids], dtype=object),
            learning_mode=np.array([a.learning_mode for a in activations], dtype=object),
            exploration=np.array([a.exploration for a in activations], dtype=object),
            exploration_param=np.array(
                [a.exploration_param for a in activations], dtype=np.float64
            ),
            action_names=[np.array(models[m].action_names, dtype=object) for m in ids],
        )


def models_json(models: dict[str, ModelRecord]) -> dict[str, dict[str, Any]]:
    """The models as ``_models.json`` describes them: model_id -> feature_names,
    action_names, kind, version."""
    return {
        model_id: {
            "feature_names": m.feature_names,
            "action_names": m.action_names,
            "kind": m.kind,
            "version": m.model_version,
        }
        for model_id, m in sorted(models.items())
    }


def _list_array(
    blobs: np.ndarray, item: str, value: type, value_type: pa.DataType, where: str
) -> pa.Array:
    """BLOBs of fixed-size items (``item``: their stored numpy dtype, ``value``: the native
    one) as one Arrow list array, decoded with one ``frombuffer``; ``None`` becomes null."""
    itemsize = np.dtype(item).itemsize
    nulls = np.fromiter((b is None for b in blobs), bool, len(blobs))
    sizes = np.fromiter((0 if b is None else len(b) for b in blobs), np.int64, len(blobs))
    if (sizes % itemsize).any():
        raise DecisionLogError(f"{where}: a BLOB is not a whole number of {itemsize}-byte items")
    offsets = np.zeros(len(blobs) + 1, dtype=np.int32)
    np.cumsum(sizes // itemsize, out=offsets[1:])
    values = np.frombuffer(b"".join(blobs[~nulls]), dtype=item)
    flat = pa.array(values.astype(value), type=value_type)
    mask = pa.array(nulls) if nulls.any() else None
    return pa.ListArray.from_arrays(pa.array(offsets), flat, mask=mask)


def _nullable(values: np.ndarray, dtype: type, arrow: pa.DataType) -> pa.Array:
    """An object column with ``None`` as null, built through numpy ``dtype``."""
    known = np.fromiter((v is not None for v in values), bool, len(values))
    filled: np.ndarray = np.array([0 if v is None else v for v in values], dtype=dtype)
    return pa.array(filled, type=arrow, mask=~known)


def _chunk_batch(
    rows: DecisionRows,
    acts: _Activations,
    window: OutcomeWindow,
    *,
    include_pending: bool,
    counts: _Counts,
) -> pa.RecordBatch | None:
    """One chunk of rows as a record batch of :data:`EXPORT_SCHEMA` (None if empty)."""
    status = window.status(rows)
    pending = status == OutcomeStatus.PENDING.value
    counts.pending += int(pending.sum())
    if pending.any() and not include_pending:
        counts.pending_skipped += int(pending.sum())
        rows, status = rows.take(~pending), status[~pending]
        if not len(rows):
            return None
    counts.rows += len(rows)
    counts.reported += int((status == OutcomeStatus.REPORTED.value).sum())
    counts.defaulted += int((status == OutcomeStatus.DEFAULT.value).sum())

    where = f"decisions from seq {rows.seq[0]}"
    pos = activation_positions(acts.seqs, rows, where)
    action_index = rows.action_index.astype(np.int32)
    action_name = np.empty(len(rows), dtype=object)
    for p in np.unique(pos):
        rows_of = pos == p
        names = acts.action_names[p]
        indices = action_index[rows_of]
        if indices.max() >= len(names):
            bad = rows.event_id[rows_of][indices >= len(names)][0]
            raise DecisionLogError(
                f"decision {bad!r}: action_index beyond model {acts.model_id[p]!r}'s "
                f"{len(names)} actions"
            )
        action_name[rows_of] = names[indices]
    dates = rows.decided_at_us.astype("datetime64[us]").astype("datetime64[D]").astype(str)
    counts.dates.update(np.unique(dates).tolist())

    reward = window.rewards(rows, status)
    arrays = [
        pa.array(rows.event_id, type=pa.string()),
        pa.array(rows.customer_id, type=pa.string()),
        pa.array(rows.decided_at_us, type=_US),
        pa.array(dates, type=pa.string()),
        pa.array(acts.model_id[pos], type=pa.string()),
        pa.array(acts.model_version[pos], type=pa.string()),
        pa.array(acts.learning_mode[pos], type=pa.string()),
        pa.array(acts.exploration[pos], type=pa.string()),
        pa.array(acts.exploration_param[pos], type=pa.float64()),
        pa.array(action_index, type=pa.int32()),
        pa.array(action_name, type=pa.string()),
        pa.array(rows.propensity, type=pa.float64()),
        pa.array(rows.policy_action_index.astype(np.int32), type=pa.int32()),
        pa.array(rows.policy_propensity, type=pa.float64()),
        _nullable(rows.baseline_action_index, np.int32, pa.int32()),
        pa.array(rows.explored, type=pa.bool_()),
        _list_array(rows.features, "<f4", np.float32, pa.float32(), f"{where}: features"),
        _list_array(rows.eligible, "u1", np.bool_, pa.bool_(), f"{where}: eligible"),
        _list_array(rows.probabilities, "<f8", np.float64, pa.float64(), f"{where}: probabilities"),
        pa.array(reward, type=pa.float64(), mask=status == OutcomeStatus.PENDING.value),
        _nullable(rows.purchase, np.bool_, pa.bool_()),
        _nullable(rows.spend, np.float64, pa.float64()),
        _nullable(rows.opt_out, np.bool_, pa.bool_()),
        _nullable(rows.executed_action_index, np.int32, pa.int32()),
        _nullable(rows.reported_at_us, np.int64, _US),
        pa.array(status, type=pa.string()),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=EXPORT_SCHEMA)


def export_parquet(
    log_path: str | Path,
    out_dir: str | Path,
    *,
    outcome_window_s: float = 7 * 86400,
    default_reward: float = 0.0,
    include_pending: bool = False,
    now_us: int | None = None,
    chunk_rows: int = CHUNK_ROWS,
    record: bool = False,
    shard: str | None = None,
) -> ExportSummary:
    """Write the decisions of ``log_path`` joined with their outcomes under ``out_dir``.

    See the module docstring for the columns and ``outcome_status``; ``now_us`` (default: the
    wall clock) fixes "now" for the window. Partitions (dates) this export writes replace
    those already in ``out_dir``; other dates are left alone, and ``_models.json`` keeps the
    models it already lists (this log's entries win).

    ``record``: once the files are written, record the export in the log's ``exports`` table
    (a short write transaction; the only write an export makes, and it upgrades an older
    log) with what its snapshot covered, so ``cvm logs prune`` may later drop those decisions
    (:mod:`cvm_rl.logs.retention`). The covered range is read inside the snapshot; it is
    written only after the export succeeded, so a failed export never counts as one.

    ``shard``: this log's name among several exported into ``out_dir`` (e.g. one per replica;
    :data:`SHARD_PATTERN`): its files are named after it, and only its own files of the dates
    it writes are replaced (see the module docstring).
    """
    if shard is not None and not SHARD_PATTERN.fullmatch(shard):
        raise ValueError(
            f"shard: {shard!r} is not a shard name (letters, digits, '_', '.', '-', not first; "
            "at most 64 characters)"
        )
    window = OutcomeWindow(outcome_window_s, default_reward, now_us)
    out = Path(out_dir)
    counts = _Counts()
    written: set[Path] = set()
    # A shard overwrites its own files (and drops its stale ones below), not other shards'.
    basename = "part-{i}.parquet" if shard is None else f"part-{shard}-{{i}}.parquet"
    existing = "delete_matching" if shard is None else "overwrite_or_ignore"
    with open_read_only(log_path) as reader, reader.snapshot():  # one snapshot for it all
        models = reader.models()
        covered = snapshot_coverage(reader.db, window.deadline_us)
        acts = _Activations.of(reader.activations(), models)
        described = json.dumps(models_json(models), indent=2, sort_keys=True)
        metadata = {MODELS_METADATA_KEY: described.encode()}
        schema = EXPORT_SCHEMA.with_metadata(metadata)
        chunks = reader.chunks(chunk_rows)

        def batches() -> Iterator[pa.RecordBatch]:
            for rows in chunks:
                batch = _chunk_batch(
                    rows, acts, window, include_pending=include_pending, counts=counts
                )
                if batch is not None:
                    yield batch.replace_schema_metadata(metadata)

        try:
            ds.write_dataset(
                batches(),
                out,
                schema=schema,
                format="parquet",
                partitioning=ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive"),
                basename_template=basename,
                existing_data_behavior=existing,
                preserve_order=True,
                file_visitor=lambda f: written.add(Path(f.path).resolve()),
            )
        except sqlite3.DatabaseError as exc:
            raise DecisionLogError(f"{log_path}: cannot read the decision log ({exc})") from None
    if shard is not None:
        _drop_stale_shard_files(out, shard, counts.dates, written)
    _write_models_json(out, models_json(models))
    mark = record_export(log_path, covered, counts.rows, out) if record else None
    return ExportSummary(
        rows=counts.rows,
        with_outcome=counts.reported,
        defaulted=counts.defaulted,
        pending=counts.pending,
        pending_skipped=counts.pending_skipped,
        partitions=sorted(counts.dates),
        out_dir=out,
        mark=mark,
    )


def _drop_stale_shard_files(out: Path, shard: str, dates: set[str], written: set[Path]) -> None:
    """Remove ``shard``'s files of ``dates`` that this export did not (over)write: what an
    earlier export of the shard wrote in more files."""
    mine = re.compile(rf"part-{re.escape(shard)}-\d+\.parquet")
    for date in dates:
        for path in (out / f"date={date}").glob("*.parquet"):
            if mine.fullmatch(path.name) and path.resolve() not in written:
                path.unlink()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc}); remove it to re-export") from None
    return loaded if isinstance(loaded, dict) else {}


def _write_models_json(out: Path, models: dict[str, dict[str, Any]]) -> None:
    """Merge ``models`` into ``out/_models.json`` (partitions of earlier exports may use
    older models), taking in and removing an earlier export's ``models.json``."""
    path, legacy = out / MODELS_FILE, out / LEGACY_MODELS_FILE
    merged: dict[str, Any] = {}
    for previous in (legacy, path):
        if previous.is_file():
            merged.update(_read_json(previous))
    merged.update(models)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    legacy.unlink(missing_ok=True)


def read_models(out_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``_models.json`` of an export (``models.json`` in earlier ones): model_id ->
    feature_names, action_names, kind, version."""
    root = Path(out_dir)
    for path in (root / MODELS_FILE, root / LEGACY_MODELS_FILE):
        if path.is_file():
            models: dict[str, dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
            return models
    raise FileNotFoundError(f"{root / MODELS_FILE}: not found (not an export directory?)")


def read_export(out_dir: str | Path) -> pa.Table:
    """The exported rows of ``out_dir`` as one table of :data:`EXPORT_SCHEMA` (``date`` as a
    string; rows ordered by date, then as written), with ``_models.json`` in the schema
    metadata under :data:`MODELS_METADATA_KEY`."""
    root = Path(out_dir)
    models = read_models(root)
    files = sorted(str(p) for p in root.glob("date=*/*.parquet"))
    dataset = ds.dataset(
        files,
        schema=EXPORT_SCHEMA,
        format="parquet",
        partitioning=ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive"),
        partition_base_dir=str(root),
    )
    table = dataset.to_table()
    return table.replace_schema_metadata(
        {MODELS_METADATA_KEY: json.dumps(models, indent=2, sort_keys=True).encode()}
    )
