"""The decision log: every decision with its propensity, and the outcomes reported for it.

One SQLite database (WAL journal). It is the embedded store of the decision service, the
format the simulator writes for any policy (:mod:`cvm_rl.logs.simulated`), and what
``cvm logs export`` turns into Parquet for off-policy evaluation and retraining.

Tables (times are microseconds since the Unix epoch, UTC):

``models`` — every bundle that ever served: ``model_id`` (``{algo}-{version}``, key),
``model_version``, ``kind``, ``path``, ``feature_names`` and ``action_names`` (JSON lists, in
the order of ``requests.features`` and of action indices), ``first_seen_us``.

``activations`` — which bundle served with which settings, oldest first: ``seq`` (key),
``model_id``, ``path``, ``learning_mode`` (``online`` | ``apprentice``), ``exploration``
(``policy``: the bundle's own distribution | ``epsilon`` | ``softmax``), ``exploration_param``
(epsilon, temperature, or 0 for ``policy``), ``reason``
(``start``, ``load``, ``rollback``, ``simulation``) and ``activated_at_us``. Serving
processes follow the latest row, so a hot reload reaches every worker.

``requests`` — one row per request (a ``Decide`` or ``DecideBatch`` call, or a simulated
week): ``id`` (key), ``activation`` (``activations.seq``: the model and settings that
decided), ``n_rows``, ``n_features``, ``n_actions``, and the request's matrices stored
columnar, row-major: ``features`` (raw, float32 little-endian, schema order), ``eligible``
(one byte 0/1 per catalog action) and ``probabilities`` (the policy's distribution, float64
little-endian per action; NULL when not logged). One BLOB per request instead of three per
decision keeps a batch's commit to a few sequential page writes.

``decisions`` — one row per decision, committed before the response is sent:

=====================  =======  ============================================================
column                 type     meaning
=====================  =======  ============================================================
seq                    INTEGER  insertion order
event_id               TEXT     unique id; the idempotency key and the outcome's key
customer_id            TEXT     the caller's customer id (for joining, never a feature)
decided_at_us          INTEGER  decision time
request                INTEGER  ``requests.id``: activation, features, eligibility, probabilities
request_row            INTEGER  this decision's row in the request's matrices
action_index           INTEGER  the served action (catalog index; 0 = no contact)
propensity             REAL     probability with which the served action was chosen
policy_action_index    INTEGER  the policy's draw (the served action in online mode)
policy_propensity      REAL     probability of the policy's draw under its distribution
baseline_action_index  INTEGER  the caller's baseline action; NULL when none was given
explored               INTEGER  1 when the draw's probability is below the row's maximum
=====================  =======  ============================================================

:class:`StoredDecision` gives a decision with its features, eligibility and probabilities
already sliced out of its request.

In apprentice mode the served action is the caller's baseline with propensity 1, and the
policy's shadow draw is in ``policy_action_index`` / ``policy_propensity``.

``outcomes`` — at most one row per decision: ``event_id`` (key), ``reward`` (required),
``purchase`` (0/1 or NULL when unknown), ``spend`` (>= 0 or NULL), ``opt_out`` (0/1 or NULL),
``reported_at_us`` (when observed) and ``received_at_us`` (when stored).
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cvm_rl.logs.schema import Durability, ExplorationMode, LearningMode, values

if TYPE_CHECKING:
    from cvm_rl.bundle import Bundle

SCHEMA_VERSION = 1
LEARNING_MODES = values(LearningMode)
EXPLORATION_MODES = values(ExplorationMode)
SYNCHRONOUS = values(Durability)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS models (
    model_id TEXT PRIMARY KEY,
    model_version TEXT NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    feature_names TEXT NOT NULL,
    action_names TEXT NOT NULL,
    first_seen_us INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS activations (
    seq INTEGER PRIMARY KEY,
    model_id TEXT NOT NULL REFERENCES models (model_id),
    path TEXT NOT NULL,
    learning_mode TEXT NOT NULL CHECK (learning_mode IN ('online', 'apprentice')),
    exploration TEXT NOT NULL CHECK (exploration IN ('policy', 'epsilon', 'softmax')),
    exploration_param REAL NOT NULL,
    reason TEXT NOT NULL,
    activated_at_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    activation INTEGER NOT NULL REFERENCES activations (seq),
    n_rows INTEGER NOT NULL CHECK (n_rows > 0),
    n_features INTEGER NOT NULL CHECK (n_features > 0),
    n_actions INTEGER NOT NULL CHECK (n_actions > 0),
    features BLOB NOT NULL CHECK (length(features) = n_rows * n_features * 4),
    eligible BLOB NOT NULL CHECK (length(eligible) = n_rows * n_actions),
    probabilities BLOB CHECK (length(probabilities) = n_rows * n_actions * 8)
);
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    customer_id TEXT NOT NULL,
    decided_at_us INTEGER NOT NULL,
    request INTEGER NOT NULL REFERENCES requests (id),
    request_row INTEGER NOT NULL CHECK (request_row >= 0),
    action_index INTEGER NOT NULL CHECK (action_index >= 0),
    propensity REAL NOT NULL CHECK (propensity > 0 AND propensity <= 1),
    policy_action_index INTEGER NOT NULL CHECK (policy_action_index >= 0),
    policy_propensity REAL NOT NULL CHECK (policy_propensity > 0 AND policy_propensity <= 1),
    baseline_action_index INTEGER CHECK (baseline_action_index >= 0),
    explored INTEGER NOT NULL CHECK (explored IN (0, 1))
);
CREATE TABLE IF NOT EXISTS outcomes (
    event_id TEXT PRIMARY KEY REFERENCES decisions (event_id),
    reward REAL NOT NULL,
    purchase INTEGER CHECK (purchase IN (0, 1)),
    spend REAL CHECK (spend >= 0),
    opt_out INTEGER CHECK (opt_out IN (0, 1)),
    reported_at_us INTEGER NOT NULL,
    received_at_us INTEGER NOT NULL
) WITHOUT ROWID;
"""

