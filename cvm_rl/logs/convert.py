"""Converters between the forms of logged feedback: a decision log (SQLite,
:mod:`cvm_rl.logs.store`) or its Parquet export (:mod:`cvm_rl.logs.export`) to the arrays model
fitting and off-policy evaluation read, :class:`~cvm_rl.logs.arrays.LoggedDecisions` (a
:class:`~cvm_rl.logs.arrays.LoggedData` plus what identifies each row).

=====================  ========================================================================
array                  from the log's / the export's column
=====================  ========================================================================
data.obs               ``features`` (raw, in the model's feature order)
data.mask              ``eligible``
data.actions           ``action_index``: the served action, the one the logging policy chose
data.propensities      ``propensity``: the probability with which it was chosen
data.rewards           ``reward``: reported, or the default reward once the window has passed
data.executed          ``executed_action_index`` where set, else ``action_index``
event_ids              ``event_id``
customer_ids           ``customer_id``
decided_at_us          ``decided_at_us`` / ``decided_at`` (microseconds since the epoch, UTC)
model_ids              the model of the decision's activation / ``model_id``
probabilities          ``probabilities`` (NaN rows where not logged; None when no row has any)
=====================  ========================================================================

Rows without a reward (``pending``: no outcome yet, inside the outcome window) are left out;
``default`` rows keep the default reward (the export's, or the one given to
:func:`decisions_from_log`, by the rule of :class:`~cvm_rl.logs.reader.OutcomeWindow`). Rows
come in decision-time order, ties in the log's order, so a log and its export convert to the
same arrays. The rows must share one feature schema (the models' ``feature_names`` and
``action_names``): rows of models that differ are refused; ``model_ids`` selects the rows of
some models.

The log is read read-only, in one snapshot, by :mod:`cvm_rl.logs.reader`; pyarrow is imported
only to convert an export.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cvm_rl.logs.arrays import LoggedData, LoggedDecisions
from cvm_rl.logs.reader import (
    CHUNK_ROWS,
    DecisionRows,
    OutcomeWindow,
    activation_positions,
    open_read_only,
)
from cvm_rl.logs.records import DecisionLogError
from cvm_rl.logs.schema import OutcomeStatus

if TYPE_CHECKING:
    import pyarrow as pa

Schema = tuple[tuple[str, ...], tuple[str, ...]]
"""A model's ``(feature_names, action_names)``."""

TABLE_COLUMNS = (
    "event_id",
    "customer_id",
    "decided_at",
    "model_id",
    "action_index",
    "propensity",
    "features",
    "eligible",
    "probabilities",
    "reward",
    "executed_action_index",
)
"""Columns of an export that :func:`decisions_from_table` reads."""


@dataclass(frozen=True)
class _Part:
    """Rows of one source in its order, before they are put in decision-time order."""

    event_ids: np.ndarray
    customer_ids: np.ndarray
    decided_at_us: np.ndarray
    model_ids: np.ndarray
    obs: np.ndarray
    mask: np.ndarray
    actions: np.ndarray
    propensities: np.ndarray
    rewards: np.ndarray
    executed: np.ndarray
    probabilities: np.ndarray

    @classmethod
    def empty(cls, n_features: int, n_actions: int) -> _Part:
        def no(dtype: Any, *width: int) -> np.ndarray:
            return np.empty((0, *width), dtype=dtype)

        return cls(
            event_ids=no(object),
            customer_ids=no(object),
            decided_at_us=no(np.int64),
            model_ids=no(object),
            obs=no(np.float32, n_features),
            mask=no(bool, n_actions),
            actions=no(np.int64),
            propensities=no(np.float64),
            rewards=no(np.float64),
            executed=no(np.int64),
            probabilities=no(np.float64, n_actions),
        )


