"""Simulated decision logs, their Parquet export, and the ``cvm logs`` commands."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from log_fixtures import MODEL_A, MODEL_B, decide

from cvm_rl.bundle import load_bundle, save_bundle
from cvm_rl.cli import main
from cvm_rl.evaluation import run_episode
from cvm_rl.logs.export import (
    EXPORT_SCHEMA,
    LEGACY_MODELS_FILE,
    MODELS_FILE,
    MODELS_METADATA_KEY,
    ExportSummary,
    export_parquet,
    read_export,
    read_models,
)
from cvm_rl.logs.simulated import (
    DEFAULT_START_US,
    WEEK_US,
    simulate_to_log,
    simulation_model_record,
)
from cvm_rl.logs.store import (
    DecisionLog,
    DecisionLogError,
    ModelRecord,
    OutcomeRecord,
)
from cvm_rl.policies import Policy, RandomPolicy, RuleBasedPolicy
from cvm_rl.policies.bandits import LinTSPolicy
from simulator.config import load_scenario, scenario_from_mapping
from simulator.core import observation_feature_names

CUSTOMERS, WEEKS = 200, 4
DAY_US = 86_400 * 1_000_000
SCENARIO = scenario_from_mapping({**load_scenario("default").model_dump(), "horizon_weeks": WEEKS})


@dataclass(frozen=True)
class Simulated:
    """A log with a random-policy run (seed 11) and a bundled rules run (seed 12)."""

    path: Path
    bundle_dir: Path
    random_reward: float
    rules_reward: float


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Simulated:
    root = tmp_path_factory.mktemp("simulated")
    bundle_dir = save_bundle(
        RuleBasedPolicy(SCENARIO), root / "rules-bundle", algo="rules", training_config={}
    )
    bundle = load_bundle(bundle_dir)
    with DecisionLog(root / "log.db") as log:
        random_run = simulate_to_log(
            RandomPolicy(SCENARIO), SCENARIO, log, customers=CUSTOMERS, weeks=WEEKS, seed=11
        )
        rules_run = simulate_to_log(
            bundle.policy,
            bundle.scenario,
            log,
            customers=CUSTOMERS,
            weeks=WEEKS,
            seed=12,
            model=ModelRecord.from_bundle(bundle),
        )
    return Simulated(root / "log.db", bundle_dir, random_run.total_reward, rules_run.total_reward)


@pytest.fixture(scope="module")
def exported(simulated: Simulated, tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    out = tmp_path_factory.mktemp("export")
    export_parquet(simulated.path, out, now_us=DEFAULT_START_US + 60 * DAY_US)
    return read_export(out)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- simulation
@pytest.mark.parametrize(
    ("make", "seed", "field"),
    [(RandomPolicy, 11, "random_reward"), (RuleBasedPolicy, 12, "rules_reward")],
)
def test_logged_rewards_add_up_to_the_evaluation(
    simulated: Simulated, make: type[Policy], seed: int, field: str
) -> None:
    value = run_episode(make(SCENARIO), SCENARIO, CUSTOMERS, seed)["value"]
    assert getattr(simulated, field) == pytest.approx(value * CUSTOMERS, rel=1e-9, abs=1e-9)


def test_simulated_log_content(simulated: Simulated) -> None:
    bundle = load_bundle(simulated.bundle_dir)
    with DecisionLog(simulated.path) as log:
        assert log.count() == log.count("outcomes") == 2 * CUSTOMERS * WEEKS
        models = log.models()
        assert models["random-sim"] == simulation_model_record(RandomPolicy(SCENARIO), SCENARIO)
        assert models[bundle.model_id] == ModelRecord.from_bundle(bundle)
        assert [(a.model_id, a.reason, a.learning_mode) for a in log.activations()] == [
            ("random-sim", "simulation", "online"),
            (bundle.model_id, "simulation", "online"),
        ]
        event_ids = [f"sim-11-{c}-w{w}" for c in (0, 7, CUSTOMERS - 1) for w in range(WEEKS)]
        decisions = log.get_decisions(event_ids)
        outcomes = log.get_outcomes(event_ids)
    assert sorted(decisions) == sorted(event_ids)
    for event_id, d in decisions.items():
        week = int(event_id.rsplit("-w", 1)[1])
        assert d.customer_id == event_id.rsplit("-w", 1)[0]
        assert d.decided_at_us == DEFAULT_START_US + week * WEEK_US
        assert outcomes[event_id].reported_at_us == d.decided_at_us + WEEK_US
        assert d.probabilities is not None and d.eligible[d.action_index]
        assert d.propensity == d.probabilities[d.action_index] == d.policy_propensity
        np.testing.assert_allclose(d.probabilities[d.eligible].sum(), 1.0)
        assert not d.probabilities[~d.eligible].any()
        assert d.explored == (d.propensity < d.probabilities.max())
        assert d.baseline_action_index is None
        assert len(d.features) == len(observation_feature_names(SCENARIO))


def test_thompson_sampling_logs_the_distribution_it_drew_from(tmp_path: Path) -> None:
    with DecisionLog(tmp_path / "log.db") as log:
        simulate_to_log(LinTSPolicy(SCENARIO, seed=0), SCENARIO, log, customers=50, weeks=2, seed=3)
        decisions = log.get_decisions([f"sim-3-{c}-w{w}" for c in range(50) for w in range(2)])
    assert len(decisions) == 100
    for d in decisions.values():
        assert d.probabilities is not None
        assert d.propensity == d.probabilities[d.action_index] > 0


def test_simulation_without_probabilities(tmp_path: Path) -> None:
    with DecisionLog(tmp_path / "log.db") as log:
        summary = simulate_to_log(
            RandomPolicy(SCENARIO),
            SCENARIO,
            log,
            customers=20,
            weeks=1,
            seed=None,
            probabilities=False,
        )
        assert summary.decisions == log.count() == 20
        stored = log.get_decisions([f"sim-{summary.seed}-{c}-w0" for c in range(20)])
    assert len(stored) == 20
    assert all(d.probabilities is None for d in stored.values())
    export_parquet(tmp_path / "log.db", tmp_path / "out", now_us=DEFAULT_START_US + 30 * DAY_US)
    assert read_export(tmp_path / "out").column("probabilities").null_count == 20


OTHER_FEATURES = replace(
    simulation_model_record(RandomPolicy(SCENARIO), SCENARIO), feature_names=["x"]
)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"customers": 0}, "customers must be >= 1"),
        ({"weeks": 0}, r"weeks must be in \[1, 4\]"),
        ({"weeks": WEEKS + 1}, r"weeks must be in \[1, 4\] \(the scenario's horizon\)"),
        ({"seed": 11}, "already holds a simulation with seed 11"),
        ({"model": OTHER_FEATURES}, "features that differ from the observation of scenario"),
        (
            {
                "model": replace(
                    OTHER_FEATURES,
                    feature_names=observation_feature_names(SCENARIO),
                    action_names=["no_contact"],
                )
            },
            "actions that differ",
        ),
    ],
)
def test_simulation_refuses_bad_arguments_and_writes_nothing(
    simulated: Simulated, tmp_path: Path, kwargs: dict, message: str
) -> None:
    path = tmp_path / "log.db"
    path.write_bytes(simulated.path.read_bytes())
    arguments = {"customers": 10, "weeks": 2, "seed": 99, **kwargs}
    with DecisionLog(path) as log, pytest.raises(ValueError, match=message):
        simulate_to_log(RandomPolicy(SCENARIO), SCENARIO, log, **arguments)
    with DecisionLog(path) as log:
        assert log.count() == 2 * CUSTOMERS * WEEKS and len(log.activations()) == 2


def test_simulation_refuses_a_model_id_recorded_with_other_features(tmp_path: Path) -> None:
    other = SCENARIO.with_overrides({"attributes": {}})  # no attribute features
    with DecisionLog(tmp_path / "log.db") as log:
        simulate_to_log(RandomPolicy(other), other, log, customers=5, weeks=1, seed=1)
        with pytest.raises(ValueError, match="already records 'random-sim' with other features"):
            simulate_to_log(RandomPolicy(SCENARIO), SCENARIO, log, customers=5, weeks=1, seed=2)
        assert log.count() == 5


# --------------------------------------------------------------------------- export
def test_export_has_one_row_per_decision_with_the_logged_values(
    simulated: Simulated, exported: pa.Table
) -> None:
    assert exported.num_rows == 2 * CUSTOMERS * WEEKS
    assert exported.schema.remove_metadata() == EXPORT_SCHEMA
    rows = exported.to_pylist()
    assert len({r["event_id"] for r in rows}) == len(rows)
    with DecisionLog(simulated.path) as log:
        stored = log.get_decisions([r["event_id"] for r in rows])
        outcomes = log.get_outcomes([r["event_id"] for r in rows])
        models = log.models()
    for r in rows:
        d, o = stored[r["event_id"]], outcomes[r["event_id"]]
        assert r["customer_id"] == d.customer_id
        assert r["propensity"] == d.propensity and r["policy_propensity"] == d.policy_propensity
        assert r["action_index"] == d.action_index == r["policy_action_index"]
        assert r["action_name"] == models[r["model_id"]].action_names[d.action_index]
        assert r["model_version"] == models[r["model_id"]].model_version
        assert r["decided_at"].timestamp() * 1_000_000 == d.decided_at_us
        assert r["date"] == r["decided_at"].date().isoformat()
        assert r["explored"] == d.explored and r["baseline_action_index"] is None
        assert r["features"] == d.features.tolist()
        assert r["eligible"] == d.eligible.tolist()
        assert d.probabilities is not None and r["probabilities"] == d.probabilities.tolist()
        assert (r["learning_mode"], r["exploration"], r["exploration_param"]) == (
            "online",
            "policy",
            0.0,
        )
        assert r["outcome_status"] == "reported"
        assert (r["reward"], r["purchase"], r["spend"], r["opt_out"]) == (
            o.reward,
            o.purchase,
            o.spend,
            o.opt_out,
        )
        assert r["reported_at"].timestamp() * 1_000_000 == o.reported_at_us


def test_export_partitions_by_date_and_describes_the_models(
    simulated: Simulated, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    summary = export_parquet(simulated.path, out, now_us=DEFAULT_START_US + 60 * DAY_US)
    dates = ["2026-01-05", "2026-01-12", "2026-01-19", "2026-01-26"]
    assert summary.partitions == dates
    assert (summary.rows, summary.with_outcome, summary.defaulted) == (
        2 * CUSTOMERS * WEEKS,
    ) * 2 + (0,)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"date={d}" for d in dates] + [MODELS_FILE]
    )
    for d in dates:
        assert [p.name for p in (out / f"date={d}").iterdir()] == ["part-0.parquet"]
    table = read_export(out)
    counts = dict(zip(*np.unique(table.column("date").to_numpy(), return_counts=True), strict=True))
    assert counts == dict.fromkeys(dates, 2 * CUSTOMERS)
    with DecisionLog(simulated.path) as log:
        expected = {
            m.model_id: {
                "feature_names": m.feature_names,
                "action_names": m.action_names,
                "kind": m.kind,
                "version": m.model_version,
            }
            for m in log.models().values()
        }
    assert json.loads((out / MODELS_FILE).read_text()) == expected == read_models(out)
    assert json.loads(table.schema.metadata[MODELS_METADATA_KEY]) == expected
    in_file = pq.read_schema(out / f"date={dates[0]}" / "part-0.parquet").metadata
    assert json.loads(in_file[MODELS_METADATA_KEY]) == expected


def test_export_directory_opens_with_standard_parquet_readers(
    simulated: Simulated, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    summary = export_parquet(simulated.path, out, now_us=DEFAULT_START_US + 60 * DAY_US)
    assert (out / MODELS_FILE).is_file() and MODELS_FILE.startswith("_")
    dataset = ds.dataset(out, partitioning="hive")
    assert sorted(Path(f).parent.name for f in dataset.files) == [
        f"date={d}" for d in summary.partitions
    ]
    assert dataset.count_rows() == summary.rows
    table = pq.read_table(out)
    assert table.num_rows == summary.rows
    assert sorted(table.column("event_id").to_pylist()) == sorted(
        read_export(out).column("event_id").to_pylist()
    )
    assert json.loads(table.schema.metadata[MODELS_METADATA_KEY]) == read_models(out)
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_parquet(out)
    assert len(frame) == summary.rows and frame["event_id"].is_unique


def test_an_earlier_exports_models_json_is_read_and_replaced(
    simulated: Simulated, status_log: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    export_parquet(status_log, out, now_us=NOW, outcome_window_s=0)
    (out / MODELS_FILE).rename(out / LEGACY_MODELS_FILE)  # as an earlier version wrote it
    assert list(read_models(out)) == ["a-1", "b-2"]
    assert read_export(out).num_rows == 4
    export_parquet(simulated.path, out, now_us=NOW)
    assert not (out / LEGACY_MODELS_FILE).exists()
    assert set(read_models(out)) == {"a-1", "b-2", *load_ids(simulated.path)}
    assert ds.dataset(out, partitioning="hive").count_rows() == 4 + 2 * CUSTOMERS * WEEKS


def test_small_chunks_give_the_same_export(simulated: Simulated, tmp_path: Path) -> None:
    now = DEFAULT_START_US + 60 * DAY_US
    export_parquet(simulated.path, tmp_path / "big", now_us=now)
    export_parquet(simulated.path, tmp_path / "small", now_us=now, chunk_rows=37)
    assert read_export(tmp_path / "small").equals(read_export(tmp_path / "big"))


def test_export_does_not_modify_the_log(simulated: Simulated, tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    path.write_bytes(simulated.path.read_bytes())
    before = file_digest(path)
    with DecisionLog(path) as live:  # an open writer, as a running service holds
        export_parquet(path, tmp_path / "out", now_us=DEFAULT_START_US)
        assert live.count() == 2 * CUSTOMERS * WEEKS
    assert file_digest(path) == before


# --------------------------------------------------------------------------- outcome status
NOW = DEFAULT_START_US + 30 * DAY_US
WINDOW_S = 7 * 86_400


@pytest.fixture
def status_log(tmp_path: Path) -> Path:
    """reported (old), default (old, no outcome), pending (1 day old) and boundary (exactly
    one window old) decisions of two models with different feature counts."""
    path = tmp_path / "status.db"
    old = NOW - 10 * DAY_US
    with DecisionLog(path) as log:
        decide(log, MODEL_A, ["reported", "default"], [old, old])
        decide(log, MODEL_B, ["pending", "boundary"], [NOW - DAY_US, NOW - WINDOW_S * 1_000_000])
        log.record_outcomes([OutcomeRecord("reported", 3.0, True, 12.5, False, old + DAY_US)])
    return path


def by_event(table: pa.Table) -> dict[str, dict]:
    return {r["event_id"]: r for r in table.to_pylist()}


def test_outcome_status_with_a_fixed_now(status_log: Path, tmp_path: Path) -> None:
    summary = export_parquet(
        status_log, tmp_path / "out", now_us=NOW, outcome_window_s=WINDOW_S, default_reward=-0.5
    )
    assert (summary.rows, summary.with_outcome, summary.defaulted) == (2, 1, 1)
    assert (summary.pending, summary.pending_skipped) == (2, 2)
    rows = by_event(read_export(tmp_path / "out"))
    assert sorted(rows) == ["default", "reported"]
    reported, default = rows["reported"], rows["default"]
    assert reported["outcome_status"] == "reported"
    assert (reported["reward"], reported["purchase"], reported["spend"]) == (3.0, True, 12.5)
    assert default["outcome_status"] == "default" and default["reward"] == -0.5
    assert default["purchase"] is default["spend"] is default["opt_out"] is None
    assert default["reported_at"] is None
    assert (reported["learning_mode"], reported["exploration"]) == ("apprentice", "epsilon")
    assert reported["exploration_param"] == 0.25 and reported["baseline_action_index"] == 1
    assert reported["action_name"] == "x" and reported["probabilities"] is None


def test_include_pending_and_list_lengths_per_model(status_log: Path, tmp_path: Path) -> None:
    summary = export_parquet(
        status_log, tmp_path / "out", now_us=NOW, outcome_window_s=WINDOW_S, include_pending=True
    )
    assert (summary.rows, summary.pending, summary.pending_skipped) == (4, 2, 0)
    rows = by_event(read_export(tmp_path / "out"))
    for name in ("pending", "boundary"):  # decided_at + window == now is not yet past
        assert rows[name]["outcome_status"] == "pending" and rows[name]["reward"] is None
    assert rows["default"]["reward"] == 0.0
    assert [len(rows[e]["features"]) for e in ("reported", "pending")] == [3, 5]
    assert [len(rows[e]["eligible"]) for e in ("reported", "pending")] == [3, 2]
    assert rows["pending"]["features"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert rows["pending"]["action_name"] == "z" and rows["pending"]["model_version"] == "2"


def test_zero_window_defaults_every_missing_outcome(status_log: Path, tmp_path: Path) -> None:
    summary = export_parquet(status_log, tmp_path / "out", now_us=NOW, outcome_window_s=0)
    assert (summary.rows, summary.defaulted, summary.pending) == (4, 3, 0)


def test_re_export_replaces_the_partitions_it_writes(status_log: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_parquet(status_log, out, now_us=NOW, outcome_window_s=WINDOW_S, include_pending=True)
    with DecisionLog(status_log) as log:
        log.record_outcomes([OutcomeRecord("pending", 1.0), OutcomeRecord("boundary", 2.0)])
    export_parquet(status_log, out, now_us=NOW, outcome_window_s=WINDOW_S)
    rows = by_event(read_export(out))
    assert len(rows) == 4  # replaced, not appended
    assert {r["outcome_status"] for e, r in rows.items() if e != "default"} == {"reported"}
    assert (rows["pending"]["reward"], rows["boundary"]["reward"]) == (1.0, 2.0)


def test_export_into_a_directory_with_other_dates_keeps_them(
    simulated: Simulated, status_log: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = export_parquet(simulated.path, out, now_us=NOW)
    second = export_parquet(status_log, out, now_us=NOW, outcome_window_s=0)
    assert not set(first.partitions) & set(second.partitions)
    table = read_export(out)
    assert table.num_rows == first.rows + second.rows
    assert set(read_models(out)) == {"random-sim", "a-1", "b-2", *load_ids(simulated.path)}


def test_shards_of_several_logs_read_back_as_one_dataset(tmp_path: Path) -> None:
    """One log per replica, each exported as its shard into one directory: the shards' rows
    of a date sit side by side, and re-exporting a shard replaces its own files only."""
    old = NOW - 10 * DAY_US
    logs = {"r0": tmp_path / "r0.db", "r1": tmp_path / "r1.db"}
    with DecisionLog(logs["r0"]) as log:
        decide(log, MODEL_A, ["r0-a", "r0-b"], [old, old + 1])
    with DecisionLog(logs["r1"]) as log:
        decide(log, MODEL_A, ["r1-a", "r1-b"], [old + 2, old - DAY_US])
        decide(log, MODEL_B, ["r1-c"], [old + 3])
    out = tmp_path / "out"

    def export(log: Path, out: Path, shard: str | None = None) -> ExportSummary:
        return export_parquet(log, out, now_us=NOW, outcome_window_s=WINDOW_S, shard=shard)

    # Without shards the second log's export replaces the first's partition of that date.
    export(logs["r0"], out)
    export(logs["r1"], out)
    assert sorted(by_event(read_export(out))) == ["r1-a", "r1-b", "r1-c"]

    shared = tmp_path / "shared"
    summaries = {name: export(path, shared, name) for name, path in logs.items()}
    assert [s.rows for s in summaries.values()] == [2, 3]
    day = summaries["r0"].partitions[0]
    assert sorted(p.name for p in (shared / f"date={day}").iterdir()) == [
        "part-r0-0.parquet",
        "part-r1-0.parquet",
    ]
    expected = ["r0-a", "r0-b", "r1-a", "r1-b", "r1-c"]
    rows = by_event(read_export(shared))
    assert sorted(rows) == expected
    assert {rows[e]["model_id"] for e in expected} == {"a-1", "b-2"}
    assert set(read_models(shared)) == {"a-1", "b-2"}
    # A standard reader sees the same one dataset.
    table = ds.dataset(shared, format="parquet", partitioning="hive").to_table()
    assert sorted(table.column("event_id").to_pylist()) == expected

    # Re-exporting shard r0 (an outcome came) replaces r0's rows, and only them; a stale file
    # of r0 (an earlier export's extra file) goes, r1's files stay.
    (shared / f"date={day}" / "part-r0-0.parquet").rename(
        shared / f"date={day}" / "part-r0-7.parquet"
    )
    with DecisionLog(logs["r0"]) as log:
        log.record_outcomes([OutcomeRecord("r0-a", 5.0)])
    export(logs["r0"], shared, "r0")
    rows = by_event(read_export(shared))
    assert sorted(rows) == expected  # nothing doubled, nothing lost
    assert rows["r0-a"]["reward"] == 5.0 and rows["r0-a"]["outcome_status"] == "reported"
    assert not (shared / f"date={day}" / "part-r0-7.parquet").exists()


@pytest.mark.parametrize("shard", ["", "_r0", ".r0", "r/0", "r 0", "x" * 65])
def test_export_refuses_a_bad_shard_name(status_log: Path, tmp_path: Path, shard: str) -> None:
    with pytest.raises(ValueError, match="is not a shard name"):
        export_parquet(status_log, tmp_path / "out", shard=shard)
    assert not (tmp_path / "out").exists()


def load_ids(path: Path) -> list[str]:
    with DecisionLog(path) as log:
        return list(log.models())


# --------------------------------------------------------------------------- errors
def test_export_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.db: decision log not found"):
        export_parquet(tmp_path / "missing.db", tmp_path / "out")
    text = tmp_path / "text.db"
    text.write_text("not sqlite at all\n" * 100)
    with pytest.raises(DecisionLogError, match=r"text\.db: not a decision log"):
        export_parquet(text, tmp_path / "out")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    db.close()
    with pytest.raises(DecisionLogError, match=r"other\.db: not a decision log"):
        export_parquet(other, tmp_path / "out")
    DecisionLog(tmp_path / "ok.db").close()
    for kwargs, message in (
        ({"outcome_window_s": -1.0}, "outcome_window_s must be finite and >= 0"),
        ({"outcome_window_s": float("nan")}, "outcome_window_s must be finite"),
        ({"default_reward": float("inf")}, "default_reward must be finite"),
        ({"chunk_rows": 0}, "chunk_rows must be >= 1"),
    ):
        with pytest.raises(ValueError, match=message):
            export_parquet(tmp_path / "ok.db", tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_empty_log_exports_nothing_but_models(tmp_path: Path) -> None:
    with DecisionLog(tmp_path / "log.db") as log:
        log.activate(
            MODEL_A,
            learning_mode="online",
            exploration="policy",
            exploration_param=0,
            reason="start",
        )
    summary = export_parquet(tmp_path / "log.db", tmp_path / "out")
    assert (summary.rows, summary.partitions) == (0, [])
    table = read_export(tmp_path / "out")
    assert table.num_rows == 0 and table.schema.remove_metadata() == EXPORT_SCHEMA
    assert list(read_models(tmp_path / "out")) == ["a-1"]


# --------------------------------------------------------------------------- CLI
def test_cli_simulate_and_export(
    simulated: Simulated, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "cli.db"
    common = ["--log", str(log), "--customers", "30", "--weeks", "2"]
    assert main(["logs", "simulate", "--policy", "random", *common, "--seed", "5"]) == 0
    assert "logged 60 decisions and 60 outcomes of random-sim (seed 5" in capsys.readouterr().out
    assert main(["logs", "simulate", "--bundle", str(simulated.bundle_dir), *common]) == 0
    assert "logged 60 decisions" in capsys.readouterr().out
    bundle = load_bundle(simulated.bundle_dir)
    with DecisionLog(log) as opened:
        assert set(opened.models()) == {"random-sim", bundle.model_id}
        assert opened.count() == 120

    out = tmp_path / "out"
    assert main(["logs", "export", "--log", str(log), "--out", str(out)]) == 0
    line = capsys.readouterr().out
    # Simulated weeks are in January 2026, long past the 7-day window: all outcomes reported.
    assert line.startswith(f"exported 120 decisions to {out}: 120 reported, 0 defaulted")
    assert "2 partitions (2026-01-05 .. 2026-01-12)" in line
    assert read_export(out).num_rows == 120
    assert (
        main(
            [
                "logs",
                "export",
                "--log",
                str(log),
                "--out",
                str(out),
                "--include-pending",
                "--outcome-window-days",
                "0.5",
                "--default-reward",
                "-1",
            ]
        )
        == 0
    )
    assert "exported 120 decisions" in capsys.readouterr().out
    # Two logs as two shards of one dataset.
    shared = tmp_path / "shared"
    for shard in ("r0", "r1"):
        argv = ["logs", "export", "--log", str(log), "--out", str(shared), "--shard", shard]
        assert main(argv) == 0
        assert "exported 120 decisions" in capsys.readouterr().out
    assert sorted(p.name for p in shared.glob("date=2026-01-05/*")) == [
        "part-r0-0.parquet",
        "part-r1-0.parquet",
    ]
    assert read_export(shared).num_rows == 240  # the same log twice: each decision twice


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["logs", "export", "--log", "{tmp}/missing.db", "--out", "{tmp}/o"], "--log: "),
        (["logs", "export", "--log", "{tmp}/text.db", "--out", "{tmp}/o"], "not a decision log"),
        (
            ["logs", "export", "--log", "{tmp}/text.db", "--out", "{tmp}/o", "--shard", "_r"],
            "--shard: '_r' is not a shard name",
        ),
        (["logs", "simulate", "--log", "{tmp}/l.db", "--policy", "nope"], "--policy: unknown"),
        (
            ["logs", "simulate", "--log", "{tmp}/l.db", "--policy", "random", "--weeks", "53"],
            "--weeks: at most the scenario's horizon of 52",
        ),
        (
            ["logs", "simulate", "--log", "{tmp}/text.db", "--policy", "random", "--weeks", "1"],
            "--log: ",
        ),
        (
            ["logs", "simulate", "--log", "{tmp}/l.db", "--bundle", "{tmp}/no-bundle"],
            "bundle directory does not exist",
        ),
    ],
)
def test_cli_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    (tmp_path / "text.db").write_text("plain text\n" * 100)
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_cli_refuses_a_repeated_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "logs",
        "simulate",
        "--log",
        str(tmp_path / "l.db"),
        "--policy",
        "no_contact",
        "--customers",
        "5",
        "--weeks",
        "1",
        "--seed",
        "4",
    ]
    assert main(argv) == 0
    assert main(argv) == 2
    assert "already holds a simulation with seed 4" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["logs", "simulate", "--log", "l.db", "--policy", "random", "--bundle", "b"],
        ["logs", "simulate", "--log", "l.db"],
        ["logs", "export", "--log", "l.db", "--out", "o", "--outcome-window-days", "-1"],
        ["logs", "export", "--log", "l.db", "--out", "o", "--default-reward", "nan"],
        ["logs"],
    ],
)
def test_cli_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err
