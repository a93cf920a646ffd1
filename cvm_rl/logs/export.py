"""Export a decision log (:mod:`cvm_rl.logs.store`) as Parquet: one row per decision, joined
with its outcome and with the model and settings that decided it.

The output is a hive-partitioned dataset ``out_dir/date=YYYY-MM-DD/part-0.parquet`` (UTC
date of the decision) plus ``out_dir/models.json`` (``model_id`` -> ``feature_names``,
``action_names``, ``kind``, ``version``) so a reader knows what the ``features`` and
``eligible`` lists mean. The same JSON is in each file's Parquet schema metadata under
``b"cvm_rl.models"``. Read it back with :func:`read_export`.

=====================  ===================  =======================================================
column                 type                 meaning
=====================  ===================  =======================================================
event_id               string               the decision's unique id (the outcome's key)
customer_id            string               the caller's customer id
decided_at             timestamp[us, UTC]   decision time
date                   string               ``YYYY-MM-DD`` of ``decided_at`` in UTC (partition key)
model_id               string               the bundle that decided (key of ``models.json``)
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
reported_at            timestamp[us, UTC]?  when the outcome was observed; null without one
outcome_status         string               ``reported`` | ``default`` | ``pending``
=====================  ===================  =======================================================

(``?``: nullable.) Within one model every row has the same ``features`` and ``eligible``
lengths; rows of different models may differ.

``outcome_status``: ``reported`` when the log holds an outcome; ``default`` when it does not
and ``decided_at + outcome_window_s < now`` (the outcome is taken to be "nothing happened":
``reward = default_reward``, the other outcome fields null); ``pending`` when the window has
not passed yet (``reward`` null). Pending rows are left out unless ``include_pending``.

The log is opened read-only (SQLite URI ``mode=ro``) and read in one read transaction, so an
export sees one consistent snapshot of a live log and never writes to it (SQLite may leave
empty ``-wal`` / ``-shm`` files next to a closed log). Rows are read in chunks of
``chunk_rows`` by ``seq`` (each request's matrices fetched once per chunk) and decoded in
bulk with numpy, so only one chunk exists as Python objects at a time; the chunks stream
into ``pyarrow.dataset.write_dataset``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from cvm_rl.logs.store import SCHEMA_VERSION, DecisionLogError, now_us

MODELS_FILE = "models.json"
MODELS_METADATA_KEY = b"cvm_rl.models"
CHUNK_ROWS = 100_000
OUTCOME_STATUSES = ("reported", "default", "pending")
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
        ("reported_at", _US),
        ("outcome_status", pa.string()),
    ]
)
"""Columns of an export, in order (the table in the module docstring)."""

_SELECT_CHUNK = """
SELECT d.seq, d.event_id, d.customer_id, d.decided_at_us, d.request, d.action_index,
       d.propensity, d.policy_action_index, d.policy_propensity, d.baseline_action_index,
       d.explored, d.request_row,
       o.event_id, o.reward, o.purchase, o.spend, o.opt_out, o.reported_at_us
