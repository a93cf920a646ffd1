"""The decision log's schema: its tables (SQLite DDL), version and migrations, and the names
the log, the service and the exports share (the modes a decision was made under, the log's
durability settings and an exported row's outcome status, each spelled once as a ``StrEnum``).

A ``StrEnum`` member equals its string (``LearningMode.ONLINE == "online"``), so the values
stored in SQLite and Parquet, the CLI's choices and the wire names stay plain strings.

One SQLite database (WAL journal). It is the embedded store of the decision service
(:mod:`cvm_rl.logs.store`), the format the simulator writes for any policy
(:mod:`cvm_rl.logs.simulated`), and what ``cvm logs export`` turns into Parquet for off-policy
evaluation and retraining (:mod:`cvm_rl.logs.export`).

Tables (times are microseconds since the Unix epoch, UTC; :func:`now_us`):

``meta`` — ``key`` -> ``value``; ``schema_version`` is :data:`SCHEMA_VERSION`.

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

In apprentice mode the served action is the caller's baseline with propensity 1, and the
policy's shadow draw is in ``policy_action_index`` / ``policy_propensity``.

``outcomes`` — at most one row per decision:

=====================  =======  ============================================================
column                 type     meaning
=====================  =======  ============================================================
event_id               TEXT     the decision's ``event_id`` (key)
reward                 REAL     the reward that followed (required)
purchase               INTEGER  0/1; NULL when unknown
spend                  REAL     >= 0; NULL when unknown
opt_out                INTEGER  0/1; NULL when unknown
reported_at_us         INTEGER  when the outcome was observed
received_at_us         INTEGER  when it was stored
executed_action_index  INTEGER  the action the environment executed when it differs from the
                                served one (a budget turned a contact into no contact); NULL:
                                the served action was executed, or it is not known
=====================  =======  ============================================================

The logged action follows one convention in every writer (the service, the simulator):
``decisions.action_index`` is what the policy chose (served), with its ``propensity``; what
the environment then executed, if different, is ``outcomes.executed_action_index``, where it
becomes known; the reward is the executed action's.

``exports`` — one row per ``cvm logs export`` that recorded itself (what a prune may drop,
:mod:`cvm_rl.logs.retention`): ``id`` (key), ``exported_at_us`` (when the export's snapshot
was read), ``max_seq`` (the highest ``decisions.seq`` in that snapshot), ``final_before_us``
(every decision of the snapshot decided before this time was exported with its final
outcome status, ``reported`` or ``default``: the outcome window had passed),
``outcomes_through_us`` (the latest ``outcomes.received_at_us`` in the snapshot, 0 when
none: an outcome received later is not in the export), ``rows`` (decisions written) and
``out_dir`` (where).

A request's decisions are inserted in the transaction that inserts the request, so each
request's decisions occupy one contiguous run of ``seq`` (the prune relies on this to find
requests no decision references any more without an index on ``decisions.request``).

Versions: 1 had no ``outcomes.executed_action_index``; 2 had no ``exports``. A writer
(:class:`~cvm_rl.logs.store.DecisionLog`) upgrades an older log when it opens it
(:data:`MIGRATIONS`); a reader (:mod:`cvm_rl.logs.reader`) reads an older log as it is, with
the missing column NULL.
"""

from __future__ import annotations

import time
from enum import StrEnum


class LearningMode(StrEnum):
    """Whose action is executed: the policy's draw, or the caller's baseline (apprentice)."""

    ONLINE = "online"
    APPRENTICE = "apprentice"


class ExplorationMode(StrEnum):
    """How the served distribution is made from a bundle."""

    POLICY = "policy"
    """The bundle's own distribution."""
    EPSILON = "epsilon"
    """The bundle's greedy action with probability 1 - epsilon, else uniform."""
    SOFTMAX = "softmax"
    """Softmax of the bundle's scores at a temperature."""


class Durability(StrEnum):
    """SQLite ``synchronous`` setting of the log."""

    NORMAL = "normal"
    """Committed rows survive a crash of the process."""
    FULL = "full"
    """Committed rows also survive a power loss (fsync on every commit)."""


class OutcomeStatus(StrEnum):
    """Whether an exported decision's reward was reported (see :mod:`cvm_rl.logs.reader`)."""

    REPORTED = "reported"
    """The log holds an outcome."""
    DEFAULT = "default"
    """No outcome, and the outcome window has passed: the default reward ("nothing happened")."""
    PENDING = "pending"
    """No outcome yet, inside the window: no reward."""


