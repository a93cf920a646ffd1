"""The decision log's schema versions: a version-1 log is upgraded when opened for writing,
read as it is (``executed_action_index`` NULL) when opened read-only, and any other version is
refused by both the store and the reader."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path

import pytest
from log_fixtures import MODEL_A, decide, downgrade_to_v1, schema_version, table_columns

from cvm_rl.logs.convert import decisions_from_log
from cvm_rl.logs.export import export_parquet, read_export
from cvm_rl.logs.reader import open_read_only
from cvm_rl.logs.records import DecisionLogError, OutcomeRecord
from cvm_rl.logs.schema import MIGRATIONS, SCHEMA_VERSION
from cvm_rl.logs.store import DecisionLog

T0 = 1_767_571_200_000_000  # 2026-01-05 00:00 UTC
NOW = T0 + 30 * 86_400_000_000


@pytest.fixture
def v1_log(tmp_path: Path) -> Path:
    """A version-1 log: four decisions of MODEL_A, outcomes for the first two."""
    path = tmp_path / "v1.db"
    with DecisionLog(path) as log:
        decide(log, MODEL_A, ["e0", "e1", "e2", "e3"], [T0, T0 + 1, T0 + 2, T0 + 3])
        log.record_outcomes([OutcomeRecord("e0", 1.0, True, 2.0, False, T0 + 10)])
        log.record_outcomes([OutcomeRecord("e1", -1.0, reported_at_us=T0 + 11)])
    downgrade_to_v1(path)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_migrations_lead_to_the_current_version() -> None:
    assert SCHEMA_VERSION == 3
    assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION))


def test_a_v1_log_is_upgraded_to_the_tables_of_a_new_log(v1_log: Path, tmp_path: Path) -> None:
    assert schema_version(v1_log) == "1"
    assert "executed_action_index" not in [c[0] for c in table_columns(v1_log, "outcomes")]
    with DecisionLog(v1_log) as log:
        # What was there is still there, the new column NULL in the old rows...
        assert log.count() == 4
        assert log.get_outcomes(["e0", "e1"]) == {
            "e0": OutcomeRecord("e0", 1.0, True, 2.0, False, T0 + 10),
            "e1": OutcomeRecord("e1", -1.0, reported_at_us=T0 + 11),
        }
        assert log.get_decisions(["e2"])["e2"].action_index == 1
        # ...and the new column is written and read back.
        assert log.record_outcomes([OutcomeRecord("e2", 0.0, executed_action_index=0)]) == (1, 0)
        assert log.get_outcomes(["e2"])["e2"].executed_action_index == 0
    assert schema_version(v1_log) == str(SCHEMA_VERSION)
    DecisionLog(tmp_path / "new.db").close()
    tables = ("meta", "models", "activations", "requests", "decisions", "outcomes", "exports")
    for table in tables:
        assert table_columns(v1_log, table) == table_columns(tmp_path / "new.db", table), table
    with DecisionLog(v1_log) as again:  # upgrading is done once
        assert again.count("outcomes") == 3


def test_concurrent_openers_upgrade_once(v1_log: Path) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def open_log() -> None:
        try:
            barrier.wait()
            DecisionLog(v1_log).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_log) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert schema_version(v1_log) == str(SCHEMA_VERSION)


def test_a_v1_log_is_read_as_it_is(v1_log: Path, tmp_path: Path) -> None:
    before = digest(v1_log)
    with open_read_only(v1_log) as reader:
        assert reader.version == 1
        outcomes = reader.outcomes(["e0", "e1", "e2"])
        assert sorted(outcomes) == ["e0", "e1"]
        assert outcomes["e0"].executed_action_index is None
        (rows,) = reader.chunks(10)
        assert rows.event_id.tolist() == ["e0", "e1", "e2", "e3"]
        assert rows.executed_action_index.tolist() == [None] * 4
    summary = export_parquet(v1_log, tmp_path / "out", now_us=NOW, outcome_window_s=0)
    assert (summary.rows, summary.with_outcome, summary.defaulted) == (4, 2, 2)
    table = read_export(tmp_path / "out")
    assert table.column("executed_action_index").null_count == 4
    converted = decisions_from_log(v1_log, now_us=NOW, outcome_window_s=0)
    assert converted.data.executed_actions.tolist() == converted.data.actions.tolist() == [1] * 4
    assert converted.data.rewards.tolist() == [1.0, -1.0, 0.0, 0.0]
    assert digest(v1_log) == before  # reading never upgrades


@pytest.mark.parametrize("version", ["0", "4", "99", "two"])
def test_other_versions_are_refused_by_the_store_and_the_reader(
    tmp_path: Path, version: str
) -> None:
    path = tmp_path / "log.db"
    DecisionLog(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
    db.close()
    before = digest(path)
    message = (
        rf"log\.db: schema_version {version}, but this cvm-rl reads {SCHEMA_VERSION} \(and 1, 2\)"
    )
    with pytest.raises(DecisionLogError, match=message):
        DecisionLog(path)
    with pytest.raises(DecisionLogError, match=message):
        open_read_only(path)
    assert digest(path) == before
    assert schema_version(path) == version


def test_a_log_without_a_version_is_refused_by_the_reader(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    DecisionLog(path).close()
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM meta")
    db.close()
    with pytest.raises(DecisionLogError, match=r"log\.db: no schema_version, but this cvm-rl"):
        open_read_only(path)
