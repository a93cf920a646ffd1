"""The one reader of a decision log, used by the store (:mod:`cvm_rl.logs.store`), the Parquet
export (:mod:`cvm_rl.logs.export`) and the converters (:mod:`cvm_rl.logs.convert`).

It owns what reading needs: opening a log read-only with the schema-version check
(:func:`open_read_only`), selects by many keys in chunks of ``IN (...)`` (SQLite limits the
host parameters of one statement), reading an older log as it is (the columns it lacks read
as NULL, see :data:`~cvm_rl.logs.schema.ADDED_IN`), and slicing one decision's features,
eligibility and probabilities out of its request's row-major BLOBs (:class:`DecisionRows`).

:class:`OutcomeWindow` is the rule that gives a decision its outcome status (see
:class:`~cvm_rl.logs.schema.OutcomeStatus`): ``reported`` when the log holds an outcome;
``default`` when it does not and ``decided_at + outcome_window_s < now`` (the outcome is taken
to be "nothing happened": ``reward = default_reward``); ``pending`` when the window has not
passed yet (no reward).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvm_rl.logs.records import (
    Activation,
    DecisionLogError,
    ModelRecord,
    OutcomeRecord,
    StoredDecision,
)
from cvm_rl.logs.schema import (
    ADDED_IN,
    DECISION_COLUMNS,
    MIGRATIONS,
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    OutcomeStatus,
    now_us,
)

CHUNK_ROWS = 100_000
"""Decisions per chunk of :meth:`LogReader.chunks` unless told otherwise."""
IN_CHUNK = 900
"""Keys per ``IN (...)`` select (SQLite's default limit is 32766 host parameters)."""

_SELECT_REQUESTS = (
    "SELECT id, activation, n_features, n_actions, features, eligible, probabilities "
    "FROM requests WHERE id IN ({marks})"
)


def read_schema_version(db: sqlite3.Connection) -> str | None:
    """``meta.schema_version`` as stored (None when unset); sqlite3.DatabaseError when the
    database has no ``meta`` table or is not SQLite."""
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return None if row is None else str(row[0])


def version_error(where: str | Path, found: str | None) -> DecisionLogError:
    """The error for a log of a version this code neither reads nor upgrades."""
    older = ", ".join(str(v) for v in MIGRATIONS)
    what = "no schema_version" if found is None else f"schema_version {found}"
    reads = f"this cvm-rl reads {SCHEMA_VERSION} (and {older})"
    return DecisionLogError(f"{where}: {what}, but {reads}")


def open_read_only(log_path: str | Path) -> LogReader:
    """A reader on an existing decision log, opened read-only (SQLite URI ``mode=ro``): it
    never writes, not even to upgrade an older version. FileNotFoundError when the file is
    missing, :class:`DecisionLogError` when it is not a decision log of a readable version."""
    path = Path(log_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: decision log not found")
    # The export's write_dataset pulls record batches from one of pyarrow's threads.
    db = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=ro",
        uri=True,
        isolation_level=None,
        check_same_thread=False,
    )
    try:
        found = read_schema_version(db)
    except sqlite3.DatabaseError as exc:
        db.close()
        raise DecisionLogError(f"{path}: not a decision log ({exc})") from None
    if found not in {str(v) for v in READABLE_VERSIONS}:
        db.close()
        raise version_error(path, found)
    assert found is not None
    return LogReader(db, version=int(found), where=str(path))


@dataclass(frozen=True, eq=False)
class DecisionRows:
    """Decisions joined with their outcome (if any) and their request, as columns: one entry
    per decision, in the order selected.

    Nullable columns are object arrays holding None (``baseline_action_index`` and the
    outcome's columns; all outcome columns are None where ``has_outcome`` is False).
    ``features``, ``eligible`` and ``probabilities`` hold each decision's slice of its
    request's BLOBs: little-endian float32 per feature, one byte 0/1 per catalog action, and
    float64 per action (None when the distribution was not logged); as bytes, or, when read
    with ``decode=True``, as array views of the request's decoded matrices.
    """

    seq: np.ndarray
    event_id: np.ndarray
    customer_id: np.ndarray
    decided_at_us: np.ndarray
    activation: np.ndarray
    action_index: np.ndarray
    propensity: np.ndarray
    policy_action_index: np.ndarray
    policy_propensity: np.ndarray
    baseline_action_index: np.ndarray
    explored: np.ndarray
    features: np.ndarray
    eligible: np.ndarray
    probabilities: np.ndarray
    has_outcome: np.ndarray
    reward: np.ndarray
    purchase: np.ndarray
    spend: np.ndarray
    opt_out: np.ndarray
    reported_at_us: np.ndarray
    executed_action_index: np.ndarray

    def __len__(self) -> int:
        return len(self.seq)

    def take(self, indices: np.ndarray) -> DecisionRows:
        """The rows at ``indices`` (integers or a boolean mask)."""
        return DecisionRows(
            **{f.name: getattr(self, f.name)[indices] for f in dataclasses.fields(self)}
        )

    def stored(self) -> list[StoredDecision]:
        """The rows as :class:`StoredDecision` records (matrices decoded to arrays)."""
        scalars = zip(
            self.event_id.tolist(),
            self.customer_id.tolist(),
            self.decided_at_us.tolist(),
            self.activation.tolist(),
            self.action_index.tolist(),
            self.propensity.tolist(),
            self.policy_action_index.tolist(),
            self.policy_propensity.tolist(),
            self.baseline_action_index.tolist(),
            self.explored.tolist(),
            self.features.tolist(),
            self.eligible.tolist(),
            self.probabilities.tolist(),
            strict=True,
        )
        return [
            StoredDecision(
                event_id=event_id,
                customer_id=customer_id,
                decided_at_us=decided_at_us,
                activation=activation,
                action_index=action_index,
                propensity=propensity,
                policy_action_index=policy_action_index,
                policy_propensity=policy_propensity,
                baseline_action_index=None if baseline is None else int(baseline),
                explored=explored,
                features=_decoded(features, "<f4"),
                eligible=_decoded(eligible, np.uint8).astype(bool, copy=False),
                probabilities=None if probabilities is None else _decoded(probabilities, "<f8"),
            )
            for (
                event_id,
                customer_id,
                decided_at_us,
                activation,
                action_index,
                propensity,
                policy_action_index,
                policy_propensity,
                baseline,
                explored,
                features,
                eligible,
                probabilities,
            ) in scalars
        ]


_DECISION_PART = ("seq", *DECISION_COLUMNS)
_OUTCOME_PART = (
    "reward",
    "purchase",
    "spend",
    "opt_out",
    "reported_at_us",
    "executed_action_index",
)
_ROW_COLUMNS = (*_DECISION_PART, "has_outcome", *_OUTCOME_PART)
"""What :meth:`LogReader._select_rows` selects, in order: a decision's columns, whether it has
an outcome, and the outcome's columns."""
_DTYPES: dict[str, Any] = {
    "seq": np.int64,
    "decided_at_us": np.int64,
    "request": np.int64,
    "request_row": np.int64,
    "action_index": np.int64,
    "propensity": np.float64,
    "policy_action_index": np.int64,
    "policy_propensity": np.float64,
    "explored": bool,
    "has_outcome": bool,
}
"""numpy dtypes of the selected columns that are never NULL; the others are object arrays."""


class LogReader:
    """Reads a decision log through ``db`` (a connection the caller owns, or one from
    :func:`open_read_only`); ``version`` is the log's schema version (an older log's missing
    columns read as NULL); ``where`` names the log in errors.

    Not thread-safe by itself: the store calls it under its lock."""

    def __init__(
        self, db: sqlite3.Connection, *, version: int = SCHEMA_VERSION, where: str = "log"
    ) -> None:
        self.db = db
        self.version = version
        self.where = where
        decision = ", ".join(f"d.{c}" for c in _DECISION_PART)
        outcome = ", ".join(self._column("outcomes", c, "o") for c in _OUTCOME_PART)
        self._select_rows_sql = (
            f"SELECT {decision}, o.event_id IS NOT NULL, {outcome} "
            "FROM decisions AS d LEFT JOIN outcomes AS o ON o.event_id = d.event_id"
        )
        outcome = ", ".join(self._column("outcomes", c) for c in _OUTCOME_PART)
        self._select_outcomes_sql = (
            f"SELECT event_id, {outcome} FROM outcomes WHERE event_id IN " + "({marks})"
        )

    def _column(self, table: str, column: str, alias: str | None = None) -> str:
        """``alias.column``, or NULL when this log's version predates the column."""
        if self.version < ADDED_IN.get(f"{table}.{column}", 0):
            return "NULL"
        return f"{alias or table}.{column}"

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[LogReader]:
        """One read transaction: everything read inside sees the same state of a live log."""
        self.db.execute("BEGIN")
        try:
            yield self
        finally:
            self.db.execute("COMMIT")

    def select_in(self, sql: str, keys: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` (with an ``IN ({marks})`` placeholder) for all ``keys``, selected
        :data:`IN_CHUNK` keys at a time."""
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(keys), IN_CHUNK):
            chunk = list(keys[start : start + IN_CHUNK])
            marks = ", ".join("?" * len(chunk))
            rows.extend(self.db.execute(sql.format(marks=marks), chunk).fetchall())
        return rows

    # ------------------------------------------------------------------ models
    def models(self) -> dict[str, ModelRecord]:
        """Every model of the log by ``model_id`` (sorted)."""
        rows = self.db.execute(
            "SELECT model_id, model_version, kind, path, feature_names, action_names "
            "FROM models ORDER BY model_id"
        ).fetchall()
        return {
            r[0]: ModelRecord(r[0], r[1], r[2], r[3], json.loads(r[4]), json.loads(r[5]))
            for r in rows
        }

    def activations(self) -> list[Activation]:
        """Every activation, oldest first."""
        rows = self.db.execute(
            "SELECT seq, model_id, path, learning_mode, exploration, exploration_param, "
            "reason FROM activations ORDER BY seq"
        ).fetchall()
        return [Activation(*r) for r in rows]

    # ------------------------------------------------------------------ decisions
    def decisions(self, event_ids: Sequence[str]) -> dict[str, StoredDecision]:
        """Stored decisions by event id (ids never decided are absent)."""
        rows = self._select_rows(" WHERE d.event_id IN ({marks})", event_ids, decode=True)
        return {d.event_id: d for d in rows.stored()}

    def n_actions(self, event_ids: Sequence[str]) -> dict[str, int]:
        """The catalog size of each decided event id (ids never decided are absent)."""
        rows = self.select_in(
            "SELECT d.event_id, r.n_actions FROM decisions AS d "
            "JOIN requests AS r ON r.id = d.request WHERE d.event_id IN ({marks})",
            event_ids,
        )
        return {event_id: int(n) for event_id, n in rows}

    def chunks(self, chunk_rows: int) -> Iterator[DecisionRows]:
        """Every decision joined with its outcome and request, ``chunk_rows`` at a time in
        ``seq`` order (each request's BLOBs fetched once per chunk). Checks ``chunk_rows``
        at once; reads as the iterator is consumed."""
        if isinstance(chunk_rows, bool) or int(chunk_rows) < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        return self._chunks(int(chunk_rows))

    def _chunks(self, chunk_rows: int) -> Iterator[DecisionRows]:
        last_seq = 0
        while True:
            rows = self._select_rows(
                " WHERE d.seq > ? ORDER BY d.seq LIMIT ?", None, (last_seq, chunk_rows)
            )
            if not len(rows):
                return
            last_seq = int(rows.seq[-1])
            yield rows

    def _select_rows(
        self,
        where: str,
        keys: Sequence[str] | None,
        params: tuple[Any, ...] = (),
        *,
        decode: bool = False,
    ) -> DecisionRows:
        """:data:`_ROW_COLUMNS` of the decisions ``where`` selects (by ``keys`` in chunks when
        given, else with ``params``), with their requests' slices (array views when
        ``decode``)."""
        sql = self._select_rows_sql + where
        raw = self.db.execute(sql, params).fetchall() if keys is None else self.select_in(sql, keys)
        values = zip(*raw, strict=True) if raw else [()] * len(_ROW_COLUMNS)
        columns = {
            name: _column_array(column, _DTYPES.get(name, object))
            for name, column in zip(_ROW_COLUMNS, values, strict=True)
        }
        return self._with_requests(columns, decode)

    def _with_requests(self, columns: dict[str, np.ndarray], decode: bool) -> DecisionRows:
        """Each decision's activation and slices of its request's BLOBs: each request is
        fetched once, however many of its decisions are read (a replayed batch of N rows
        reads its request's matrices once, not N times). ``decode``: the slices are row views
        of each request's matrices, decoded once, instead of bytes."""
        request, request_row = columns.pop("request"), columns.pop("request_row")
        ids = np.unique(request).tolist()
        requests: dict[int, Any] = {
            rid: rest for rid, *rest in self.select_in(_SELECT_REQUESTS, ids)
        }
        if decode:
            requests = {rid: _decode_request(*rest) for rid, rest in requests.items()}
        n = len(request)
        activation = np.empty(n, dtype=np.int64)
        features, eligible, probabilities = (np.empty(n, dtype=object) for _ in range(3))
        for i, (rid, r) in enumerate(zip(request.tolist(), request_row.tolist(), strict=True)):
            found = requests.get(rid)
            if found is None:
                raise DecisionLogError(
                    f"{self.where}: decision {columns['event_id'][i]!r} names request {rid}, "
                    "which the log lacks"
                )
            activation[i], n_features, n_actions, f, e, p = found
            if decode:
                features[i], eligible[i] = f[r], e[r]
                probabilities[i] = None if p is None else p[r]
                continue
            features[i] = f[4 * r * n_features : 4 * (r + 1) * n_features]
            eligible[i] = e[r * n_actions : (r + 1) * n_actions]
            probabilities[i] = None if p is None else p[8 * r * n_actions : 8 * (r + 1) * n_actions]
        return DecisionRows(
            activation=activation,
            features=features,
            eligible=eligible,
            probabilities=probabilities,
            **columns,
        )

    # ------------------------------------------------------------------ outcomes
    def outcomes(self, event_ids: Sequence[str]) -> dict[str, OutcomeRecord]:
        """Stored outcomes by event id (ids without one are absent)."""
        return {
            event_id: OutcomeRecord(
                event_id,
                reward,
                None if purchase is None else bool(purchase),
                spend,
                None if opt_out is None else bool(opt_out),
                reported_at_us,
                executed,
            )
            for event_id, reward, purchase, spend, opt_out, reported_at_us, executed in (
                self.select_in(self._select_outcomes_sql, event_ids)
            )
        }


def activation_positions(seqs: np.ndarray, rows: DecisionRows, where: str) -> np.ndarray:
    """Index into ``seqs`` (every ``activations.seq``, ascending) of each row's activation; a
    :class:`DecisionLogError` names a decision whose activation the log does not hold."""
    if not len(seqs):
        raise DecisionLogError(f"{where}: the log holds decisions but no activations")
    pos = np.minimum(np.searchsorted(seqs, rows.activation), len(seqs) - 1)
    bad = seqs[pos] != rows.activation
    if bad.any():
        raise DecisionLogError(
            f"{where}: decision {rows.event_id[bad][0]!r} names activation "
            f"{rows.activation[bad][0]}, which the log does not hold"
        )
    return pos


def _decode_request(
    activation: int, n_features: int, n_actions: int, f: bytes, e: bytes, p: bytes | None
) -> tuple[Any, ...]:
    """A ``requests`` row with its BLOBs as (rows, columns) matrices (read-only views)."""
    return (
        activation,
        n_features,
        n_actions,
        np.frombuffer(f, dtype="<f4").reshape(-1, n_features),
        np.frombuffer(e, dtype=np.uint8).reshape(-1, n_actions).view(np.bool_),
        None if p is None else np.frombuffer(p, dtype="<f8").reshape(-1, n_actions),
    )


def _decoded(value: bytes | np.ndarray, dtype: Any) -> np.ndarray:
    """A decision's slice of a request matrix as an array (bytes are decoded, views kept)."""
    return value if isinstance(value, np.ndarray) else np.frombuffer(value, dtype=dtype)


def _column_array(values: Sequence[Any], dtype: Any) -> np.ndarray:
    """One selected column as a numpy array (object arrays keep None and bytes as they are)."""
    if dtype is object:
        out = np.empty(len(values), dtype=object)
        out[:] = list(values)
        return out
    return np.array(values, dtype=dtype)


@dataclass(frozen=True)
class OutcomeWindow:
    """How long an outcome may take: a decision without one is ``pending`` until
    ``outcome_window_s`` after it, then ``default`` with ``default_reward``. ``now_us``
    (default: the wall clock when made) fixes "now"."""

    outcome_window_s: float = 7 * 86400
    default_reward: float = 0.0
    now_us: int | None = None

    def __post_init__(self) -> None:
        if not (np.isfinite(self.outcome_window_s) and self.outcome_window_s >= 0):
            raise ValueError(
                f"outcome_window_s must be finite and >= 0, got {self.outcome_window_s!r}"
            )
        if not np.isfinite(self.default_reward):
            raise ValueError(f"default_reward must be finite, got {self.default_reward!r}")
        object.__setattr__(self, "now_us", now_us() if self.now_us is None else int(self.now_us))

    @property
    def deadline_us(self) -> int:
        """Decisions at or after this time without an outcome are still pending."""
        assert self.now_us is not None
        return self.now_us - round(self.outcome_window_s * 1_000_000)

    def status(self, rows: DecisionRows) -> np.ndarray:
        """Each row's :class:`~cvm_rl.logs.schema.OutcomeStatus` value (an object array)."""
        pending = ~rows.has_outcome & (rows.decided_at_us >= self.deadline_us)
        status = np.full(len(rows), OutcomeStatus.DEFAULT.value, dtype=object)
        status[rows.has_outcome] = OutcomeStatus.REPORTED.value
        status[pending] = OutcomeStatus.PENDING.value
        return status

    def rewards(self, rows: DecisionRows, status: np.ndarray) -> np.ndarray:
        """Each row's reward: the reported one, ``default_reward``, or NaN when pending."""
        reward = np.full(len(rows), np.nan)
        reported = status == OutcomeStatus.REPORTED.value
        reward[reported] = rows.reward[reported].astype(np.float64)
        reward[status == OutcomeStatus.DEFAULT.value] = self.default_reward
        return reward
