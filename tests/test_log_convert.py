"""Converters from a decision log and from its export to arrays (``LoggedDecisions``): round
trips against the rollout, pending and default rows, one feature schema, bad inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from log_fixtures import MODEL_A, MODEL_B, decide

from cvm_rl.logs.arrays import LoggedData, LoggedDecisions
from cvm_rl.logs.convert import decisions_from_export, decisions_from_log, decisions_from_table
from cvm_rl.logs.export import MODELS_METADATA_KEY, export_parquet, read_export, read_models
from cvm_rl.logs.records import OutcomeRecord
from cvm_rl.logs.simulated import (
    DEFAULT_START_US,
    WEEK_US,
    collect_logged_data,
    simulate_to_log,
)
from cvm_rl.logs.store import DecisionLog
from cvm_rl.policies.baselines import ExplorationPolicy
from cvm_rl.rollout import rollout
from simulator.config import load_scenario, scenario_from_mapping

CUSTOMERS, WEEKS, SEED = 50, 3, 5
DAY_US = 86_400 * 1_000_000
NOW = DEFAULT_START_US + 60 * DAY_US
# A contact budget the exploration policy overspends: some drawn contacts are executed as no
# contact, so the chosen and the executed action differ in some rows.
_DEFAULT = load_scenario("default").model_dump()
SCENARIO = scenario_from_mapping(
    {
        **_DEFAULT,
        "horizon_weeks": 4,
        "constraints": {**_DEFAULT["constraints"], "budget_per_customer_week": 0.1},
    }
)
ARRAYS = ("obs", "mask", "actions", "propensities", "rewards", "executed")


@dataclass(frozen=True)
class Simulated:
    log: Path
    export: Path


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Simulated:
    root = tmp_path_factory.mktemp("convert")
    with DecisionLog(root / "log.db") as log:
        simulate_to_log(
            ExplorationPolicy(SCENARIO), SCENARIO, log, customers=CUSTOMERS, weeks=WEEKS, seed=SEED
        )
    export_parquet(root / "log.db", root / "out", now_us=NOW)
    return Simulated(root / "log.db", root / "out")


def assert_same_decisions(a: LoggedDecisions, b: LoggedDecisions) -> None:
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(a.data, name), getattr(b.data, name), err_msg=name)
        assert getattr(a.data, name).dtype == getattr(b.data, name).dtype, name
    for name in ("event_ids", "customer_ids", "decided_at_us", "model_ids", "probabilities"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.feature_names, a.action_names) == (b.feature_names, b.action_names)


# --------------------------------------------------------------------------- round trips
def test_simulated_log_records_the_executed_action_where_it_differs(simulated: Simulated) -> None:
    steps = list(
        rollout(
            ExplorationPolicy(SCENARIO),
            SCENARIO,
            n_customers=CUSTOMERS,
            weeks=WEEKS,
            seed=SEED,
            with_probabilities=True,
        )
    )
    differs = 0
    with DecisionLog(simulated.log) as log:
        for t in steps:
            event_ids = [f"sim-{SEED}-{c}-w{t.week}" for c in range(CUSTOMERS)]
            outcomes = log.get_outcomes(event_ids)
            decisions = log.get_decisions(event_ids)
            for c, event_id in enumerate(event_ids):
                chosen, executed = int(t.decisions.actions[c]), int(t.executed[c])
                assert decisions[event_id].action_index == chosen
                expected = None if executed == chosen else executed
                assert outcomes[event_id].executed_action_index == expected
                differs += expected is not None
    assert differs > 0  # the budget refused some contacts


@pytest.mark.parametrize(
    "convert",
    [
        lambda s: decisions_from_log(s.log, now_us=NOW),
        lambda s: decisions_from_log(s.log, now_us=NOW, chunk_rows=7),
        lambda s: decisions_from_export(s.export),
        lambda s: decisions_from_table(pq.read_table(s.export), models=read_models(s.export)),
    ],
    ids=["log", "log-small-chunks", "export", "pyarrow-read-table"],
)
def test_log_and_export_convert_to_the_rollout_arrays(
    simulated: Simulated, convert: Callable[[Simulated], LoggedDecisions]
) -> None:
    converted = convert(simulated)
    expected = collect_logged_data(
        SCENARIO,
        n_customers=CUSTOMERS,
        weeks=WEEKS,
        seed=SEED,
        logging_policy=ExplorationPolicy(SCENARIO),
    )
    for name in ARRAYS:
        np.testing.assert_array_equal(
            getattr(converted.data, name), getattr(expected, name), err_msg=name
        )
    assert (converted.data.executed_actions != converted.data.actions).any()
    n = CUSTOMERS * WEEKS
    weeks, customers = np.divmod(np.arange(n), CUSTOMERS)
    assert converted.event_ids.tolist() == [
        f"sim-{SEED}-{c}-w{w}" for w, c in zip(weeks, customers, strict=True)
    ]
    assert converted.customer_ids.tolist() == [f"sim-{SEED}-{c}" for c in customers]
    np.testing.assert_array_equal(converted.decided_at_us, DEFAULT_START_US + weeks * WEEK_US)
    assert set(converted.model_ids) == {"exploration-sim"}
    assert converted.probabilities is not None
    np.testing.assert_array_equal(
        converted.probabilities[np.arange(n), converted.data.actions], converted.data.propensities
    )
    assert converted.feature_names == tuple(
        read_models(simulated.export)["exploration-sim"]["feature_names"]
    )
    assert converted.action_names == tuple(SCENARIO.action_names())


def test_log_and_export_convert_to_the_same_decisions(simulated: Simulated) -> None:
    assert_same_decisions(
        decisions_from_log(simulated.log, now_us=NOW), decisions_from_export(simulated.export)
    )


def test_an_event_logged_twice_is_refused(simulated: Simulated) -> None:
    """Two shards holding the same decision (a retry two replicas both logged) would count it
    twice: the conversion names the event id instead."""
    import pyarrow as pa

    table = read_export(simulated.export)
    doubled = pa.concat_tables([table, table.slice(3, 2)])
    first = table.column("event_id")[3].as_py()
    with pytest.raises(ValueError, match=rf"event_id '{first}' is on 2 rows \(2 ids repeated\)"):
        decisions_from_table(doubled)
    assert decisions_from_table(table).data.obs.shape[0] == table.num_rows


def test_export_has_the_executed_action_column(simulated: Simulated) -> None:
    table = read_export(simulated.export)
    executed = table.column("executed_action_index").to_pylist()
    actions = table.column("action_index").to_pylist()
    assert any(e is not None for e in executed)
    assert all(e is None or e != a for e, a in zip(executed, actions, strict=True))


# --------------------------------------------------------------------------- outcome status
@pytest.fixture
def status_log(tmp_path: Path) -> Path:
    """MODEL_A decisions: reported (with an executed action), default (old, no outcome),
    pending (1 day old), and reported but newer than another, to check the order."""
    path = tmp_path / "status.db"
    old = NOW - 10 * DAY_US
    with DecisionLog(path) as log:
        decide(log, MODEL_A, ["late", "pending"], [old + 5, NOW - DAY_US])
        decide(log, MODEL_A, ["reported", "default"], [old, old + 1])
        log.record_outcomes(
            [
                OutcomeRecord("reported", 3.0, True, 12.5, False, old + DAY_US, 0),
                OutcomeRecord("late", 1.5),
            ]
        )
    return path


@pytest.mark.parametrize("source", ["log", "export"])
def test_pending_rows_are_left_out_and_default_rewards_kept(
    status_log: Path, tmp_path: Path, source: str
) -> None:
    window = {"now_us": NOW, "outcome_window_s": 7 * 86_400, "default_reward": -0.5}
    if source == "log":
        converted = decisions_from_log(status_log, **window)
    else:
        export_parquet(status_log, tmp_path / "out", include_pending=True, **window)
        converted = decisions_from_export(tmp_path / "out")
    assert converted.event_ids.tolist() == ["reported", "default", "late"]  # by decision time
    assert converted.data.rewards.tolist() == [3.0, -0.5, 1.5]
    assert converted.data.actions.tolist() == [1, 1, 1]
    assert converted.data.executed_actions.tolist() == [0, 1, 1]
    assert converted.probabilities is None  # hand-made decisions log no distribution
    np.testing.assert_array_equal(converted.data.obs[0], [0.0, 1.0, 2.0])
    assert converted.feature_names == ("f0", "f1", "f2")


def test_only_pending_rows_give_no_rows_with_the_models_schema(tmp_path: Path) -> None:
    with DecisionLog(tmp_path / "log.db") as log:
        decide(log, MODEL_A, ["p0", "p1"], [NOW - DAY_US, NOW - 2 * DAY_US])
    converted = decisions_from_log(tmp_path / "log.db", now_us=NOW)
    assert len(converted) == 0  # no outcome, inside the window
    assert converted.data.obs.shape == (0, 3) and converted.data.mask.shape == (0, 3)
    assert converted.action_names == ("no_contact", "x", "y")


# --------------------------------------------------------------------------- feature schemas
@pytest.fixture
def mixed_log(tmp_path: Path) -> Path:
    path = tmp_path / "mixed.db"
    with DecisionLog(path) as log:
        decide(log, MODEL_A, ["a0", "a1"], [NOW - 20 * DAY_US, NOW - 19 * DAY_US])
        decide(log, MODEL_B, ["b0"], [NOW - 18 * DAY_US])
    export_parquet(path, tmp_path / "out", now_us=NOW)
    return path


@pytest.mark.parametrize(
    "convert",
    [
        lambda path, **kw: decisions_from_log(path, now_us=NOW, **kw),
        lambda path, **kw: decisions_from_log(path, now_us=NOW, chunk_rows=1, **kw),
        lambda path, **kw: decisions_from_export(path.parent / "out", **kw),
    ],
    ids=["log", "log-one-row-chunks", "export"],
)
def test_mixed_feature_schemas_are_refused_unless_one_is_selected(
    mixed_log: Path, convert: Callable[..., LoggedDecisions]
) -> None:
    with pytest.raises(
        ValueError,
        match=r"mixed feature schemas: the rows of models 'a-1' \(3 features, 3 actions\), "
        r"'b-2' \(5 features, 2 actions\) differ in feature_names or action_names",
    ):
        convert(mixed_log)
    only_b = convert(mixed_log, model_ids=["b-2"])
    assert only_b.event_ids.tolist() == ["b0"] and only_b.data.obs.shape == (1, 5)
    assert only_b.action_names == ("no_contact", "z")
    only_a = convert(mixed_log, model_ids={"a-1"})
    assert only_a.event_ids.tolist() == ["a0", "a1"] and set(only_a.model_ids) == {"a-1"}


def models_without_metadata(mixed_log: Path) -> Any:
    table = read_export(mixed_log.parent / "out")
    return decisions_from_table(table.replace_schema_metadata({}))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda p: decisions_from_log(p, model_ids=["nope"]),
            ValueError,
            r"model_ids: 'nope' not among the models 'a-1', 'b-2'",
        ),
        (
            lambda p: decisions_from_log(p, model_ids="a-1"),
            ValueError,
            "model_ids must be a collection of model ids, got the str 'a-1'",
        ),
        (
            lambda p: decisions_from_export(p.parent / "out", model_ids=["a-1", "x"]),
            ValueError,
            "model_ids: 'x' not among",
        ),
        (
            lambda p: decisions_from_log(p, outcome_window_s=-1),
            ValueError,
            "outcome_window_s must be finite and >= 0",
        ),
        (
            lambda p: decisions_from_log(p, default_reward=float("nan")),
            ValueError,
            "default_reward must be finite",
        ),
        (lambda p: decisions_from_log(p, chunk_rows=0), ValueError, "chunk_rows must be >= 1"),
        (
            lambda p: decisions_from_log(p.parent / "missing.db"),
            FileNotFoundError,
            r"missing\.db: decision log not found",
        ),
        (models_without_metadata, ValueError, r"models: the table has no b'cvm_rl.models'"),
        (
            lambda p: decisions_from_table(
                read_export(p.parent / "out").drop_columns(["features", "reward"])
            ),
            ValueError,
            "table: no column 'features', 'reward'",
        ),
        (
            lambda p: decisions_from_table(
                read_export(p.parent / "out"), models={"a-1": read_models(p.parent / "out")["a-1"]}
            ),
            ValueError,
            "models: no description of model_id 'b-2'",
        ),
    ],
)
def test_bad_conversions(
    mixed_log: Path, call: Callable[[Path], Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        call(mixed_log)


def test_an_export_without_the_executed_column_reads_it_as_null(mixed_log: Path) -> None:
    table = read_export(mixed_log.parent / "out").drop_columns(["executed_action_index"])
    assert MODELS_METADATA_KEY in table.schema.metadata
    converted = decisions_from_table(table, model_ids=["a-1"])
    np.testing.assert_array_equal(converted.data.executed_actions, converted.data.actions)


# --------------------------------------------------------------------------- container
def _decisions(**change: Any) -> LoggedDecisions:
    n = 3
    fields: dict[str, Any] = {
        "data": LoggedData(
            obs=np.zeros((n, 2)),
            mask=np.ones((n, 3), dtype=bool),
            actions=np.array([0, 1, 2]),
            propensities=np.full(n, 1 / 3),
            rewards=np.zeros(n),
        ),
        "event_ids": ["e0", "e1", "e2"],
        "customer_ids": ["c0", "c1", "c0"],
        "decided_at_us": np.array([1, 2, 2]),
        "model_ids": ["m"] * n,
        "probabilities": np.full((n, 3), 1 / 3),
        "feature_names": ("f0", "f1"),
        "action_names": ("a", "b", "c"),
    }
    return LoggedDecisions(**{**fields, **change})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"event_ids": ["e0"]}, r"event_ids must have shape \(3,\)"),
        ({"customer_ids": np.array([["c"]] * 3)}, r"customer_ids must have shape \(3,\)"),
        ({"model_ids": []}, r"model_ids must have shape \(3,\)"),
        ({"decided_at_us": np.array([1.0, 2.0, 3.0])}, r"decided_at_us must be \(3,\) integers"),
        ({"decided_at_us": np.array([1, 2])}, r"decided_at_us must be \(3,\) integers"),
        ({"decided_at_us": np.array([2, 1, 3])}, "decided_at_us must not decrease"),
        ({"probabilities": np.ones((3, 2))}, r"probabilities must have shape \(3, 3\)"),
        ({"feature_names": ("f0",)}, "feature_names must name the 2 data.obs columns, got 1"),
        ({"action_names": ()}, "action_names must name the 3 data.mask columns, got 0"),
    ],
)
def test_bad_logged_decisions(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _decisions(**change)


def test_take_keeps_every_column_in_step() -> None:
    decisions = _decisions()
    first_customer = decisions.take(decisions.customer_ids == "c0")
    assert first_customer.event_ids.tolist() == ["e0", "e2"]
    assert first_customer.data.actions.tolist() == [0, 2]
    assert first_customer.decided_at_us.tolist() == [1, 2]
    assert first_customer.probabilities is not None and first_customer.probabilities.shape == (2, 3)
    assert first_customer.feature_names == ("f0", "f1")
