"""Retention: ``cvm logs prune`` drops only decisions a recorded export holds with their final
outcome, with their outcomes and unshared requests, in short transactions beside a live
writer."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from log_fixtures import MODEL_A, decide

from cvm_rl.cli import main
from cvm_rl.logs.export import export_parquet
from cvm_rl.logs.records import ModelRecord, OutcomeRecord
from cvm_rl.logs.retention import PruneRefused, parse_date, prune_log
from cvm_rl.logs.store import DecisionLog

T0 = 1_736_035_200_000_000  # 2025-01-05 00:00 UTC
HOUR = 3_600_000_000
DAY = 24 * HOUR
BEFORE = parse_date("2025-01-06")
TABLES = ("decisions", "outcomes", "requests")


def counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        found = {t: int(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in TABLES}
    db.close()
    return found


def event_ids(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        ids = {r[0] for r in db.execute("SELECT event_id FROM decisions")}
    db.close()
    return ids


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    """Four requests: A (a0, a1) on 2025-01-05; B (b0 on the 5th, b1 on the 6th) shared
    across the date; C (c0, c1) on the 6th; D (d0) on the 7th. Outcomes for a0, b0, c0."""
    path = tmp_path / "log.db"
    with DecisionLog(path) as log:
        decide(log, MODEL_A, ["a0", "a1"], [T0 + HOUR, T0 + 2 * HOUR])
        decide(log, MODEL_A, ["b0", "b1"], [T0 + 23 * HOUR, T0 + DAY + HOUR])
        decide(log, MODEL_A, ["c0", "c1"], [T0 + DAY + 2 * HOUR, T0 + DAY + 3 * HOUR])
        decide(log, MODEL_A, ["d0"], [T0 + 2 * DAY])
        log.record_outcomes(
            [OutcomeRecord(e, 1.0, reported_at_us=T0 + 3 * HOUR) for e in ("a0", "b0", "c0")]
        )
    return path


def export(path: Path, out: Path, now_us: int = T0 + 30 * DAY) -> None:
    export_parquet(path, out, now_us=now_us, record=True)


def test_prune_refuses_before_any_export(log_path: Path, tmp_path: Path) -> None:
    before = counts(log_path)
    with pytest.raises(PruneRefused, match=r"--before 2025-01-06: .* records no export"):
        prune_log(log_path, BEFORE)
    export_parquet(log_path, tmp_path / "out", now_us=T0 + 30 * DAY)  # not recorded
    with pytest.raises(PruneRefused, match="records no export"):
        prune_log(log_path, BEFORE)
    assert counts(log_path) == before


def test_prune_refuses_a_date_past_the_final_outcomes(log_path: Path, tmp_path: Path) -> None:
    # Exported 3 days after T0 with a 7-day window: no decision's outcome was final yet.
    export(log_path, tmp_path / "out", now_us=T0 + 3 * DAY)
    before = counts(log_path)
    latest = r"--before 2025-01-06: .* prune --before 2025-01-01 at the latest"
    with pytest.raises(PruneRefused, match=latest):
        prune_log(log_path, BEFORE)
    assert counts(log_path) == before


def test_prune_after_export_removes_exactly_the_rows_before_the_date(
    log_path: Path, tmp_path: Path
) -> None:
    export(log_path, tmp_path / "out")
    assert counts(log_path) == {"decisions": 7, "outcomes": 3, "requests": 4}
    summary = prune_log(log_path, BEFORE)
    # a0, a1, b0 and the outcomes of a0 and b0 go; request A goes, B stays (b1 uses it).
    assert (summary.counts.decisions, summary.counts.outcomes, summary.counts.requests) == (3, 2, 1)
    assert counts(log_path) == {"decisions": 4, "outcomes": 1, "requests": 3}
    assert event_ids(log_path) == {"b1", "c0", "c1", "d0"}
    with DecisionLog(log_path) as log:
        kept = log.get_decisions(["b1", "c0"])  # the kept rows still read their matrices
        assert kept["b1"].features.tolist() == [3.0, 4.0, 5.0]
        assert set(log.get_outcomes(["a0", "b0", "c0"])) == {"c0"}
    assert summary.bytes_after <= summary.bytes_before
    assert any(
        "pruned decisions before 2025-01-06T00:00:00Z: 3 decisions" in s for s in summary.lines()
    )
    again = prune_log(log_path, BEFORE)  # nothing left to do
    assert (again.counts.decisions, again.counts.outcomes, again.counts.requests) == (0, 0, 0)


def test_a_dry_run_changes_nothing(log_path: Path, tmp_path: Path) -> None:
    export(log_path, tmp_path / "out")
    before = counts(log_path)
    dry = prune_log(log_path, BEFORE, dry_run=True)
    assert counts(log_path) == before
    assert dry.lines()[0].startswith("would prune decisions before 2025-01-06T00:00:00Z: 3 ")
    real = prune_log(log_path, BEFORE)
    assert dry.counts == real.counts


def test_an_outcome_after_the_export_blocks_the_prune_until_exported(
    log_path: Path, tmp_path: Path
) -> None:
    export(log_path, tmp_path / "out")
    with DecisionLog(log_path) as log:
        log.record_outcomes([OutcomeRecord("a1", 2.0, reported_at_us=T0 + 4 * HOUR)])
    before = counts(log_path)
    with pytest.raises(PruneRefused, match="1 decisions before that date got their outcome"):
        prune_log(log_path, BEFORE)
    assert counts(log_path) == before
    export(log_path, tmp_path / "out")
    summary = prune_log(log_path, BEFORE)
    assert (summary.counts.decisions, summary.counts.outcomes) == (3, 3)


def test_only_decisions_of_the_exported_snapshot_are_pruned(log_path: Path, tmp_path: Path) -> None:
    export(log_path, tmp_path / "out")
    with DecisionLog(log_path) as log:  # logged after the export, with an old time
        decide(log, MODEL_A, ["late"], [T0 + 5 * HOUR])
    prune_log(log_path, BEFORE)
    assert event_ids(log_path) == {"late", "b1", "c0", "c1", "d0"}


def test_the_newest_decision_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    with DecisionLog(path) as log:
        decide(log, MODEL_A, ["x0", "x1"], [T0, T0 + 1])
    export(path, tmp_path / "out")
    summary = prune_log(path, BEFORE)
    assert summary.counts.decisions == 1
    assert event_ids(path) == {"x1"}  # SQLite would reuse the newest seq


def test_a_prune_beside_a_live_writer_loses_nothing(tmp_path: Path) -> None:
    """A writer keeps logging decisions and outcomes on another connection while the prune
    runs in batches of 7: every write lands, and exactly the old decisions go."""
    path = tmp_path / "log.db"
    with DecisionLog(path) as log:
        for r in range(60):
            ids = [f"old-{r}-{i}" for i in range(10)]
            decide(log, MODEL_A, ids, [T0 + r * 60_000_000 + i for i in range(10)])
            log.record_outcomes([OutcomeRecord(ids[0], 1.0, reported_at_us=T0 + DAY)])
    export(path, tmp_path / "out")

    written: list[str] = []
    started, stop = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with DecisionLog(path, busy_timeout_ms=30_000) as live:
                n = 0
                while not stop.is_set() or n < 5:
                    ids = [f"new-{n}-{i}" for i in range(5)]
                    decide(live, MODEL_A, ids, [T0 + 10 * DAY + n] * 5)
                    live.record_outcomes([OutcomeRecord(ids[0], 0.5)])
                    written.extend(ids)
                    n += 1
                    started.set()
        except BaseException as exc:
            errors.append(exc)
            started.set()

    thread = threading.Thread(target=writer)
    thread.start()
    started.wait(30)
    during = len(written)
    summary = prune_log(path, BEFORE, batch_rows=7, pause_s=0.001)
    assert len(written) > during  # the writer got in between the prune's batches
    stop.set()
    thread.join(60)
    assert not errors, errors
    assert (summary.counts.decisions, summary.counts.outcomes, summary.counts.requests) == (
        600,
        60,
        60,
    )
    assert event_ids(path) == set(written)
    n_requests = len(written) // 5
    assert counts(path) == {
        "decisions": len(written),
        "outcomes": n_requests,
        "requests": n_requests,
    }
    with DecisionLog(path) as log:
        assert len(log.get_decisions(written)) == len(written)


WIDE = ModelRecord("w-1", "1", "random", "", [f"f{i}" for i in range(400)], ["no", "x"])


@pytest.mark.parametrize("incremental", [True, False])
def test_space_is_returned_or_reported(tmp_path: Path, incremental: bool) -> None:
    path = tmp_path / "log.db"
    if incremental:
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        db.close()
    with DecisionLog(path) as log:
        for r in range(40):
            decide(log, WIDE, [f"e{r}-{i}" for i in range(10)], [T0 + r] * 10)
        decide(log, WIDE, ["keep"], [T0 + 3 * DAY])
    export(path, tmp_path / "out")
    summary = prune_log(path, BEFORE)
    assert summary.counts.decisions == 400
    assert summary.bytes_after < summary.bytes_before / 4
    assert summary.incremental_vacuum is incremental
    if incremental:
        assert summary.free_bytes == 0
        assert path.stat().st_size < summary.bytes_before / 2
    else:
        assert summary.free_bytes > 400 * 400 * 4
        assert any("VACUUM" in line for line in summary.lines())


def test_cli_export_then_prune(
    log_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prune = ["logs", "prune", "--log", str(log_path), "--before", "2025-01-06"]
    assert main(prune) == 2
    assert capsys.readouterr().err.startswith("error: --before 2025-01-06: ")
    assert main(["logs", "export", "--log", str(log_path), "--out", str(tmp_path / "o")]) == 0
    assert "recorded as export 1" in capsys.readouterr().out
    assert main([*prune, "--dry-run"]) == 0
    assert "would prune" in capsys.readouterr().out
    assert counts(log_path)["decisions"] == 7
    assert main(prune) == 0
    out = capsys.readouterr().out
    assert (
        "pruned decisions before 2025-01-06T00:00:00Z: 3 decisions, 2 outcomes, 1 requests" in out
    )
    assert "bytes before" in out
    assert counts(log_path) == {"decisions": 4, "outcomes": 1, "requests": 3}
    assert (
        main(["logs", "prune", "--log", str(tmp_path / "none.db"), "--before", "2025-01-06"]) == 2
    )
    assert "error: --log: " in capsys.readouterr().err


@pytest.mark.parametrize("date", ["2025-13-01", "yesterday", "2025-01-06T00:00", "20250106", ""])
def test_bad_dates_name_the_option(
    date: str, log_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["logs", "prune", "--log", str(log_path), "--before", date])
    assert exit_info.value.code == 2
    assert f"argument --before: expected a UTC date YYYY-MM-DD, got {date!r}" in (
        capsys.readouterr().err
    )


def test_parse_date() -> None:
    assert parse_date("2025-01-05") == T0
    assert np.int64(parse_date("1970-01-01")) == 0
