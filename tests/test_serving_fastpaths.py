"""The serving hot paths give what the general code they shortcut gives: the flat decision
rows, the single-row draw, the leader's group commit, the rows built once for a write that
waits out a busy log, the lazily restored busy timeout and the BLAS thread setting."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from log_fixtures import make_batch, start_activation

from cvm_rl.logs.schema import DECISION_COLUMNS
from cvm_rl.logs.store import (
    DecisionBatch,
    DecisionLog,
    ModelRecord,
    PreparedBatch,
    StoredDecision,
)
from cvm_rl.policies.base import explored
from server import blas
from server.errors import RequestError
from server.model import ServingModel, hash_uniforms
from server.parsing import _check_features
from server.writer import LogWriter

N_FEATURES, N_ACTIONS = 3, 5
MODEL = ModelRecord("m-1", "1", "random", "/b", ["f0", "f1", "f2"], [f"a{i}" for i in range(5)])


def batch(event_ids: list[str], seed: int = 0, *, baseline: bool = True) -> DecisionBatch:
    return make_batch(
        event_ids, 1, seed, baseline=baseline, n_features=N_FEATURES, n_actions=N_ACTIONS
    )


@pytest.mark.parametrize("n", [1, 2, 129, 300])
@pytest.mark.parametrize("baseline", [True, False])
def test_flat_rows_are_the_rows_flattened(n: int, baseline: bool) -> None:
    b = batch([f"e{i}" for i in range(n)], seed=n, baseline=baseline)
    b.check()
    # The reference: one tuple per row, in DECISION_COLUMNS order, built the slow way.
    expected_rows = [
        (
            b.event_ids[i],
            b.customer_ids[i],
            int(b.decided_at_us[i]),
            7,
            i,
            int(b.action_index[i]),
            float(b.propensity[i]),
            int(b.policy_action_index[i]),
            float(b.policy_propensity[i]),
            None if b.baseline_action_index[i] < 0 else int(b.baseline_action_index[i]),
            int(b.explored[i]),
        )
        for i in range(n)
    ]
    assert all(len(row) == len(DECISION_COLUMNS) for row in expected_rows)
    expected = [value for row in expected_rows for value in row]
    flat = b.flat_rows(7)
    assert flat == expected
    assert [type(x) for x in flat] == [type(x) for x in expected]
    # A subset keeps each row's own request_row.
    picked = [n - 1, 0]
    subset = [value for i in picked for value in expected_rows[i]]
    assert b.flat_rows(7, picked) == subset
    assert [type(x) for x in b.flat_rows(7, picked)] == [type(x) for x in subset]


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("propensity", np.array([np.nan]), "propensity must be in"),
        ("propensity", np.array([0.0]), "propensity must be in"),
        ("policy_propensity", np.array([1.5]), "policy_propensity must be in"),
        ("action_index", np.array([-1]), "action_index must be in"),
        ("policy_action_index", np.array([N_ACTIONS]), "policy_action_index must be in"),
        ("explored", np.array([True, False]), r"explored must have shape \(1,\)"),
    ],
)
def test_check_refuses_what_it_refused(field: str, value: np.ndarray, match: str) -> None:
    b = batch(["e"])
    setattr(b, field, value)
    with pytest.raises(ValueError, match=match):
        b.check()


@pytest.mark.parametrize("finite_bounds", [True, False])
@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.nan, r"^f: row 1, feature 'f1' must be finite, got nan"),
        (np.inf, r"^f: row 1, feature 'f1' must be finite, got inf"),
        (-np.inf, r"^f: row 1, feature 'f1' must be finite, got -inf"),
        (2.5, r"^f: row 1, feature 'f1' must be in \[0, 2\] units \(the second\), got 2.5"),
    ],
)
def test_feature_checks_refuse_non_finite_values_whatever_the_bounds(
    finite_bounds: bool, value: float, match: str
) -> None:
    """The range check lets a value through only inside its bounds; an infinite bound (on
    the column checked here) must not let an infinite value through."""
    high = 2.0 if finite_bounds else np.inf
    features = [
        SimpleNamespace(min=0.0, max=2.0, unit="", description="the first"),
        SimpleNamespace(min=0.0, max=high, unit="units", description="the second"),
    ]
    model = SimpleNamespace(
        feature_names=["f0", "f1"],
        features=features,
        feature_min=np.array([0.0, 0.0], dtype=np.float32),
        feature_max=np.array([2.0, high], dtype=np.float32),
        finite_bounds=finite_bounds,
    )
    rows = np.ones((3, 2), dtype=np.float32)
    _check_features(model, rows, "f", rows=True)  # type: ignore[arg-type]
    rows[1, 1] = value
    if np.isfinite(value) and not finite_bounds:
        _check_features(model, rows, "f", rows=True)  # type: ignore[arg-type]  # inside
        return
    with pytest.raises(RequestError, match=match):
        _check_features(model, rows, "f", rows=True)  # type: ignore[arg-type]


def test_check_takes_lists_as_arrays() -> None:
    b = batch(["e0", "e1"])
    b.propensity = b.propensity.tolist()
    b.check()
    assert isinstance(b.propensity, np.ndarray)


def _vector_draw(salt: bytes, event_id: str, probs: np.ndarray) -> tuple[int, float, bool]:
    """ServingModel.decide's vectorized draw, for one row."""
    cdf = np.cumsum(probs, axis=1)
    u = hash_uniforms(salt, [event_id]) * cdf[:, -1]
    action = (cdf <= u[:, None]).sum(axis=1)
    last = probs.shape[1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=1)
    action = np.minimum(action, last)
    propensity = probs[np.arange(1), action]
    return int(action[0]), float(propensity[0]), bool(explored(probs, action)[0])


