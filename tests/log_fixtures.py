"""Hand-made decision logs shared by the logs tests (importable: pytest puts ``tests/`` on
the path)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cvm_rl.logs.records import DecisionBatch, ModelRecord
from cvm_rl.logs.store import Activation, DecisionLog


def start_activation(log: DecisionLog, model: ModelRecord) -> Activation:
    """``model`` as the active model of ``log`` (online, the bundle's own distribution)."""
    return log.activate(
        model, learning_mode="online", exploration="policy", exploration_param=0.0, reason="start"
    )


def make_batch(
    event_ids: Sequence[str],
    activation: int,
    seed: int = 0,
    *,
    probabilities: bool = True,
    baseline: bool = True,
    n_features: int = 3,
    n_actions: int = 4,
) -> DecisionBatch:
    """Random but valid decisions (a seed fixes the content, so equal seeds replay); with
    ``baseline`` about half the rows name a baseline action, without it none does."""
    rng = np.random.default_rng(seed)
    n = len(event_ids)
    eligible = rng.random((n, n_actions)) < 0.6
    eligible[:, 0] = True
    probs = eligible / eligible.sum(axis=1, keepdims=True)
    actions = np.array([rng.choice(np.flatnonzero(row)) for row in eligible])
    propensity = probs[np.arange(n), actions]
    decided_at_us = rng.integers(1_700_000_000_000_000, 1_800_000_000_000_000, n)
    baseline_draw = np.where(rng.random(n) < 0.5, -1, rng.integers(0, n_actions, n))
    return DecisionBatch(
        event_ids=list(event_ids),
        customer_ids=[f"cust-{e}" for e in event_ids],
        decided_at_us=decided_at_us,
        activation=activation,
        action_index=actions,
        propensity=propensity,
        policy_action_index=actions.copy(),
        policy_propensity=propensity.copy(),
        baseline_action_index=baseline_draw if baseline else np.full(n, -1),
        explored=actions != probs.argmax(axis=1),
        features=rng.normal(size=(n, n_features)).astype(np.float32),
        eligible=eligible,
        probabilities=probs if probabilities else None,
    )


MODEL_A = ModelRecord("a-1", "1", "random", "", ["f0", "f1", "f2"], ["no_contact", "x", "y"])
MODEL_B = ModelRecord("b-2", "2", "random", "", [f"g{i}" for i in range(5)], ["no_contact", "z"])


def decide(
    log: DecisionLog, model: ModelRecord, event_ids: Sequence[str], decided_at: Sequence[int]
) -> None:
    """Hand-made decisions (action 1 with propensity 0.5) of ``model``."""
    seq = log.activate(
        model,
        learning_mode="apprentice",
        exploration="epsilon",
        exploration_param=0.25,
        reason="start",
    ).seq
    n, f, a = len(event_ids), len(model.feature_names), len(model.action_names)
    log.insert_decisions(
        DecisionBatch(
            event_ids=list(event_ids),
            customer_ids=[f"c-{e}" for e in event_ids],
            decided_at_us=np.array(decided_at, dtype=np.int64),
            activation=seq,
            action_index=np.ones(n, dtype=np.int64),
            propensity=np.full(n, 0.5),
            policy_action_index=np.zeros(n, dtype=np.int64),
            policy_propensity=np.full(n, 0.5),
            baseline_action_index=np.ones(n, dtype=np.int64),
            explored=np.zeros(n, dtype=bool),
            features=np.arange(n * f, dtype=np.float32).reshape(n, f),
            eligible=np.ones((n, a), dtype=bool),
            probabilities=None,
        )
    )


def downgrade_to_v1(path: Path) -> None:
    """Make the closed log at ``path`` a schema-version-1 log: version 1 had no
    ``outcomes.executed_action_index``."""
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE outcomes DROP COLUMN executed_action_index")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.close()


def table_columns(path: Path, table: str) -> list[tuple[str, str, int, object, int]]:
    """``PRAGMA table_info`` of ``table``: (name, type, notnull, default, pk) per column."""
    with sqlite3.connect(path) as db:
        rows = db.execute(f"PRAGMA table_info({table})").fetchall()
    db.close()
    return [tuple(r[1:]) for r in rows]


def schema_version(path: Path) -> str:
    with sqlite3.connect(path) as db:
        (value,) = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    db.close()
    return str(value)