def _one_schema(schemas: Mapping[str, Schema], used: Iterable[str]) -> Schema | None:
    """The one schema of the ``used`` models (None when there are none); a ValueError naming
    every model when they differ."""
    used = sorted(set(used))
    distinct = {schemas[m] for m in used}
    if len(distinct) > 1:
        described = ", ".join(
            f"{m!r} ({len(schemas[m][0])} features, {len(schemas[m][1])} actions)" for m in used
        )
        raise ValueError(
            f"mixed feature schemas: the rows of models {described} differ in feature_names or "
            "action_names; convert the rows of one schema at a time (model_ids=...)"
        )
    return distinct.pop() if distinct else None


def _selected(schemas: Mapping[str, Schema], model_ids: Collection[str] | None) -> set[str]:
    """The model ids whose rows to convert (all when ``model_ids`` is None)."""
    if model_ids is None:
        return set(schemas)
    if isinstance(model_ids, str):
        raise ValueError(f"model_ids must be a collection of model ids, got the str {model_ids!r}")
    unknown = sorted(set(model_ids) - set(schemas))
    if unknown:
        raise ValueError(
            f"model_ids: {', '.join(map(repr, unknown))} not among the models "
            f"{', '.join(map(repr, sorted(schemas)))}"
        )
    return set(model_ids)


def _assemble(parts: list[_Part], schema: Schema | None) -> LoggedDecisions:
    """The parts as one :class:`LoggedDecisions` in decision-time order (ties keep order)."""
    feature_names, action_names = schema if schema is not None else ((), ())
    parts = parts or [_Part.empty(len(feature_names), len(action_names))]
    joined = {
        f.name: np.concatenate([getattr(p, f.name) for p in parts])
        for f in dataclasses.fields(_Part)
    }
    order = np.argsort(joined["decided_at_us"], kind="stable")
    c = {name: value[order] for name, value in joined.items()}
    probabilities = c["probabilities"]
    logged = ~np.isnan(probabilities).all(axis=1) if probabilities.shape[1] else np.zeros(0, bool)
    return LoggedDecisions(
        data=LoggedData(
            obs=c["obs"],
            mask=c["mask"],
            actions=c["actions"],
            propensities=c["propensities"],
            rewards=c["rewards"],
            executed=c["executed"],
        ),
        event_ids=c["event_ids"],
        customer_ids=c["customer_ids"],
        decided_at_us=c["decided_at_us"],
        model_ids=c["model_ids"],
        probabilities=probabilities if logged.any() else None,
        feature_names=feature_names,
        action_names=action_names,
    )


