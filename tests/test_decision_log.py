"""The decision log store: round trips, idempotent replays, outcome rules, concurrency."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from log_fixtures import make_batch, start_activation

from cvm_rl.logs.schema import SCHEMA_VERSION
from cvm_rl.logs.store import (
    DecisionBatch,
    DecisionLog,
    DecisionLogError,
    EventConflict,
    LogBusy,
    ModelRecord,
    OutcomeRecord,
    UnknownEvents,
)

N_FEATURES, N_ACTIONS = 3, 4  # make_batch's defaults
MODEL = ModelRecord(
    model_id="test-abc",
    model_version="abc",
    kind="random",
    path="/bundles/test",
    feature_names=[f"f{i}" for i in range(N_FEATURES)],
    action_names=["no_contact", "a", "b", "c"],
)


@pytest.fixture
def log(tmp_path: Path) -> Iterator[DecisionLog]:
    with DecisionLog(tmp_path / "log.db") as opened:
        yield opened


@pytest.fixture
def activation(log: DecisionLog) -> int:
    return start_activation(log, MODEL).seq


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


def assert_stored_equals_batch(log: DecisionLog, batch: DecisionBatch) -> None:
    stored = log.get_decisions(batch.event_ids)
    assert sorted(stored) == sorted(batch.event_ids)
    for i, event_id in enumerate(batch.event_ids):
        row = stored[event_id]
        assert row.customer_id == batch.customer_ids[i]
        assert row.decided_at_us == batch.decided_at_us[i]
        assert row.activation == batch.activation
        assert row.action_index == batch.action_index[i]
        assert row.propensity == batch.propensity[i]
        assert row.policy_action_index == batch.policy_action_index[i]
        assert row.policy_propensity == batch.policy_propensity[i]
        baseline = int(batch.baseline_action_index[i])
        assert row.baseline_action_index == (None if baseline < 0 else baseline)
        assert row.explored == bool(batch.explored[i])
        np.testing.assert_array_equal(row.features, batch.features[i])
        assert row.features.dtype == np.float32
        np.testing.assert_array_equal(row.eligible, batch.eligible[i])
        if batch.probabilities is None:
            assert row.probabilities is None
        else:
            np.testing.assert_array_equal(row.probabilities, batch.probabilities[i])


# --------------------------------------------------------------------------- decisions
@pytest.mark.parametrize("probabilities", [True, False])
def test_batch_round_trip(log: DecisionLog, activation: int, probabilities: bool) -> None:
    batch = make_batch(ids("e", 50), activation, seed=1, probabilities=probabilities)
    assert log.insert_decisions(batch) == {}
    assert log.count() == 50
    assert_stored_equals_batch(log, batch)
    assert log.get_decisions(["never-decided"]) == {}


def test_models_and_activations(log: DecisionLog, activation: int) -> None:
    assert log.models() == {MODEL.model_id: MODEL}
    second = log.activate(
        MODEL,
        learning_mode="apprentice",
        exploration="epsilon",
        exploration_param=0.1,
        reason="load",
    )
    assert second.seq > activation
    assert log.latest_activation() == second.seq
    assert [a.learning_mode for a in log.activations()] == ["online", "apprentice"]
    assert len(log.models()) == 1  # a model is recorded once


def test_replay_returns_first_decision_and_stores_one_row(
    log: DecisionLog, activation: int
) -> None:
    first = make_batch(ids("e", 20), activation, seed=2)
    log.insert_decisions(first)
    # Same inputs, but a different draw (as a replayed request would get): the first stands.
    replay = make_batch(ids("e", 20), activation, seed=2)
    replay.action_index = (replay.action_index * 0).astype(np.int64)
    replay.propensity = np.ones(20)
    stored = log.insert_decisions(replay)
    assert sorted(stored) == sorted(first.event_ids)
    for i, event_id in enumerate(first.event_ids):
        assert stored[event_id].action_index == first.action_index[i]
        assert stored[event_id].propensity == first.propensity[i]
    assert log.count() == 20
    assert_stored_equals_batch(log, first)


def head(batch: DecisionBatch, k: int) -> DecisionBatch:
    """The first ``k`` decisions of ``batch``."""
    parts = {
        f.name: getattr(batch, f.name) if f.name == "activation" else getattr(batch, f.name)[:k]
        for f in dataclasses.fields(batch)
        if getattr(batch, f.name) is not None
    }
    return DecisionBatch(**{"probabilities": None, **parts})


def test_partial_replay_stores_only_new_ids(log: DecisionLog, activation: int) -> None:
    both = make_batch(ids("e", 10), activation, seed=3)
    log.insert_decisions(head(both, 5))
    stored = log.insert_decisions(both)
    assert sorted(stored) == sorted(ids("e", 10)[:5])
    assert log.count() == 10
    assert_stored_equals_batch(log, both)


@pytest.mark.parametrize(
    "change",
    [
        lambda b: b.customer_ids.__setitem__(0, "someone-else"),
        lambda b: b.features.__setitem__((0, 0), b.features[0, 0] + 1),
        lambda b: b.eligible.__setitem__((0, N_ACTIONS - 1), not b.eligible[0, N_ACTIONS - 1]),
        lambda b: b.baseline_action_index.__setitem__(0, (b.baseline_action_index[0] + 2) % 3),
    ],
    ids=["customer", "features", "eligible", "baseline"],
)
def test_replay_with_different_inputs_conflicts_and_writes_nothing(
    log: DecisionLog, activation: int, change: Callable[[DecisionBatch], Any]
) -> None:
    log.insert_decisions(make_batch(ids("e", 5), activation, seed=4))
    # One new event id plus a replayed one with different inputs: none of it is written.
    batch = make_batch([*ids("e", 5), "new-0"], activation, seed=4)
    original = make_batch(ids("e", 5), activation, seed=4)
    batch.customer_ids[:5] = original.customer_ids
    batch.features[:5], batch.eligible[:5] = original.features, original.eligible
    batch.baseline_action_index[:5] = original.baseline_action_index
    change(batch)
    with pytest.raises(EventConflict, match="'e-0' was already decided with different") as err:
        log.insert_decisions(batch)
    assert err.value.event_ids == ["e-0"]
    assert log.count() == 5
    assert log.get_decisions(["new-0"]) == {}


def test_concurrent_inserts_of_the_same_ids_store_one_row_each(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    with DecisionLog(path) as setup:
        seq = start_activation(setup, MODEL).seq
    event_ids = ids("c", 200)
    n_threads = 6
    shared = DecisionLog(path)
    # Half the threads share one connection, half open their own (as separate processes do).
    logs = [shared if t % 2 else DecisionLog(path) for t in range(n_threads)]
    replays: list[dict[str, Any]] = [{} for _ in range(n_threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads)

    def insert(t: int) -> None:
        try:
            barrier.wait()
            for start in range(0, len(event_ids), 50):  # several transactions interleave
                chunk = event_ids[start : start + 50]
                replays[t].update(logs[t].insert_decisions(make_batch(chunk, seq, seed=start)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=insert, args=(t,)) for t in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    with DecisionLog(path) as check:
        assert check.count() == len(event_ids)
        for start in range(0, len(event_ids), 50):
            assert_stored_equals_batch(
                check, make_batch(event_ids[start : start + 50], seq, seed=start)
            )
    # Every id was fresh for exactly one thread and a replay for all the others.
    replay_counts = {e: sum(e in r for r in replays) for e in event_ids}
    assert set(replay_counts.values()) == {n_threads - 1}
    for opened in {id(x): x for x in logs}.values():
        opened.close()


def test_reopened_log_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "log.db"
    with DecisionLog(path, synchronous="full") as log:
        seq = log.activate(
            MODEL,
            learning_mode="online",
            exploration="softmax",
            exploration_param=0.5,
            reason="start",
        ).seq
        batch = make_batch(ids("r", 30), seq, seed=5)
        log.insert_decisions(batch)
        log.record_outcomes([OutcomeRecord("r-0", 1.5, True, 3.0, False, 123)])
    with DecisionLog(path) as reopened:
        assert reopened.count() == 30 and reopened.count("outcomes") == 1
        assert_stored_equals_batch(reopened, batch)
        assert reopened.get_outcomes(["r-0"])["r-0"] == OutcomeRecord(
            "r-0", 1.5, True, 3.0, False, 123
        )
        assert reopened.models() == {MODEL.model_id: MODEL}
        assert reopened.activations()[0].exploration_param == 0.5


# --------------------------------------------------------------------------- outcomes
@pytest.fixture
def decided(log: DecisionLog, activation: int) -> list[str]:
    event_ids = ids("o", 10)
    log.insert_decisions(make_batch(event_ids, activation, seed=6))
    return event_ids


def test_outcome_round_trip_and_idempotent_resend(log: DecisionLog, decided: list[str]) -> None:
    outcomes = [
        OutcomeRecord(decided[0], 2.5, True, 10.0, False, 1_000),
        OutcomeRecord(decided[1], -0.1),  # unknowns stay None; reported_at = received
    ]
    assert log.record_outcomes(outcomes) == (2, 0)
    stored = log.get_outcomes(decided)
    assert stored[decided[0]] == outcomes[0]
    assert stored[decided[1]].purchase is None and stored[decided[1]].spend is None
    assert stored[decided[1]].reported_at_us is not None
    # The executed action, when it was not the served one, is stored with the outcome.
    executed = OutcomeRecord(decided[3], 0.5, executed_action_index=N_ACTIONS - 1)
    assert log.record_outcomes([executed]) == (1, 0)
    assert log.get_outcomes([decided[3]])[decided[3]].executed_action_index == N_ACTIONS - 1
    assert stored[decided[0]].executed_action_index is None
    # An identical resend (an unset reported_at matches any) is a duplicate, not an error.
    assert log.record_outcomes([*outcomes, OutcomeRecord(decided[2], 0.0)]) == (1, 2)
    assert log.record_outcomes([executed]) == (0, 1)
    assert log.count("outcomes") == 4


@pytest.mark.parametrize(
    "different",
    [
        OutcomeRecord("o-0", 2.0, True, 10.0, False, 1_000),
        OutcomeRecord("o-0", 2.5, False, 10.0, False, 1_000),
        OutcomeRecord("o-0", 2.5, True, None, False, 1_000),
        OutcomeRecord("o-0", 2.5, True, 10.0, True, 1_000),
        OutcomeRecord("o-0", 2.5, True, 10.0, False, 2_000),
        OutcomeRecord("o-0", 2.5, True, 10.0, False, 1_000, executed_action_index=0),
    ],
    ids=["reward", "purchase", "spend", "opt_out", "reported_at", "executed"],
)
def test_different_outcome_conflicts_and_writes_nothing(
    log: DecisionLog, decided: list[str], different: OutcomeRecord
) -> None:
    first = OutcomeRecord("o-0", 2.5, True, 10.0, False, 1_000)
    log.record_outcomes([first])
    with pytest.raises(EventConflict, match="'o-0' already has a different outcome") as err:
        log.record_outcomes([OutcomeRecord("o-1", 1.0), different])
    assert err.value.event_ids == ["o-0"]
    assert log.get_outcomes(["o-0", "o-1"]) == {"o-0": first}


def test_unknown_event_ids_write_nothing(log: DecisionLog, decided: list[str]) -> None:
    with pytest.raises(UnknownEvents, match="unknown event_id 'ghost-1' \\(and 1 more\\)") as err:
        log.record_outcomes(
            [OutcomeRecord("ghost-1", 1.0), OutcomeRecord("o-0", 1.0), OutcomeRecord("ghost-2", 0)]
        )
    assert err.value.event_ids == ["ghost-1", "ghost-2"]
    assert log.count("outcomes") == 0


# --------------------------------------------------------------------------- bad input
def _set(name: str, value: Callable[[DecisionBatch], Any]) -> Callable[[DecisionBatch], None]:
    return lambda b: setattr(b, name, value(b))


BAD_BATCHES = [
    (_set("event_ids", lambda b: ["x", "x", *b.event_ids[2:]]), "event_ids must be distinct"),
    (_set("customer_ids", lambda b: b.customer_ids[:-1]), "customer_ids must have 4 entries"),
    (_set("decided_at_us", lambda b: b.decided_at_us[:2]), "decided_at_us must have shape"),
    (_set("explored", lambda b: b.explored[:, None]), r"explored must have shape \(4,\)"),
    (_set("features", lambda b: b.features[0]), r"features must have shape \(4, F\)"),
    (_set("eligible", lambda b: b.eligible[:3]), r"eligible must have shape \(4, A\)"),
    (_set("probabilities", lambda b: np.ones((4, 2))), r"probabilities must have shape"),
    (_set("propensity", lambda b: b.propensity * 0), r"propensity must be in \(0, 1\]"),
    (_set("policy_propensity", lambda b: b.propensity + 1), r"policy_propensity must be in"),
    (_set("action_index", lambda b: b.action_index + N_ACTIONS), r"action_index must be in"),
    (_set("policy_action_index", lambda b: b.action_index - 9), "policy_action_index must be"),
]


@pytest.mark.parametrize(("corrupt", "message"), BAD_BATCHES)
def test_bad_batches_are_refused_and_write_nothing(
    log: DecisionLog,
    activation: int,
    corrupt: Callable[[DecisionBatch], None],
    message: str,
) -> None:
    batch = make_batch(ids("b", 4), activation, seed=7)
    corrupt(batch)
    with pytest.raises(ValueError, match=message):
        log.insert_decisions(batch)
    assert log.count() == 0


def _last_row(name: str, value: float) -> Callable[[DecisionBatch], None]:
    def corrupt(b: DecisionBatch) -> None:
        column = getattr(b, name).astype(np.float64 if "propensity" in name else np.int64)
        column[-1] = value
        setattr(b, name, column)

    return corrupt


@pytest.mark.parametrize("rows", [1, 3, 9, 40])  # Python comparisons up to 8 rows, then numpy
@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_last_row("propensity", np.nan), r"^propensity must be in \(0, 1\]"),
        (_last_row("propensity", 0.0), r"^propensity must be in \(0, 1\]"),
        (_last_row("policy_propensity", 1.5), r"^policy_propensity must be in \(0, 1\]"),
        (_last_row("policy_propensity", np.inf), r"^policy_propensity must be in"),
        (_last_row("action_index", -1), r"^action_index must be in \[0, 4\)"),
        (_last_row("policy_action_index", N_ACTIONS), r"^policy_action_index must be in"),
    ],
)
def test_a_bad_value_in_any_row_is_refused_at_every_batch_size(
    log: DecisionLog,
    activation: int,
    rows: int,
    corrupt: Callable[[DecisionBatch], None],
    message: str,
) -> None:
    """The value checks have two paths (a few rows, a batch); a NaN after a valid value must
    not slip past either (Python's min() skips a NaN that is not first)."""
    batch = make_batch(ids(f"v{rows}", rows), activation, seed=rows)
    corrupt(batch)
    with pytest.raises(ValueError, match=message):
        log.insert_decisions(batch)
    assert log.count() == 0


@pytest.mark.parametrize(
    ("outcomes", "message"),
    [
        ([OutcomeRecord("", 1.0)], "outcome.event_id is required"),
        ([OutcomeRecord("o-0", float("nan"))], "outcome.reward must be finite"),
        ([OutcomeRecord("o-0", float("inf"))], "outcome.reward must be finite"),
        ([OutcomeRecord("o-0", 1.0, spend=-1.0)], "outcome.spend must be finite and >= 0"),
        ([OutcomeRecord("o-0", 1.0, spend=float("inf"))], "outcome.spend must be finite"),
        ([OutcomeRecord("o-0", 1.0), OutcomeRecord("o-0", 1.0)], "event_ids must be distinct"),
        (
            [OutcomeRecord("o-0", 1.0, executed_action_index=-1)],
            "outcome.executed_action_index must be an int >= 0 or None, got -1",
        ),
        (
            [OutcomeRecord("o-0", 1.0, executed_action_index=True)],
            "outcome.executed_action_index must be an int >= 0 or None, got True",
        ),
        (
            [OutcomeRecord("o-0", 1.0, executed_action_index=1.0)],  # type: ignore[arg-type]
            "outcome.executed_action_index must be an int >= 0 or None, got 1.0",
        ),
        (
            [OutcomeRecord("o-0", 1.0, executed_action_index=N_ACTIONS)],
            rf"outcome.executed_action_index must be in \[0, {N_ACTIONS}\) \(the catalog of "
            r"event_id 'o-0'\), got 4",
        ),
    ],
)
def test_bad_outcomes_are_refused_and_write_nothing(
    log: DecisionLog, decided: list[str], outcomes: list[OutcomeRecord], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        log.record_outcomes([OutcomeRecord("o-5", 0.0), *outcomes])
    assert log.count("outcomes") == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda log: log.activate(
                MODEL,
                learning_mode="offline",
                exploration="policy",
                exploration_param=0,
                reason="x",
            ),
            "learning_mode must be one of",
        ),
        (
            lambda log: log.activate(
                MODEL, learning_mode="online", exploration="ucb", exploration_param=0, reason="x"
            ),
            "exploration must be one of",
        ),
        (lambda log: log.count("models"), "table must be 'decisions' or 'outcomes'"),
    ],
)
def test_bad_arguments(log: DecisionLog, call: Callable[[DecisionLog], Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(log)
    assert log.activations() == []


def test_bad_synchronous(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous must be one of"):
        DecisionLog(tmp_path / "log.db", synchronous="off")  # type: ignore[arg-type]


def test_non_sqlite_file_is_a_decision_log_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are not the rows you are looking for\n" * 50)
    with pytest.raises(DecisionLogError, match=r"notes\.db: not a usable decision log"):
        DecisionLog(path)


def test_other_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    DecisionLog(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.close()
    with pytest.raises(
        DecisionLogError, match=rf"schema_version 99, but this cvm-rl reads {SCHEMA_VERSION}"
    ):
        DecisionLog(path)


def _file_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def test_background_checkpoints_move_the_wal_into_the_database(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.db"
    with DecisionLog(path, checkpoint_interval_s=0.05) as log:
        act = start_activation(log, MODEL)
        start_size = _file_size(path)
        log.insert_decisions(make_batch([f"e{i}" for i in range(400)], act.seq, seed=3))
        wal = Path(f"{path}-wal")
        assert _file_size(wal) > 0  # the commit went to the WAL...
        deadline = time.monotonic() + 10
        while _file_size(path) <= start_size and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _file_size(path) > start_size  # ...and a checkpoint copied it back, unasked
        assert log.count() == 400
    assert not Path(f"{path}-wal").exists()  # closed cleanly


def test_checkpoint_interval_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="checkpoint_interval_s must be > 0"):
        DecisionLog(tmp_path / "x.db", checkpoint_interval_s=0)


def test_busy_log_is_reported_at_once_without_waiting(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    with DecisionLog(path) as log:
        act = start_activation(log, MODEL)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process committing
        batch = make_batch(["b1", "b2"], act.seq)
        start = time.monotonic()
        with pytest.raises(LogBusy, match="locked"):
            log.insert_decision_batches([batch], wait=False)
        assert time.monotonic() - start < 0.5  # no busy-handler sleeps
        other.execute("ROLLBACK")
        assert log.count() == 0
        assert log.insert_decision_batches([batch], wait=False) == [{}]
        assert log.count() == 2
        other.close()


def test_the_wal_stays_bounded_under_steady_writes(tmp_path: Path) -> None:
    path = tmp_path / "steady.db"
    wal = Path(f"{path}-wal")
    with DecisionLog(path, checkpoint_interval_s=0.1, wal_limit_bytes=2**20) as log:
        act = start_activation(log, MODEL)
        for k in range(300):
            ids = [f"s{k}-{i}" for i in range(256)]
            log.insert_decisions(make_batch(ids, act.seq, seed=k))
        # Checkpoints that only copy pages (PASSIVE) fall behind steady writes and the WAL
        # ends up larger than the database; truncating it past its limit keeps it near that.
        assert _file_size(wal) < _file_size(path) / 2
        assert log.count() == 300 * 256


class BlobCounter:
    """A spy on a log's connection: the bytes of every BLOB value its queries return."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.blob_bytes = 0

    def execute(self, *args: Any) -> Any:
        return _CountingCursor(self.db.execute(*args), self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


class _CountingCursor:
    def __init__(self, cursor: sqlite3.Cursor, counter: BlobCounter) -> None:
        self.cursor = cursor
        self.counter = counter

    def _count(self, rows: list[Any]) -> None:
        self.counter.blob_bytes += sum(len(v) for row in rows for v in row if isinstance(v, bytes))

    def fetchall(self) -> list[Any]:
        rows = self.cursor.fetchall()
        self._count(rows)
        return rows

    def fetchone(self) -> Any:
        row = self.cursor.fetchone()
        if row is not None:
            self._count([row])
        return row

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cursor, name)


def test_a_replayed_batch_reads_its_request_matrices_once(
    log: DecisionLog, activation: int
) -> None:
    # Replaying N rows once read the whole request's matrices back per row (N^2 bytes: a
    # 10,000-row replay took gigabytes and killed the server). It must read them once.
    n = 2000
    batch = make_batch(ids("e", n), activation, seed=9)
    log.insert_decisions(batch)
    request_bytes = sum(len(blob or b"") for blob in batch.request_row()[4:])
    spy = BlobCounter(log._db)
    log._db = log._reader.db = spy  # type: ignore[assignment]
    stored = log.insert_decisions(make_batch(ids("e", n), activation, seed=9))
    assert len(stored) == n
    assert spy.blob_bytes == request_bytes
    # The answer carries each row's own slice, decoded.
    i = n - 1
    np.testing.assert_array_equal(stored[f"e-{i}"].features, batch.features[i])
    np.testing.assert_array_equal(stored[f"e-{i}"].eligible, batch.eligible[i])
    np.testing.assert_array_equal(stored[f"e-{i}"].probabilities, batch.probabilities[i])
    assert log.count() == n


def test_replay_memory_grows_linearly_up_to_a_maximum_size_batch(
    log: DecisionLog, activation: int
) -> None:
    # Memory growth, not time (the machine is shared): the traced peak of a replay per row
    # is the same at the service's largest allowed batch as at a tenth of it (reading each
    # row's request back, as before, made it grow with the rows: 100x from 500 to 5,000).
    import tracemalloc

    def replay_peak(prefix: str, n: int) -> int:
        log.insert_decisions(make_batch(ids(prefix, n), activation, seed=4))
        again = make_batch(ids(prefix, n), activation, seed=4)
        tracemalloc.start()
        try:
            stored = log.insert_decisions(again)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(stored) == n
        return peak

    small = replay_peak("s", 500)
    largest = replay_peak("m", 5_000)  # server.config.DEFAULT_MAX_BATCH_ROWS
    assert largest / 5_000 <= 1.5 * small / 500, (largest, small)
    assert log.count() == 5_500