def test_the_single_row_draw_is_the_vectorized_one() -> None:
    model = ServingModel.__new__(ServingModel)  # the draw needs the salt only
    model._salt = b"version\0"
    rng = np.random.default_rng(3)
    for k in range(3000):
        a = int(rng.integers(1, 30))
        p = rng.dirichlet(np.ones(a) * rng.uniform(0.02, 3.0))
        p[rng.random(a) < 0.3] = 0.0
        if k % 5 == 0:
            p = np.eye(a)[rng.integers(a)]
        elif k % 7 == 0:
            p = np.full(a, 1.0 / a)
        if p.sum() == 0:
            continue
        probs = (p / p.sum())[None, :]
        event_id = f"event-{k}"
        draw = model._draw_one(event_id, probs)
        got = (int(draw.action[0]), float(draw.propensity[0]), bool(draw.explored[0]))
        assert got == _vector_draw(model._salt, event_id, probs), k
        assert draw.action.dtype == np.int64 and draw.explored.dtype == bool


class CountingLog(DecisionLog):
    """A log that counts its group commits."""

    commits = 0

    def insert_decision_batches(self, batches, *, wait=True):
        CountingLog.commits += 1
        return super().insert_decision_batches(batches, wait=wait)


def test_concurrent_inserts_share_the_leaders_commit(tmp_path: Path) -> None:
    async def main() -> list[dict[str, StoredDecision]]:
        with CountingLog(tmp_path / "log.db") as log:
            start_activation(log, MODEL)
            writer = LogWriter(log)
            CountingLog.commits = 0
            results = await asyncio.gather(
                *(writer.insert(batch([f"e{i}"], seed=i)) for i in range(10))
            )
            assert CountingLog.commits == 1
            assert log.count() == 10
            # Alone, a request writes without waiting for anyone.
            assert await writer.insert(batch(["alone"])) == {}
            assert CountingLog.commits == 2
            return results

    assert asyncio.run(main()) == [{}] * 10