DECISION_COLUMNS = (
    "event_id",
    "customer_id",
    "decided_at_us",
    "request",
    "request_row",
    "action_index",
    "propensity",
    "policy_action_index",
    "policy_propensity",
    "baseline_action_index",
    "explored",
)
"""Columns of ``decisions`` that a writer fills (``seq`` is assigned), in insert order."""
REQUEST_COLUMNS = (
    "activation",
    "n_rows",
    "n_features",
    "n_actions",
    "features",
    "eligible",
    "probabilities",
)
OUTCOME_COLUMNS = (
    "event_id",
    "reward",
    "purchase",
    "spend",
    "opt_out",
    "reported_at_us",
    "received_at_us",
)
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
_SELECT_DECISION = (
    f"SELECT {', '.join('d.' + c for c in DECISION_COLUMNS)}, r.activation, r.n_features, "
    "r.n_actions, r.features, r.eligible, r.probabilities "
    "FROM decisions AS d JOIN requests AS r ON r.id = d.request"
)
_SELECT_OUTCOME = f"SELECT {', '.join(OUTCOME_COLUMNS[:-1])} FROM outcomes"
# SQLite's default limit on host parameters per statement is 32766; stay far below it.
_IN_CHUNK = 900


class DecisionLogError(ValueError):
    """A log that cannot be opened or used (not SQLite, wrong schema version...)."""


class EventConflict(ValueError):
    """Event ids already used with different content; nothing of the call was written."""

    def __init__(self, message: str, event_ids: Sequence[str]) -> None:
        super().__init__(message)
        self.event_ids = list(event_ids)


class LogBusy(RuntimeError):
    """Another connection holds the log's write lock (see ``wait=False``); nothing written."""


class UnknownEvents(KeyError):
    """Outcomes for event ids that were never decided; nothing of the call was written."""

    def __init__(self, event_ids: Sequence[str]) -> None:
        super().__init__(event_ids)
        self.event_ids = list(event_ids)

    def __str__(self) -> str:
        return f"unknown event_id {_some(self.event_ids)}: no decision was logged under it"