def values(enum: type[StrEnum]) -> tuple[str, ...]:
    """The members' string values, in declaration order (for messages and SQL checks)."""
    return tuple(member.value for member in enum)


def now_us() -> int:
    """Wall-clock time in microseconds since the Unix epoch (the log's clock)."""
    return time.time_ns() // 1000


LEARNING_MODES = values(LearningMode)
EXPLORATION_MODES = values(ExplorationMode)
SYNCHRONOUS = values(Durability)

SCHEMA_VERSION = 3
"""The version this code writes (``meta.schema_version``)."""


def _sql_in(enum: type[StrEnum]) -> str:
    """``('a', 'b')``: the enum's values as an SQL list for a CHECK constraint."""
    return "(" + ", ".join(f"'{v}'" for v in values(enum)) + ")"


_EXECUTED_ACTION_INDEX = "executed_action_index INTEGER CHECK (executed_action_index >= 0)"

_EXPORTS = """CREATE TABLE IF NOT EXISTS exports (
    id INTEGER PRIMARY KEY,
    exported_at_us INTEGER NOT NULL,
    max_seq INTEGER NOT NULL,
    final_before_us INTEGER NOT NULL,
    outcomes_through_us INTEGER NOT NULL,
    rows INTEGER NOT NULL CHECK (rows >= 0),
    out_dir TEXT NOT NULL
)"""

TABLES: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    """CREATE TABLE IF NOT EXISTS models (
    model_id TEXT PRIMARY KEY,
    model_version TEXT NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    feature_names TEXT NOT NULL,
    action_names TEXT NOT NULL,
    first_seen_us INTEGER NOT NULL
) WITHOUT ROWID""",
    f"""CREATE TABLE IF NOT EXISTS activations (
    seq INTEGER PRIMARY KEY,
    model_id TEXT NOT NULL REFERENCES models (model_id),
    path TEXT NOT NULL,
    learning_mode TEXT NOT NULL CHECK (learning_mode IN {_sql_in(LearningMode)}),
    exploration TEXT NOT NULL CHECK (exploration IN {_sql_in(ExplorationMode)}),
    exploration_param REAL NOT NULL,
    reason TEXT NOT NULL,
    activated_at_us INTEGER NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    activation INTEGER NOT NULL REFERENCES activations (seq),
    n_rows INTEGER NOT NULL CHECK (n_rows > 0),
    n_features INTEGER NOT NULL CHECK (n_features > 0),
    n_actions INTEGER NOT NULL CHECK (n_actions > 0),
    features BLOB NOT NULL CHECK (length(features) = n_rows * n_features * 4),
    eligible BLOB NOT NULL CHECK (length(eligible) = n_rows * n_actions),
    probabilities BLOB CHECK (length(probabilities) = n_rows * n_actions * 8)
)""",
    """CREATE TABLE IF NOT EXISTS decisions (
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
)""",
    f"""CREATE TABLE IF NOT EXISTS outcomes (
    event_id TEXT PRIMARY KEY REFERENCES decisions (event_id),
    reward REAL NOT NULL,
    purchase INTEGER CHECK (purchase IN (0, 1)),
    spend REAL CHECK (spend >= 0),
    opt_out INTEGER CHECK (opt_out IN (0, 1)),
    reported_at_us INTEGER NOT NULL,
    received_at_us INTEGER NOT NULL,
    {_EXECUTED_ACTION_INDEX}
) WITHOUT ROWID""",
    _EXPORTS,
)
"""The tables of a version-:data:`SCHEMA_VERSION` log, one CREATE statement each."""

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (f"ALTER TABLE outcomes ADD COLUMN {_EXECUTED_ACTION_INDEX}",),
    2: (_EXPORTS,),
}
"""Statements that take a log of version ``v`` (the key) to version ``v + 1``."""

READABLE_VERSIONS = (*MIGRATIONS, SCHEMA_VERSION)
"""Versions a reader accepts: the current one and every one a writer upgrades."""

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
"""Columns of ``requests`` that a writer fills (``id`` is assigned), in insert order."""
OUTCOME_COLUMNS = (
    "event_id",
    "reward",
    "purchase",
    "spend",
    "opt_out",
    "reported_at_us",
    "received_at_us",
    "executed_action_index",
)
"""Columns of ``outcomes``, in insert order."""
ADDED_IN: dict[str, int] = {"outcomes.executed_action_index": 2}
"""Columns that logs older than the given version lack (a reader reads them as NULL)."""