FROM decisions AS d LEFT JOIN outcomes AS o ON o.event_id = d.event_id
WHERE d.seq > ? ORDER BY d.seq LIMIT ?
"""
_SELECT_REQUESTS = """
SELECT id, activation, n_features, n_actions, features, eligible, probabilities
FROM requests WHERE id IN ({marks})
"""


def _with_request_data(
    db: sqlite3.Connection, rows: list[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    """Chunk rows with each decision's activation, features, eligibility and probabilities
    taken from its request (fetched once per request): the layout :func:`_chunk_batch` reads.
    """
    ids = sorted({r[4] for r in rows})
    requests = {}
    for start in range(0, len(ids), 900):
        part = ids[start : start + 900]
        for rid, *rest in db.execute(
            _SELECT_REQUESTS.format(marks=", ".join("?" * len(part))), part
        ):
            requests[rid] = rest
    out = []
    for r in rows:
        request = requests.get(r[4])
        if request is None:
            raise DecisionLogError(f"decision {r[1]!r} names request {r[4]}, which the log lacks")
        activation, n_features, n_actions, features, eligible, probs = request
        i = r[11]
        out.append(
            (
                *r[:4],
                activation,
                *r[5:11],
                features[4 * i * n_features : 4 * (i + 1) * n_features],
                eligible[i * n_actions : (i + 1) * n_actions],
                None if probs is None else probs[8 * i * n_actions : 8 * (i + 1) * n_actions],
                *r[12:],
            )
        )
    return out


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

    def line(self) -> str:
        """One-line summary for the command line."""
        return (
            f"exported {self.rows} decisions to {self.out_dir}: {self.with_outcome} reported, "
            f"{self.defaulted} defaulted, {self.pending} pending "
            f"({self.pending_skipped} skipped), {len(self.partitions)} partitions"
            + (f" ({self.partitions[0]} .. {self.partitions[-1]})" if self.partitions else "")
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

    def position(self, activation: np.ndarray, event_ids: np.ndarray) -> np.ndarray:
        """Index into these lookups of each decision's activation."""
        if not len(self.seqs):
            raise DecisionLogError("the log holds decisions but no activations")
        pos = np.searchsorted(self.seqs, activation)
        pos = np.minimum(pos, len(self.seqs) - 1)
        bad = self.seqs[pos] != activation
        if bad.any():
            raise DecisionLogError(
                f"decision {event_ids[bad][0]!r} names activation {activation[bad][0]}, "
                "which the log does not hold"
            )
        return pos


def open_read_only(log_path: str | Path) -> sqlite3.Connection:
    """A read-only connection to an existing decision log; FileNotFoundError when it is
    missing, :class:`DecisionLogError` when it is not a decision log of this schema version."""
    path = Path(log_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: decision log not found")
    # write_dataset pulls the record batches from one of pyarrow's threads, one at a time.
    db = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=ro",
        uri=True,
        isolation_level=None,
        check_same_thread=False,
    )
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError as exc:
        db.close()
        raise DecisionLogError(f"{path}: not a decision log ({exc})") from None
    if row is None or row[0] != str(SCHEMA_VERSION):
        db.close()
        found = "no schema_version" if row is None else f"schema_version {row[0]}"
        raise DecisionLogError(f"{path}: {found}, but this cvm-rl reads {SCHEMA_VERSION}")
    return db