def _some(event_ids: Sequence[str]) -> str:
    """``'a'`` or ``'a' (and 3 more)``: a bounded mention of many ids in a message."""
    more = f" (and {len(event_ids) - 1} more)" if len(event_ids) > 1 else ""
    return f"{event_ids[0]!r}{more}"


def now_us() -> int:
    """Wall-clock time in microseconds since the Unix epoch."""
    return time.time_ns() // 1000


@dataclass(frozen=True)
class ModelRecord:
    """A bundle as the log knows it."""

    model_id: str
    model_version: str
    kind: str
    path: str
    feature_names: list[str]
    action_names: list[str]

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> ModelRecord:
        return cls(
            model_id=bundle.model_id,
            model_version=bundle.version,
            kind=bundle.kind,
            path=str(bundle.path.resolve()),
            feature_names=bundle.feature_names,
            action_names=bundle.action_names,
        )


@dataclass(frozen=True)
class Activation:
    """One row of ``activations``: a bundle serving with given settings."""

    seq: int
    model_id: str
    path: str
    learning_mode: str
    exploration: str
    exploration_param: float
    reason: str


@dataclass
class DecisionBatch:
    """Decisions of one activation as columns: length-N arrays and (N, F) / (N, A) matrices.

    ``baseline_action_index`` is -1 where no baseline was given (NULL in the table);
    ``probabilities`` may be None to leave the column NULL.
    """

    event_ids: list[str]
    customer_ids: list[str]
    decided_at_us: np.ndarray
    activation: int
    action_index: np.ndarray
    propensity: np.ndarray
    policy_action_index: np.ndarray
    policy_propensity: np.ndarray
    baseline_action_index: np.ndarray
    explored: np.ndarray
    features: np.ndarray
    eligible: np.ndarray
    probabilities: np.ndarray | None

    def __len__(self) -> int:
        return len(self.event_ids)

    def check(self) -> None:
        """Shapes and value domains; a ValueError names the field."""
        n = len(self.event_ids)
        if len(set(self.event_ids)) != n:
            raise ValueError("event_ids must be distinct within a batch")
        if len(self.customer_ids) != n:
            raise ValueError(f"customer_ids must have {n} entries, got {len(self.customer_ids)}")
        for name in (
            "decided_at_us",
            "action_index",
            "propensity",
            "policy_action_index",
            "policy_propensity",
            "baseline_action_index",
            "explored",
        ):
            value = np.asarray(getattr(self, name))
            if value.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {value.shape}")
            setattr(self, name, value)
        if self.features.ndim != 2 or self.features.shape[0] != n:
            raise ValueError(f"features must have shape ({n}, F), got {self.features.shape}")
        if self.eligible.ndim != 2 or self.eligible.shape[0] != n:
            raise ValueError(f"eligible must have shape ({n}, A), got {self.eligible.shape}")
        n_actions = self.eligible.shape[1]
        if self.probabilities is not None and self.probabilities.shape != (n, n_actions):
            raise ValueError(
                f"probabilities must have shape ({n}, {n_actions}), got {self.probabilities.shape}"
            )
        for name in ("propensity", "policy_propensity"):
            p = getattr(self, name)
            if not ((p > 0) & (p <= 1)).all():
                raise ValueError(f"{name} must be in (0, 1]")
        for name in ("action_index", "policy_action_index"):
            a = getattr(self, name)
            if ((a < 0) | (a >= n_actions)).any():
                raise ValueError(f"{name} must be in [0, {n_actions})")

    def request_row(self) -> tuple[Any, ...]:
        """The ``requests`` row of this batch, in :data:`REQUEST_COLUMNS` order."""
        n, n_actions = self.eligible.shape
        return (
            self.activation,
            n,
            self.features.shape[1],
            n_actions,
            np.ascontiguousarray(self.features, dtype="<f4").tobytes(),
            np.ascontiguousarray(self.eligible, dtype=np.uint8).tobytes(),
            None
            if self.probabilities is None
            else np.ascontiguousarray(self.probabilities, dtype="<f8").tobytes(),
        )

    def rows(self, request: int, indices: Sequence[int] | None = None) -> np.ndarray:
        """``decisions`` rows pointing at ``request`` as an (N, columns) object array in
        :data:`DECISION_COLUMNS` order, for all rows or the given ``indices`` (filled column
        by column: building per-row tuples in Python costs more than the insert)."""
        n = len(self.event_ids)
        rows = np.empty((n, len(DECISION_COLUMNS)), dtype=object)
        rows[:, 0] = self.event_ids
        rows[:, 1] = self.customer_ids
        rows[:, 2] = self.decided_at_us.tolist()
        rows[:, 3] = request
        rows[:, 4] = range(n)
        rows[:, 5] = self.action_index.tolist()
        rows[:, 6] = self.propensity.tolist()
        rows[:, 7] = self.policy_action_index.tolist()
        rows[:, 8] = self.policy_propensity.tolist()
        rows[:, 9] = [None if b < 0 else b for b in self.baseline_action_index.tolist()]
        rows[:, 10] = self.explored.astype(int).tolist()
        return rows if indices is None else rows[list(indices)]