def test_the_leader_lets_the_loop_turn_only_when_others_are_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A turn of the loop can only add the rows of requests that are ready to run; a lone
    request writes at once (a turn costs it latency and brings no one)."""
    turns: list[float] = []
    real_sleep = asyncio.sleep

    async def counting_sleep(delay: float, *args: Any) -> Any:
        turns.append(delay)
        return await real_sleep(delay, *args)

    async def main() -> None:
        with CountingLog(tmp_path / "log.db") as log:
            start_activation(log, MODEL)
            writer = LogWriter(log)
            monkeypatch.setattr(asyncio, "sleep", counting_sleep)
            assert await writer.insert(batch(["alone"])) == {}
            assert turns == []
            ran: list[str] = []
            asyncio.get_running_loop().call_soon(ran.append, "ready")
            CountingLog.commits = 0
            assert await writer.insert(batch(["after"], seed=1)) == {}
            assert turns == [0] and ran == ["ready"] and CountingLog.commits == 1
            assert log.count() == 2

    asyncio.run(main())


def test_a_cancelled_leader_still_writes_the_others(tmp_path: Path) -> None:
    async def main() -> None:
        with DecisionLog(tmp_path / "log.db") as log:
            start_activation(log, MODEL)
            writer = LogWriter(log)
            leader = asyncio.ensure_future(writer.insert(batch(["lead"])))
            await asyncio.sleep(0)  # the leader is letting the loop turn
            follower = asyncio.ensure_future(writer.insert(batch(["follow"], seed=1)))
            leader.cancel()
            assert await follower == {}
            with pytest.raises(asyncio.CancelledError):
                await leader
            # The cancelled caller's rows are stored all the same (as before).
            assert log.count() == 2

    asyncio.run(main())


def _table_rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    db = sqlite3.connect(path)
    try:
        return {
            t: db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
            for t in ("requests", "decisions")
        }
    finally:
        db.close()


def test_prepared_batches_store_what_batches_store(tmp_path: Path) -> None:
    """Group commits of prepared batches (the writer's) and of plain ones (any other caller)
    leave the same rows and give the same answers, replays and conflicts included."""
    groups = [
        [batch(["a", "b"]), batch(["c"], seed=1, baseline=False)],
        [batch(["d"], seed=2), batch(["a", "e"])],  # "a" replayed as it was: returned
        [batch(["b"], seed=3)],  # "b" with other inputs: a conflict in its place
    ]
    answers = {}
    for prepared in (False, True):
        path = tmp_path / f"{prepared}.db"
        with DecisionLog(path) as log:
            start_activation(log, MODEL)
            answers[prepared] = [
                [
                    {e: repr(d) for e, d in r.items()} if isinstance(r, dict) else r.event_ids
                    for r in log.insert_decision_batches(
                        [PreparedBatch.of(b) if prepared else b for b in group], wait=False
                    )
                ]
                for group in groups
            ]
    assert answers[True] == answers[False]
    assert list(answers[True][1][1]) == ["a"] and answers[True][2] == [["b"]]
    assert _table_rows(tmp_path / "True.db") == _table_rows(tmp_path / "False.db")


def test_a_write_that_waits_out_a_busy_log_builds_its_rows_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = []
    flat_rows = DecisionBatch.flat_rows

    def counting(self: DecisionBatch, request: int, indices: object = None) -> list[object]:
        built.append(self.event_ids[0])
        return flat_rows(self, request, indices)  # type: ignore[arg-type]

    monkeypatch.setattr(DecisionBatch, "flat_rows", counting)

    async def main() -> None:
        with DecisionLog(tmp_path / "log.db") as log:
            start_activation(log, MODEL)
            other = sqlite3.connect(tmp_path / "log.db", isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            writer = LogWriter(log)
            first = asyncio.ensure_future(writer.insert(batch(["x"])))
            await asyncio.sleep(0.02)  # several tries meanwhile, each refused
            second = asyncio.ensure_future(writer.insert(batch(["y"], seed=1)))
            await asyncio.sleep(0.02)
            assert not first.done() and not second.done()
            other.execute("COMMIT")
            other.close()
            assert await first == {} and await second == {}
            assert log.count() == 2
            # A batch that fails its check fails its own caller only, before it is queued.
            bad = batch(["z"], seed=2)
            bad.propensity = np.full(1, 2.0)
            with pytest.raises(ValueError, match="propensity"):
                await writer.insert(bad)
            assert await writer.insert(batch(["w"], seed=3)) == {}

    asyncio.run(main())
    assert built == ["x", "y", "w"]


def test_the_busy_timeout_is_back_before_anything_that_waits(tmp_path: Path) -> None:
    with DecisionLog(tmp_path / "log.db", busy_timeout_ms=1234) as log:
        start_activation(log, MODEL)

        def timeout() -> int:
            return int(log._db.execute("PRAGMA busy_timeout").fetchone()[0])

        assert log.insert_decision_batches([batch(["a"])], wait=False) == [{}]
        assert timeout() == 0  # left at 0 for the next write that must not wait
        for read in (log.count, log.models, log.activations, log.latest_activation):
            assert log.insert_decision_batches([batch([f"r{read.__name__}"])], wait=False)
            read()
            assert timeout() == 1234, read.__name__
        # A replay (its own waiting transaction) after a write that did not wait.
        [replayed] = log.insert_decision_batches([batch(["a"])], wait=False)
        assert isinstance(replayed, dict) and list(replayed) == ["a"]
        assert timeout() == 1234
        # Another connection holding the write lock: refused at once, then waited out.
        other = sqlite3.connect(tmp_path / "log.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        from cvm_rl.logs.store import LogBusy

        with pytest.raises(LogBusy):
            log.insert_decision_batches([batch(["b"])], wait=False)
        other.execute("COMMIT")
        other.close()
        assert log.insert_decision_batches([batch(["b"])], wait=False) == [{}]


def test_one_blas_thread_gives_the_same_products() -> None:
    from threadpoolctl import threadpool_info, threadpool_limits

    rng = np.random.default_rng(0)
    a, w = rng.normal(size=(512, 64)), rng.normal(size=(64, 64))
    before = a @ w
    with threadpool_limits(limits=None):  # put the test process's limits back afterwards
        assert blas.single_threaded_blas() >= 1
        assert {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"} == {1}
        np.testing.assert_array_equal(a @ w, before)


def test_accumulate_is_numpys_cumulative_sum() -> None:
    # The single-row draw relies on it: numpy's cumsum adds in order, as Python does.
    rng = np.random.default_rng(5)
    for _ in range(500):
        p = rng.dirichlet(np.ones(int(rng.integers(1, 40))))
        assert np.cumsum(p[None, :], axis=1)[0].tolist() == list(itertools.accumulate(p))
