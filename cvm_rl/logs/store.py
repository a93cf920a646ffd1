"""The decision log's store: :class:`DecisionLog` writes every decision with its propensity and
the outcomes reported for it to one SQLite database (WAL), and reads them back.

The tables and their columns are documented in :mod:`cvm_rl.logs.schema`, the records written
and returned in :mod:`cvm_rl.logs.records`; reads go through the one reader of
:mod:`cvm_rl.logs.reader` on the store's connection. Opening a log of an older schema version
for writing upgrades it (:data:`~cvm_rl.logs.schema.MIGRATIONS`, in one transaction).

The names other packages use (the records, the errors, the mode tuples, :func:`now_us`) stay
importable from here.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from cvm_rl.logs.reader import LogReader, read_schema_version, version_error
from cvm_rl.logs.records import (
    Activation,
    DecisionBatch,
    DecisionLogError,
    EventConflict,
    LogBusy,
    ModelRecord,
    OutcomeRecord,
    PreparedBatch,
    StoredDecision,
    UnknownEvents,
    mention,
)
from cvm_rl.logs.schema import (
    DECISION_COLUMNS,
    EXPLORATION_MODES,
    LEARNING_MODES,
    MIGRATIONS,
    OUTCOME_COLUMNS,
    REQUEST_COLUMNS,
    SCHEMA_VERSION,
    SYNCHRONOUS,
    TABLES,
    now_us,
)

__all__ = [
    "DECISION_COLUMNS",
    "EXPLORATION_MODES",
    "LEARNING_MODES",
    "OUTCOME_COLUMNS",
    "REQUEST_COLUMNS",
    "SCHEMA_VERSION",
    "SYNCHRONOUS",
    "Activation",
    "DecisionBatch",
    "DecisionLog",
    "DecisionLogError",
    "EventConflict",
    "LogBusy",
    "ModelRecord",
    "OutcomeRecord",
    "StoredDecision",
    "UnknownEvents",
    "insert_request",
    "now_us",
]

_INSERT_CHUNK = 128
"""Rows per multi-row INSERT: one statement per chunk of rows rather than one per row."""


@functools.lru_cache(maxsize=_INSERT_CHUNK)
def _insert_decisions_sql(n_rows: int) -> str:
    row = f"({', '.join('?' * len(DECISION_COLUMNS))})"
    return (
        f"INSERT OR IGNORE INTO decisions ({', '.join(DECISION_COLUMNS)}) "
        f"VALUES {', '.join([row] * n_rows)}"
    )


_INSERT_REQUEST = (
    f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(REQUEST_COLUMNS))})"
)
_INSERT_OUTCOME = (
    f"INSERT INTO outcomes ({', '.join(OUTCOME_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(OUTCOME_COLUMNS))})"
)


def insert_request(db: sqlite3.Connection, request_row: tuple[Any, ...], flat: list[Any]) -> int:
    """Inside the caller's write transaction: insert a ``requests`` row and its decisions
    (:meth:`DecisionBatch.flat_rows`, whose ``request`` column is set here to the new row's
    id) with OR IGNORE, :data:`_INSERT_CHUNK` rows per statement; returns how many decisions
    were inserted (OR IGNORE skips stored event ids)."""
    request = db.execute(_INSERT_REQUEST, request_row).lastrowid
    assert request is not None
    width = len(DECISION_COLUMNS)
    n = len(flat) // width
    flat[3::width] = [request] * n
    inserted = 0
    for start in range(0, n, _INSERT_CHUNK):
        stop = min(start + _INSERT_CHUNK, n)
        params = flat if stop - start == n else flat[start * width : stop * width]
        inserted += db.execute(_insert_decisions_sql(stop - start), params).rowcount
    return inserted


class DecisionLog:
    """A decision log in one SQLite file (WAL), safe to share between threads and processes.

    ``synchronous="normal"`` (default) survives a crash or kill -9 of the process: a committed
    row is in the WAL file when the call returns. ``"full"`` also fsyncs every commit, which
    survives power loss, at a higher cost per commit.

    ``checkpoint_interval_s``: None leaves WAL checkpoints to SQLite, which runs them inside
    whichever commit crosses 1,000 WAL pages (copying the pages into the database file and
    fsyncing it: a commit of a few hundred microseconds then takes milliseconds). A number
    moves them to a background thread that checkpoints that often, so writers never wait for
    a checkpoint; a server uses this. The thread empties the WAL when it has grown past
    ``wal_limit_bytes`` (writers wait for that step only).

    A new file gets the tables of :data:`~cvm_rl.logs.schema.SCHEMA_VERSION`; a log of an
    older version is upgraded in place; a newer or unknown version raises
    :class:`DecisionLogError`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Literal["normal", "full"] = "normal",
        busy_timeout_ms: int = 10_000,
        checkpoint_interval_s: float | None = None,
        wal_limit_bytes: int = 64 * 2**20,
    ) -> None:
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS}, got {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._busy_timeout_ms = int(busy_timeout_ms)
        # The connection's busy timeout now: 0 after a write that must not wait (set back
        # lazily, before the next statement that may wait: two fewer statements per write).
        self._busy_now_ms = self._busy_timeout_ms
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.DatabaseError as exc:
            raise DecisionLogError(f"{self.path}: not a usable decision log ({exc})") from None
        try:
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            # The REFERENCES clauses document the joins; they are not enforced per row (a
            # lookup per decision, ~10% of a batch's write): this class writes a request
            # before its decisions and checks outcome ids against decisions itself.
            self._db.execute("PRAGMA foreign_keys = OFF")
            with self._transaction():
                self._prepare_schema()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise DecisionLogError(f"{self.path}: not a usable decision log ({exc})") from None
        except DecisionLogError:
            self._db.close()
            raise
        self._reader = LogReader(self._db, version=SCHEMA_VERSION, where=str(self.path))
        self._checkpointer: _Checkpointer | None = None
        if checkpoint_interval_s is not None:
            if not checkpoint_interval_s > 0:
                raise ValueError(
                    f"checkpoint_interval_s must be > 0 or None, got {checkpoint_interval_s!r}"
                )
            self._db.execute("PRAGMA wal_autocheckpoint = 0")
            self._checkpointer = _Checkpointer(
                self.path, checkpoint_interval_s, busy_timeout_ms, wal_limit_bytes
            )

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
        with self._lock:
            self._db.close()  # the last connection to close checkpoints and removes the WAL

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _busy_timeout(self, ms: int) -> None:
        """Set the connection's busy timeout unless it is set already (``self._lock`` held)."""
        if self._busy_now_ms != ms:
            self._db.execute(f"PRAGMA busy_timeout = {int(ms)}")
            self._busy_now_ms = ms

    def _waiting(self) -> None:
        """Before statements that wait out another writer: the configured busy timeout."""
        self._busy_timeout(self._busy_timeout_ms)

    def _transaction(self) -> _Transaction:
        self._waiting()
        return _Transaction(self._db)

    def _write_transaction(self, wait: bool) -> _Transaction:
        """A write transaction; ``wait=False`` begins it at once or raises :class:`LogBusy`
        instead of sleeping in SQLite's busy handler. Call with ``self._lock`` held.

        Once BEGIN IMMEDIATE holds the write lock, the statements of the transaction take
        no other lock that SQLite waits for (WAL), so the timeout stays 0 through them."""
        if wait:
            return self._transaction()
        self._busy_timeout(0)
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise LogBusy(str(exc)) from None
        return _Transaction(self._db, begun=True)

    def _prepare_schema(self) -> None:
        """Inside a write transaction: create the tables of a new log (the CREATE statements
        do nothing on an existing one), upgrade an older log, refuse any other version."""
        for statement in TABLES:
            self._db.execute(statement)
        found = read_schema_version(self._db)
        if found is None:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            return
        if found == str(SCHEMA_VERSION):
            return
        if found not in {str(v) for v in MIGRATIONS}:
            raise version_error(self.path, found)
        for version in range(int(found), SCHEMA_VERSION):
            for statement in MIGRATIONS[version]:
                self._db.execute(statement)
        self._db.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
        )

    # ------------------------------------------------------------------ models
    def models(self) -> dict[str, ModelRecord]:
        with self._lock:
            self._waiting()
            return self._reader.models()

    def activate(
        self,
        model: ModelRecord,
        *,
        learning_mode: str,
        exploration: str,
        exploration_param: float,
        reason: str,
    ) -> Activation:
        """Record ``model`` (first sighting) and make it the active bundle with these settings."""
        if learning_mode not in LEARNING_MODES:
            raise ValueError(
                f"learning_mode must be one of {LEARNING_MODES}, got {learning_mode!r}"
            )
        if exploration not in EXPLORATION_MODES:
            raise ValueError(f"exploration must be one of {EXPLORATION_MODES}, got {exploration!r}")
        with self._lock, self._transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO models VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    model.model_id,
                    model.model_version,
                    model.kind,
                    model.path,
                    json.dumps(model.feature_names),
                    json.dumps(model.action_names),
                    now_us(),
                ),
            )
            cur = self._db.execute(
                "INSERT INTO activations (model_id, path, learning_mode, exploration, "
                "exploration_param, reason, activated_at_us) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    model.model_id,
                    model.path,
                    learning_mode,
                    exploration,
                    float(exploration_param),
                    reason,
                    now_us(),
                ),
            )
            seq = int(cur.lastrowid or 0)
        return Activation(
            seq, model.model_id, model.path, learning_mode, exploration, exploration_param, reason
        )

    def activations(self) -> list[Activation]:
        """Every activation, oldest first."""
        with self._lock:
            self._waiting()
            return self._reader.activations()

    def latest_activation(self) -> int:
        """Sequence number of the newest activation (0 when there is none); cheap to poll."""
        with self._lock:
            self._waiting()
            row = self._db.execute("SELECT max(seq) FROM activations").fetchone()
        return int(row[0] or 0)

    # ------------------------------------------------------------------ decisions
    def insert_decisions(self, batch: DecisionBatch) -> dict[str, StoredDecision]:
        """Store a batch in one transaction; an event id already stored keeps its first row.

        Returns the stored decisions of *replayed* event ids (empty when all are new), so the
        caller answers a replay with what it answered the first time. A replayed id whose
        inputs differ raises :class:`EventConflict` and nothing of the batch is stored.
        """
        result = self.insert_decision_batches([batch])[0]
        if isinstance(result, EventConflict):
            raise result
        return result

    def insert_decision_batches(
        self, batches: Sequence[DecisionBatch | PreparedBatch], *, wait: bool = True
    ) -> list[dict[str, StoredDecision] | EventConflict]:
        """Group commit: store several batches (e.g. of concurrent requests) in one
        transaction when none of them replays an event id; otherwise each on its own, with
        :meth:`insert_decisions`' result per batch (an :class:`EventConflict` is returned in
        its batch's place, not raised, and the other batches are stored).

        ``wait=False``: when another connection (another serving process) holds the write
        lock, raise :class:`LogBusy` at once, having written nothing, instead of sleeping
        in SQLite's busy handler (whose first sleep is a whole millisecond). A caller that
        tries again passes :class:`PreparedBatch` objects, so that a try costs the lock's
        check, not a rebuild of every row."""
        # The rows are built before the write lock is taken: another serving process waits
        # for SQLite's own work only.
        prepared = [b if isinstance(b, PreparedBatch) else PreparedBatch.of(b) for b in batches]
        ids = [e for p in prepared for e in p.batch.event_ids]
        with self._lock:
            tx = self._write_transaction(wait)
            if len(set(ids)) == len(ids):
                with tx:
                    inserted = sum(
                        insert_request(self._db, p.request_row, p.flat) for p in prepared
                    )
                    if inserted == len(ids):
                        return [{} for _ in prepared]
                    tx.rollback()
            elif not wait:
                tx.rollback()  # begun already: give the lock back
            # Replays (or ids shared between batches) are rare: one transaction per batch.
            return [self._insert_with_replays(p.batch) for p in prepared]

    def _insert_with_replays(
        self, batch: DecisionBatch
    ) -> dict[str, StoredDecision] | EventConflict:
        with self._transaction() as tx:
            stored = self._reader.decisions(batch.event_ids)
            conflicts = batch.replay_conflicts(stored)
            if conflicts:
                tx.rollback()
                return EventConflict(
                    f"event_id {mention(conflicts)} was already decided with different "
                    "inputs (customer, features, eligibility or baseline); use a new "
                    "event_id",
                    conflicts,
                )
            fresh = [i for i, e in enumerate(batch.event_ids) if e not in stored]
            if fresh:
                insert_request(self._db, batch.request_row(), batch.flat_rows(0, fresh))
        return stored

    def get_decisions(self, event_ids: Sequence[str]) -> dict[str, StoredDecision]:
        """Stored decisions by event id (ids never decided are absent)."""
        with self._lock:
            self._waiting()
            return self._reader.decisions(list(event_ids))

    def count(self, table: Literal["decisions", "outcomes"] = "decisions") -> int:
        if table not in ("decisions", "outcomes"):
            raise ValueError(f"table must be 'decisions' or 'outcomes', got {table!r}")
        with self._lock:
            self._waiting()
            return int(self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    # ------------------------------------------------------------------ outcomes
    def record_outcomes(
        self, outcomes: Sequence[OutcomeRecord], *, wait: bool = True
    ) -> tuple[int, int]:
        """Store outcomes in one transaction; returns ``(recorded, duplicates)``.

        Every event id needs a decision (else :class:`UnknownEvents`, nothing stored), and an
        ``executed_action_index`` must be in its decision's catalog. An identical resend is a
        duplicate; a different outcome for an event that already has one raises
        :class:`EventConflict` (the first one is kept, nothing of the call is stored).

        ``wait=False``: raise :class:`LogBusy` at once, having written nothing, when another
        connection holds the write lock (as :meth:`insert_decision_batches` does).
        """
        ids = [o.event_id for o in outcomes]
        if len(set(ids)) != len(ids):
            raise ValueError("outcomes: event_ids must be distinct within one call")
        for o in outcomes:
            o.check()
        with self._lock, self._write_transaction(wait):
            # Stamped once the write lock is held: write transactions are serialized, so
            # received_at_us grows in commit order and an export's latest one tells which
            # outcomes it holds (cvm_rl.logs.retention).
            received = now_us()
            n_actions = self._reader.n_actions(ids)
            unknown = [e for e in ids if e not in n_actions]
            if unknown:
                raise UnknownEvents(unknown)
            for o in outcomes:
                executed, catalog = o.executed_action_index, n_actions[o.event_id]
                if executed is not None and executed >= catalog:
                    raise ValueError(
                        f"outcome.executed_action_index must be in [0, {catalog}) (the catalog "
                        f"of event_id {o.event_id!r}), got {executed}"
                    )
            existing = self._reader.outcomes(ids)
            conflicts = [
                o.event_id
                for o in outcomes
                if o.event_id in existing and not o.same_as(existing[o.event_id])
            ]
            if conflicts:
                raise EventConflict(
                    f"event_id {mention(conflicts)} already has a different outcome; the first "
                    "report is kept",
                    conflicts,
                )
            fresh = [o.row(received) for o in outcomes if o.event_id not in existing]
            self._db.executemany(_INSERT_OUTCOME, fresh)
        return len(fresh), len(outcomes) - len(fresh)

    def get_outcomes(self, event_ids: Sequence[str]) -> dict[str, OutcomeRecord]:
        """Stored outcomes by event id (ids without one are absent)."""
        with self._lock:
            self._waiting()
            return self._reader.outcomes(list(event_ids))

    # ------------------------------------------------------------------ exports
    def record_export(self, values: Sequence[int | str]) -> int:
        """Record an export: ``values`` of ``exports``' columns after ``id`` (see
        :mod:`cvm_rl.logs.retention`); returns its id."""
        with self._lock, self._transaction():
            cur = self._db.execute(
                "INSERT INTO exports (exported_at_us, max_seq, final_before_us, "
                "outcomes_through_us, rows, out_dir) VALUES (?, ?, ?, ?, ?, ?)",
                tuple(values),
            )
        return int(cur.lastrowid or 0)


class _Checkpointer:
    """A thread with its own connection checkpointing the WAL every ``interval_s``, so no
    commit pays for a checkpoint and the WAL stays near ``wal_limit_bytes``.

    The I/O runs without the GIL. Writers wait only for the short TRUNCATE step, taken when
    the WAL has outgrown its limit (a serving process does not even wait: it retries from its
    event loop, see ``wait=False``).
    """

    def __init__(
        self, path: Path, interval_s: float, busy_timeout_ms: int, wal_limit_bytes: int
    ) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        self._wal = Path(f"{path}-wal")
        self._wal_limit_bytes = wal_limit_bytes
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cvm-log-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            # Busy (another process's checkpoint) or I/O trouble: the next round retries, and
            # the commits themselves are already durable in the WAL.
            with contextlib.suppress(sqlite3.Error):
                # PASSIVE copies what is in the WAL without stopping writers. Under steady
                # writes it never catches up, and the WAL would grow without end; TRUNCATE
                # then copies the few frames written meanwhile (writers wait that long) and
                # empties the file.
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                if self._wal.exists() and self._wal.stat().st_size > self._wal_limit_bytes:
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._db.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` (unless ``begun``) ... ``COMMIT``; ROLLBACK on an exception or on
    request."""

    def __init__(self, db: sqlite3.Connection, *, begun: bool = False) -> None:
        self._db = db
        self._done = False
        self._begun = begun

    def __enter__(self) -> _Transaction:
        if not self._begun:
            self._db.execute("BEGIN IMMEDIATE")
        return self

    def rollback(self) -> None:
        self._db.execute("ROLLBACK")
        self._done = True

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if not self._done:
            self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