@dataclass(frozen=True)
class StoredDecision:
    """One decision as stored: what a replayed event id gets back."""

    event_id: str
    customer_id: str
    decided_at_us: int
    activation: int
    action_index: int
    propensity: float
    policy_action_index: int
    policy_propensity: float
    baseline_action_index: int | None
    explored: bool
    features: np.ndarray
    eligible: np.ndarray
    probabilities: np.ndarray | None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> StoredDecision:
        """From a ``_SELECT_DECISION`` row: the decision's columns, then its request's
        activation, shapes and matrices (sliced to the decision's row)."""
        values = dict(zip(DECISION_COLUMNS, row[: len(DECISION_COLUMNS)], strict=True))
        activation, n_features, n_actions, features, eligible, probs = row[len(DECISION_COLUMNS) :]
        r = values.pop("request_row")
        del values["request"]
        values["activation"] = activation
        values["explored"] = bool(values["explored"])
        values["features"] = np.frombuffer(
            features, dtype="<f4", count=n_features, offset=4 * r * n_features
        )
        values["eligible"] = np.frombuffer(
            eligible, dtype=np.uint8, count=n_actions, offset=r * n_actions
        ).astype(bool)
        values["probabilities"] = (
            None
            if probs is None
            else np.frombuffer(probs, dtype="<f8", count=n_actions, offset=8 * r * n_actions)
        )
        return cls(**values)

    def same_inputs(
        self,
        customer_id: str,
        features: np.ndarray,
        eligible: np.ndarray,
        baseline_action_index: int,
    ) -> bool:
        """Whether a replay of this event carries the inputs it was first decided on."""
        baseline = -1 if self.baseline_action_index is None else self.baseline_action_index
        return (
            customer_id == self.customer_id
            and baseline == baseline_action_index
            and np.array_equal(np.asarray(features, dtype="<f4"), self.features)
            and np.array_equal(np.asarray(eligible, dtype=bool), self.eligible)
        )


@dataclass(frozen=True)
class OutcomeRecord:
    """One outcome report; ``None`` fields are unknown (``reported_at_us``: when received)."""

    event_id: str
    reward: float
    purchase: bool | None = None
    spend: float | None = None
    opt_out: bool | None = None
    reported_at_us: int | None = None

    def check(self) -> None:
        if not self.event_id:
            raise ValueError("outcome.event_id is required")
        if not np.isfinite(self.reward):
            raise ValueError(f"outcome.reward must be finite, got {self.reward!r}")
        if self.spend is not None and not (np.isfinite(self.spend) and self.spend >= 0):
            raise ValueError(f"outcome.spend must be finite and >= 0, got {self.spend!r}")

    def same_as(self, stored: OutcomeRecord) -> bool:
        """Whether this report repeats ``stored``; an unset ``reported_at_us`` matches any."""
        return (
            stored.reward == self.reward
            and stored.purchase == self.purchase
            and stored.spend == self.spend
            and stored.opt_out == self.opt_out
            and (self.reported_at_us is None or self.reported_at_us == stored.reported_at_us)
        )

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> OutcomeRecord:
        event_id, reward, purchase, spend, opt_out, reported_at_us = row
        return cls(
            event_id,
            reward,
            None if purchase is None else bool(purchase),
            spend,
            None if opt_out is None else bool(opt_out),
            reported_at_us,
        )