def _models(db: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    rows = db.execute(
        "SELECT model_id, model_version, kind, feature_names, action_names FROM models "
        "ORDER BY model_id"
    ).fetchall()
    return {
        model_id: {
            "feature_names": json.loads(features),
            "action_names": json.loads(actions),
            "kind": kind,
            "version": version,
        }
        for model_id, version, kind, features, actions in rows
    }


def _activations(db: sqlite3.Connection, models: dict[str, dict[str, Any]]) -> _Activations:
    rows = db.execute(
        "SELECT seq, model_id, learning_mode, exploration, exploration_param FROM activations "
        "ORDER BY seq"
    ).fetchall()
    ids = [r[1] for r in rows]
    return _Activations(
        seqs=np.array([r[0] for r in rows], dtype=np.int64),
        model_id=np.array(ids, dtype=object),
        model_version=np.array([models[m]["version"] for m in ids], dtype=object),
        learning_mode=np.array([r[2] for r in rows], dtype=object),
        exploration=np.array([r[3] for r in rows], dtype=object),
        exploration_param=np.array([r[4] for r in rows], dtype=np.float64),
        action_names=[np.array(models[m]["action_names"], dtype=object) for m in ids],
    )


def _list_array(
    blobs: list[bytes | None], item: str, value: type, value_type: pa.DataType, where: str
) -> pa.Array:
    """BLOBs of fixed-size items (``item``: their stored numpy dtype, ``value``: the native
    one) as one Arrow list array, decoded with one ``frombuffer``; ``None`` becomes null."""
    itemsize = np.dtype(item).itemsize
    sizes = np.fromiter((0 if b is None else len(b) for b in blobs), np.int64, len(blobs))
    if (sizes % itemsize).any():
        raise DecisionLogError(f"{where}: a BLOB is not a whole number of {itemsize}-byte items")
    offsets = np.zeros(len(blobs) + 1, dtype=np.int32)
    np.cumsum(sizes // itemsize, out=offsets[1:])
    values = np.frombuffer(b"".join(b for b in blobs if b is not None), dtype=item)
    flat = pa.array(values.astype(value), type=value_type)
    nulls = np.fromiter((b is None for b in blobs), bool, len(blobs))
    mask = pa.array(nulls) if nulls.any() else None
    return pa.ListArray.from_arrays(pa.array(offsets), flat, mask=mask)


def _nullable(values: tuple[Any, ...], dtype: type, arrow: pa.DataType) -> pa.Array:
    """A column of Python values with ``None`` as null, built through numpy ``dtype``."""
    known = np.fromiter((v is not None for v in values), bool, len(values))
    filled: np.ndarray = np.array([0 if v is None else v for v in values], dtype=dtype)
    return pa.array(filled, type=arrow, mask=~known)


def _chunk_batch(
    rows: list[tuple[Any, ...]],
    acts: _Activations,
    *,
    deadline_us: int,
    default_reward: float,
    include_pending: bool,
    counts: _Counts,
) -> pa.RecordBatch | None:
    """One chunk of joined rows as a record batch of :data:`EXPORT_SCHEMA` (None if empty)."""
    decided_at = np.fromiter((r[3] for r in rows), np.int64, len(rows))
    has_outcome = np.fromiter((r[14] is not None for r in rows), bool, len(rows))
    pending = ~has_outcome & (decided_at >= deadline_us)
    counts.pending += int(pending.sum())
    if pending.any() and not include_pending:
        counts.pending_skipped += int(pending.sum())
        keep = np.flatnonzero(~pending)
        if not len(keep):
            return None
        rows = [rows[i] for i in keep]
        decided_at, has_outcome, pending = decided_at[keep], has_outcome[keep], pending[keep]
    defaulted = ~has_outcome & ~pending
    n = len(rows)
    counts.rows += n
    counts.reported += int(has_outcome.sum())
    counts.defaulted += int(defaulted.sum())

    columns = list(zip(*rows, strict=True))
    event_ids = np.array(columns[1], dtype=object)
    pos = acts.position(np.array(columns[4], dtype=np.int64), event_ids)
    action_index = np.array(columns[5], dtype=np.int32)
    action_name = np.empty(n, dtype=object)
    for p in np.unique(pos):
        rows_of = pos == p
        names = acts.action_names[p]
        indices = action_index[rows_of]
        if indices.max() >= len(names):
            bad = event_ids[rows_of][indices >= len(names)][0]
            raise DecisionLogError(
                f"decision {bad!r}: action_index beyond model {acts.model_id[p]!r}'s "
                f"{len(names)} actions"
            )
        action_name[rows_of] = names[indices]
    dates = decided_at.astype("datetime64[us]").astype("datetime64[D]").astype(str)
    counts.dates.update(np.unique(dates).tolist())

    reward = np.array([0.0 if r is None else r for r in columns[15]], dtype=np.float64)
    reward[defaulted] = default_reward
    status = np.where(has_outcome, "reported", np.where(defaulted, "default", "pending"))
    where = f"decisions from seq {rows[0][0]}"
    arrays = [
        pa.array(event_ids, type=pa.string()),
        pa.array(columns[2], type=pa.string()),
        pa.array(decided_at, type=_US),
        pa.array(dates, type=pa.string()),
        pa.array(acts.model_id[pos], type=pa.string()),
        pa.array(acts.model_version[pos], type=pa.string()),
        pa.array(acts.learning_mode[pos], type=pa.string()),
        pa.array(acts.exploration[pos], type=pa.string()),
        pa.array(acts.exploration_param[pos], type=pa.float64()),
        pa.array(action_index, type=pa.int32()),
        pa.array(action_name, type=pa.string()),
        pa.array(np.array(columns[6], dtype=np.float64), type=pa.float64()),
        pa.array(np.array(columns[7], dtype=np.int32), type=pa.int32()),
        pa.array(np.array(columns[8], dtype=np.float64), type=pa.float64()),
        _nullable(columns[9], np.int32, pa.int32()),
        pa.array(np.array(columns[10], dtype=bool), type=pa.bool_()),
        _list_array(list(columns[11]), "<f4", np.float32, pa.float32(), f"{where}: features"),
        _list_array(list(columns[12]), "u1", np.bool_, pa.bool_(), f"{where}: eligible"),
        _list_array(list(columns[13]), "<f8", np.float64, pa.float64(), f"{where}: probabilities"),
        pa.array(reward, type=pa.float64(), mask=pending),
        _nullable(columns[16], np.bool_, pa.bool_()),
        _nullable(columns[17], np.float64, pa.float64()),
        _nullable(columns[18], np.bool_, pa.bool_()),
        _nullable(columns[19], np.int64, _US),
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
) -> ExportSummary:
    """Write the decisions of ``log_path`` joined with their outcomes under ``out_dir``.

    See the module docstring for the columns and ``outcome_status``; ``now_us`` (default: the
    wall clock) fixes "now" for the window. Partitions (dates) this export writes replace
    those already in ``out_dir``; other dates are left alone, and ``models.json`` keeps the
    models it already lists (this log's entries win).
    """
    if not (np.isfinite(outcome_window_s) and outcome_window_s >= 0):
        raise ValueError(f"outcome_window_s must be finite and >= 0, got {outcome_window_s!r}")
    if not np.isfinite(default_reward):
        raise ValueError(f"default_reward must be finite, got {default_reward!r}")
    if int(chunk_rows) < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    now = _now_us() if now_us is None else int(now_us)
    deadline_us = now - round(outcome_window_s * 1_000_000)
    out = Path(out_dir)
    db = open_read_only(log_path)
    counts = _Counts()
    try:
        db.execute("BEGIN")  # one snapshot for the whole export
        models = _models(db)
        acts = _activations(db, models)
        models_json = json.dumps(models, indent=2, sort_keys=True)
        schema = EXPORT_SCHEMA.with_metadata({MODELS_METADATA_KEY: models_json.encode()})

        def batches() -> Iterator[pa.RecordBatch]:
            last_seq = 0
            while True:
                rows = db.execute(_SELECT_CHUNK, (last_seq, int(chunk_rows))).fetchall()
                if not rows:
                    return
                last_seq = rows[-1][0]
                rows = _with_request_data(db, rows)
                batch = _chunk_batch(
                    rows,
                    acts,
                    deadline_us=deadline_us,
                    default_reward=float(default_reward),
                    include_pending=include_pending,
                    counts=counts,
                )
                if batch is not None:
                    yield batch.replace_schema_metadata(schema.metadata)

        try:
            ds.write_dataset(
                batches(),
                out,
                schema=schema,
                format="parquet",
                partitioning=ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive"),
                basename_template="part-{i}.parquet",
                existing_data_behavior="delete_matching",
                preserve_order=True,
            )
        except sqlite3.DatabaseError as exc:
            raise DecisionLogError(f"{log_path}: cannot read the decision log ({exc})") from None
        db.execute("COMMIT")
    finally:
        db.close()
    _write_models_json(out / MODELS_FILE, models)
    return ExportSummary(
        rows=counts.rows,
        with_outcome=counts.reported,
        defaulted=counts.defaulted,
        pending=counts.pending,
        pending_skipped=counts.pending_skipped,
        partitions=sorted(counts.dates),
        out_dir=out,
    )


_now_us = now_us  # export_parquet's ``now_us`` argument shadows the helper


def _write_models_json(path: Path, models: dict[str, dict[str, Any]]) -> None:
    """Merge ``models`` into ``path`` (partitions of earlier exports may use older models)."""
    merged: dict[str, Any] = {}
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON ({exc}); remove it to re-export") from None
        if isinstance(previous, dict):
            merged.update(previous)
    merged.update(models)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_models(out_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``models.json`` of an export: model_id -> feature_names, action_names, kind, version."""
    path = Path(out_dir) / MODELS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (not an export directory?)")
    models: dict[str, dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return models


def read_export(out_dir: str | Path) -> pa.Table:
    """The exported rows of ``out_dir`` as one table of :data:`EXPORT_SCHEMA` (``date`` as a
    string; rows ordered by date, then as written), with ``models.json`` in the schema
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