# --------------------------------------------------------------------------- decision log
def decisions_from_log(
    log_path: str | Path,
    *,
    outcome_window_s: float = 7 * 86400,
    default_reward: float = 0.0,
    now_us: int | None = None,
    model_ids: Collection[str] | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> LoggedDecisions:
    """The decisions of the log at ``log_path`` that have a reward, as arrays.

    ``outcome_window_s``, ``default_reward`` and ``now_us`` decide which decisions without
    an outcome get ``default_reward`` and which are pending (left out), as
    :func:`~cvm_rl.logs.export.export_parquet` does with the same arguments. ``model_ids``:
    only the rows of these models. The log is read ``chunk_rows`` decisions at a time.
    """
    window = OutcomeWindow(outcome_window_s, default_reward, now_us)
    with open_read_only(log_path) as reader, reader.snapshot():
        schemas = {
            m.model_id: (tuple(m.feature_names), tuple(m.action_names))
            for m in reader.models().values()
        }
        selected = _selected(schemas, model_ids)
        activations = reader.activations()
        seqs = np.array([a.seq for a in activations], dtype=np.int64)
        model_of = np.array([a.model_id for a in activations], dtype=object)
        parts: list[_Part] = []
        used: set[str] = set()
        mixed = False
        for rows in reader.chunks(chunk_rows):
            status = window.status(rows)
            models = model_of[activation_positions(seqs, rows, reader.where)]
            keep = (status != OutcomeStatus.PENDING.value) & np.isin(models, list(selected))
            if not keep.any():
                continue
            rows, status, models = rows.take(keep), status[keep], models[keep]
            used.update(np.unique(models).tolist())
            if mixed or len({schemas[m] for m in used}) > 1:
                mixed = True  # read on, only to name every model in the error
                continue
            rewards = window.rewards(rows, status)
            parts.append(_decode(rows, models, rewards, schemas[models[0]], reader.where))
    return _assemble(parts, _one_schema(schemas, used) or _only(schemas, selected))


def _only(schemas: Mapping[str, Schema], selected: set[str]) -> Schema | None:
    """The schema of the selected models when no row was converted and they share one."""
    distinct = {schemas[m] for m in selected}
    return distinct.pop() if len(distinct) == 1 else None


def _decode(
    rows: DecisionRows, models: np.ndarray, rewards: np.ndarray, schema: Schema, where: str
) -> _Part:
    """Rows of one schema decoded to arrays (their BLOB slices checked against it)."""
    n_features, n_actions = len(schema[0]), len(schema[1])
    logged = np.fromiter((p is not None for p in rows.probabilities), bool, len(rows))
    probabilities = np.full((len(rows), n_actions), np.nan)
    probabilities[logged] = _matrix(
        rows.probabilities[logged], rows.event_id[logged], "<f8", n_actions, "probabilities", where
    )
    executed = rows.action_index.copy()
    known = np.fromiter((e is not None for e in rows.executed_action_index), bool, len(rows))
    executed[known] = rows.executed_action_index[known].astype(np.int64)
    return _Part(
        event_ids=rows.event_id,
        customer_ids=rows.customer_id,
        decided_at_us=rows.decided_at_us,
        model_ids=models,
        obs=_matrix(rows.features, rows.event_id, "<f4", n_features, "features", where),
        mask=_matrix(rows.eligible, rows.event_id, "u1", n_actions, "eligible", where).astype(bool),
        actions=rows.action_index,
        propensities=rows.propensity,
        rewards=rewards,
        executed=executed,
        probabilities=probabilities,
    )


def _matrix(
    blobs: np.ndarray, event_ids: np.ndarray, item: str, width: int, name: str, where: str
) -> np.ndarray:
    """Equal-length BLOBs as an (N, width) matrix of ``item``; a DecisionLogError names the
    first decision whose ``name`` has another length than its model's."""
    itemsize = np.dtype(item).itemsize
    sizes = np.fromiter((len(b) for b in blobs), np.int64, len(blobs))
    wrong = sizes != width * itemsize
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        raise DecisionLogError(
            f"{where}: decision {event_ids[i]!r} has {sizes[i] / itemsize:g} {name} values, but "
            f"its model has {width}"
        )
    return np.frombuffer(b"".join(blobs), dtype=item).reshape(len(blobs), width)


# --------------------------------------------------------------------------- export
def decisions_from_export(
    out_dir: str | Path, *, model_ids: Collection[str] | None = None
) -> LoggedDecisions:
    """The rows of the export in ``out_dir`` that have a reward, as arrays (``model_ids``:
    only the rows of these models)."""
    from cvm_rl.logs.export import read_export

    return decisions_from_table(read_export(out_dir), model_ids=model_ids)


def decisions_from_table(
    table: pa.Table,
    *,
    models: Mapping[str, Mapping[str, Any]] | None = None,
    model_ids: Collection[str] | None = None,
) -> LoggedDecisions:
    """The rows of an export table (e.g. :func:`~cvm_rl.logs.export.read_export`, or
    ``pyarrow.parquet.read_table`` of an export directory) that have a reward, as arrays.

    ``models`` describes the models (``_models.json``, :func:`~cvm_rl.logs.export.
    read_models`); default: the table's schema metadata. ``model_ids``: only the rows of
    these models. An export written before ``executed_action_index`` existed reads as if the
    column were null.
    """
    import json

    import pyarrow as pa
    import pyarrow.compute as pc

    from cvm_rl.logs.export import MODELS_METADATA_KEY

    if models is None:
        described = (table.schema.metadata or {}).get(MODELS_METADATA_KEY)
        if described is None:
            raise ValueError(
                f"models: the table has no {MODELS_METADATA_KEY!r} schema metadata; pass "
                "models=read_models(out_dir)"
            )
        models = json.loads(described)
    missing = [c for c in TABLE_COLUMNS if c not in table.column_names]
    if missing == ["executed_action_index"]:
        table = table.append_column(
            "executed_action_index", pa.nulls(table.num_rows, type=pa.int32())
        )
    elif missing:
        raise ValueError(f"table: no column {', '.join(map(repr, missing))} (not an export?)")
    schemas = {m: (tuple(d["feature_names"]), tuple(d["action_names"])) for m, d in models.items()}
    present = set(pc.unique(table.column("model_id")).to_pylist())
    undescribed = sorted(present - set(schemas))
    if undescribed:
        raise ValueError(f"models: no description of model_id {', '.join(map(repr, undescribed))}")
    selected = _selected(schemas, model_ids)
    keep = pc.and_(
        pc.is_valid(table.column("reward")),
        pc.is_in(table.column("model_id"), value_set=pa.array(sorted(selected), pa.string())),
    )
    table = table.filter(keep)
    _refuse_duplicate_events(table)
    used = pc.unique(table.column("model_id")).to_pylist()
    schema = _one_schema(schemas, used) or _only(schemas, selected)
    if not table.num_rows:
        return _assemble([], schema)
    assert schema is not None
    n_features, n_actions = len(schema[0]), len(schema[1])
    executed = pc.coalesce(
        table.column("executed_action_index"), table.column("action_index").cast(pa.int32())
    )
    part = _Part(
        event_ids=_numpy(table.column("event_id")),
        customer_ids=_numpy(table.column("customer_id")),
        decided_at_us=_numpy(table.column("decided_at").cast(pa.int64())),
        model_ids=_numpy(table.column("model_id")),
        obs=_list_matrix(table.column("features"), n_features, "features"),
        mask=_list_matrix(table.column("eligible"), n_actions, "eligible"),
        actions=_numpy(table.column("action_index")).astype(np.int64),
        propensities=_numpy(table.column("propensity")),
        rewards=_numpy(table.column("reward")),
        executed=_numpy(executed).astype(np.int64),
        probabilities=_list_matrix(table.column("probabilities"), n_actions, "probabilities"),
    )
    return _assemble([part], schema)


def _refuse_duplicate_events(table: pa.Table) -> None:
    """A ValueError naming an event id that appears on more than one row: the same decision
    counted twice (e.g. a retry that two replicas both logged, their shards exported into one
    dataset) would weigh twice in every estimate."""
    import pyarrow.compute as pc

    ids = table.column("event_id")
    if pc.count_distinct(ids).as_py() == table.num_rows:
        return
    counts = pc.value_counts(ids)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    first = repeated[0].as_py()
    raise ValueError(
        f"table: event_id {first['values']!r} is on {first['counts']} rows ({len(repeated)} ids "
        "repeated): a decision logged twice (by two replicas?) would count twice; keep one row "
        "per event id"
    )


def _numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    array: np.ndarray = column.to_numpy(zero_copy_only=False)
    return array


def _list_matrix(column: pa.ChunkedArray, width: int, name: str) -> np.ndarray:
    """A list column as an (N, width) matrix; null lists become NaN rows (floats only). A
    ValueError names the column when a list has another length than the model's."""
    import pyarrow.compute as pc

    lists = column.combine_chunks()
    valid = _numpy(lists.is_valid())
    lengths = _numpy(pc.fill_null(pc.list_value_length(lists), width))
    if (lengths != width).any():
        row = int(np.flatnonzero(lengths != width)[0])
        raise ValueError(f"{name}: row {row} has {lengths[row]} values, but its model has {width}")
    values = _numpy(lists.flatten()).reshape(int(valid.sum()), width)
    if valid.all():
        return values
    out = np.full((len(lists), width), np.nan)
    out[valid] = values
    return out