def _optional_int(value: bool | None) -> int | None:
    return None if value is None else int(value)


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
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            # The REFERENCES clauses document the joins; they are not enforced per row (a
            # lookup per decision, ~10% of a batch's write): this class writes a request
            # before its decisions and checks outcome ids against decisions itself.
            self._db.execute("PRAGMA foreign_keys = OFF")
            self._db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
            with self._transaction():
                self._check_version()
        except sqlite3.DatabaseError as exc:
            raise DecisionLogError(f"{self.path}: not a usable decision log ({exc})") from None
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

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _check_version(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif row[0] != str(SCHEMA_VERSION):
            raise DecisionLogError(
                f"{self.path}: schema_version {row[0]}, but this cvm-rl reads {SCHEMA_VERSION}"
            )

    def _select_in(self, sql: str, keys: Sequence[str]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(keys), _IN_CHUNK):
            chunk = keys[start : start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows.extend(self._db.execute(sql.format(marks=marks), chunk).fetchall())
        return rows

    # ------------------------------------------------------------------ models
    def models(self) -> dict[str, ModelRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT model_id, model_version, kind, path, feature_names, action_names "
                "FROM models"
            ).fetchall()
        return {
            r[0]: ModelRecord(r[0], r[1], r[2], r[3], json.loads(r[4]), json.loads(r[5]))
            for r in rows
        }

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
            rows = self._db.execute(
                "SELECT seq, model_id, path, learning_mode, exploration, exploration_param, "
                "reason FROM activations ORDER BY seq"
            ).fetchall()
        return [Activation(*r) for r in rows]

    def latest_activation(self) -> int:
        """Sequence number of the newest activation (0 when there is none); cheap to poll."""
        with self._lock:
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
        self, batches: Sequence[DecisionBatch], *, wait: bool = True
    ) -> list[dict[str, StoredDecision] | EventConflict]:
        """Group commit: store several batches (e.g. of concurrent requests) in one
        transaction when none of them replays an event id; otherwise each on its own, with
        :meth:`insert_decisions`' result per batch (an :class:`EventConflict` is returned in
        its batch's place, not raised, and the other batches are stored).

        ``wait=False``: when another connection (another serving process) holds the write
        lock, raise :class:`LogBusy` at once, having written nothing, instead of sleeping
        in SQLite's busy handler (whose first sleep is a whole millisecond)."""
        for batch in batches:
            batch.check()
        ids = [e for batch in batches for e in batch.event_ids]
        with self._lock:
            if not wait:
                self._db.execute("PRAGMA busy_timeout = 0")
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    raise LogBusy(str(exc)) from None
                finally:
                    self._db.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            if len(set(ids)) == len(ids):
                with _Transaction(self._db, begun=not wait) as tx:
                    inserted = sum(self._insert(batch, None) for batch in batches)
                    if inserted == len(ids):
                        return [{} for _ in batches]
                    tx.rollback()
            elif not wait:
                self._db.execute("ROLLBACK")
            # Replays (or ids shared between batches) are rare: one transaction per batch.
            return [self._insert_with_replays(batch) for batch in batches]

    def _insert_with_replays(
        self, batch: DecisionBatch
    ) -> dict[str, StoredDecision] | EventConflict:
        with self._transaction() as tx:
            stored = self._get(batch.event_ids)
            conflicts = [
                event_id
                for i, event_id in enumerate(batch.event_ids)
                if event_id in stored
                and not stored[event_id].same_inputs(
                    batch.customer_ids[i],
                    batch.features[i],
                    batch.eligible[i],
                    int(batch.baseline_action_index[i]),
                )
            ]
            if conflicts:
                tx.rollback()
                return EventConflict(
                    f"event_id {_some(conflicts)} was already decided with different "
                    "inputs (customer, features, eligibility or baseline); use a new "
                    "event_id",
                    conflicts,
                )
            fresh = [i for i, e in enumerate(batch.event_ids) if e not in stored]
            if fresh:
                self._insert(batch, fresh)
        return stored

    def _insert(self, batch: DecisionBatch, indices: Sequence[int] | None) -> int:
        """Insert the batch's request and (the ``indices`` of) its decisions with OR IGNORE;
        returns how many decisions were inserted."""
        request = self._db.execute(_INSERT_REQUEST, batch.request_row()).lastrowid
        assert request is not None
        rows = batch.rows(request, indices)
        inserted = 0
        for start in range(0, len(rows), _INSERT_CHUNK):
            chunk = rows[start : start + _INSERT_CHUNK]
            sql = _insert_decisions_sql(len(chunk))
            inserted += self._db.execute(sql, chunk.ravel().tolist()).rowcount
        return inserted

    def _get(self, event_ids: Sequence[str]) -> dict[str, StoredDecision]:
        rows = self._select_in(_SELECT_DECISION + " WHERE d.event_id IN ({marks})", event_ids)
        return {r[0]: StoredDecision.from_row(r) for r in rows}

    def get_decisions(self, event_ids: Sequence[str]) -> dict[str, StoredDecision]:
        """Stored decisions by event id (ids never decided are absent)."""
        with self._lock:
            return self._get(list(event_ids))

    def count(self, table: Literal["decisions", "outcomes"] = "decisions") -> int:
        if table not in ("decisions", "outcomes"):
            raise ValueError(f"table must be 'decisions' or 'outcomes', got {table!r}")
        with self._lock:
            return int(self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    # ------------------------------------------------------------------ outcomes
    def record_outcomes(self, outcomes: Sequence[OutcomeRecord]) -> tuple[int, int]:
        """Store outcomes in one transaction; returns ``(recorded, duplicates)``.

        Every event id needs a decision (else :class:`UnknownEvents`, nothing stored). An
        identical resend is a duplicate; a different outcome for an event that already has one
        raises :class:`EventConflict` (the first one is kept, nothing of the call is stored).
        """
        ids = [o.event_id for o in outcomes]
        if len(set(ids)) != len(ids):
            raise ValueError("outcomes: event_ids must be distinct within one call")
        for o in outcomes:
            o.check()
        received = now_us()
        with self._lock, self._transaction():
            known = {
                r[0]
                for r in self._select_in(
                    "SELECT event_id FROM decisions WHERE event_id IN ({marks})", ids
                )
            }
            unknown = [e for e in ids if e not in known]
            if unknown:
                raise UnknownEvents(unknown)
            existing = {
                r[0]: OutcomeRecord.from_row(r)
                for r in self._select_in(_SELECT_OUTCOME + " WHERE event_id IN ({marks})", ids)
            }
            conflicts = [
                o.event_id
                for o in outcomes
                if o.event_id in existing and not o.same_as(existing[o.event_id])
            ]
            if conflicts:
                raise EventConflict(
                    f"event_id {_some(conflicts)} already has a different outcome; the first "
                    "report is kept",
                    conflicts,
                )
            fresh = [
                (
                    o.event_id,
                    float(o.reward),
                    _optional_int(o.purchase),
                    None if o.spend is None else float(o.spend),
                    _optional_int(o.opt_out),
                    received if o.reported_at_us is None else int(o.reported_at_us),
                    received,
                )
                for o in outcomes
                if o.event_id not in existing
            ]
            self._db.executemany(
                f"INSERT INTO outcomes ({', '.join(OUTCOME_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                fresh,
            )
        return len(fresh), len(outcomes) - len(fresh)

    def get_outcomes(self, event_ids: Sequence[str]) -> dict[str, OutcomeRecord]:
        """Stored outcomes by event id (ids without one are absent)."""
        with self._lock:
            rows = self._select_in(
                _SELECT_OUTCOME + " WHERE event_id IN ({marks})", list(event_ids)
            )
        return {r[0]: OutcomeRecord.from_row(r) for r in rows}


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
