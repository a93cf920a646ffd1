"""Retention of a decision log: drop old decisions, but only those an export holds with their
final outcome.

The rule, enforced by :func:`prune_log` (``cvm logs prune --log DB --before DATE``):

- An export records itself (``cvm logs export``; :func:`~cvm_rl.logs.export.export_parquet`
  with ``record=True``) in the log's ``exports`` table, with what its snapshot held: the
  highest ``decisions.seq``, the latest ``outcomes.received_at_us``, and ``final_before_us``,
  the time before which every decision had its final outcome status (``reported``, or
  ``default`` once the outcome window had passed): now minus the outcome window. Pending
  decisions (window still open) are never final.
- ``--before DATE`` (a UTC date: whole days, as the export's ``date=`` partitions are) is
  refused unless one recorded export has ``final_before_us >= DATE``. That export *covers*
  the decisions with ``seq <= max_seq`` decided before DATE; only those are deleted, with
  their outcomes and the requests (matrices) no kept decision shares. Decisions logged after
  that export (``seq > max_seq``) are never examined, whatever their time.
- An outcome stored after the covering export (``received_at_us`` later than the export's
  latest one: the store stamps it while holding the write lock, so the stamps follow the
  commit order, as long as the clock does not step back) is not in that export. A prune that
  finds one before DATE refuses, so the day can be exported again whole; one arriving while
  the prune runs keeps its decision (reported as ``kept``).
- The newest decision of the log is never deleted (SQLite would hand its ``seq`` out again).

Safe against a live server: the log is in WAL mode, a plan pass reads without any lock, and
the deletes run in short write transactions of at most ``batch_rows`` decisions each (the
lock is released between batches, and each batch re-checks its rows inside its transaction).
Space: with ``auto_vacuum = INCREMENTAL`` the freed pages are returned to the file system in
steps (``PRAGMA incremental_vacuum``); otherwise they stay in the file as free pages that new
decisions reuse (the file stops growing), and :class:`PruneSummary` says how much an offline
``VACUUM`` would give back.

After a prune, a decision's event id is unknown to the log: a late ``ReportOutcome`` for it is
``NOT_FOUND`` and a replay of it decides anew.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvm_rl.logs.reader import IN_CHUNK
from cvm_rl.logs.records import DecisionLogError
from cvm_rl.logs.schema import now_us

BATCH_ROWS = 2_000
"""Decisions examined per prune transaction unless told otherwise."""
_VACUUM_PAGES = 1_000
"""Pages returned to the file system per ``incremental_vacuum`` step (one short transaction)."""


class PruneRefused(DecisionLogError):
    """The prune would drop decisions no export holds with their final outcome."""


@dataclass(frozen=True)
class SnapshotCoverage:
    """What an export's snapshot covers (read inside the snapshot)."""

    snapshot_us: int
    max_seq: int
    final_before_us: int
    outcomes_through_us: int


@dataclass(frozen=True)
class ExportMark:
    """A row of ``exports``."""

    id: int
    exported_at_us: int
    max_seq: int
    final_before_us: int
    outcomes_through_us: int
    rows: int
    out_dir: str

    def line(self) -> str:
        return (
            f"recorded as export {self.id} (decisions up to seq {self.max_seq}, final before "
            f"{format_us(self.final_before_us)})"
        )


def format_us(us: int) -> str:
    """A log time as ISO 8601 UTC, to the second."""
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_date(text: str) -> int:
    """``YYYY-MM-DD`` (UTC midnight) as log microseconds; ValueError saying what is expected."""
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected a UTC date YYYY-MM-DD, got {text!r}") from None
    if len(text) != 10:
        raise ValueError(f"expected a UTC date YYYY-MM-DD, got {text!r}")
    midnight = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    return int(midnight.timestamp()) * 1_000_000


def snapshot_coverage(db: sqlite3.Connection, deadline_us: int) -> SnapshotCoverage:
    """Inside an export's read transaction: its time, highest ``seq`` and latest outcome,
    and the time before which its decisions' outcome status is final (``deadline_us``: now
    minus the outcome window)."""
    max_seq = int(db.execute("SELECT coalesce(max(seq), 0) FROM decisions").fetchone()[0])
    received = db.execute("SELECT coalesce(max(received_at_us), 0) FROM outcomes").fetchone()
    return SnapshotCoverage(now_us(), max_seq, deadline_us, int(received[0]))


def record_export(
    log_path: str | Path, covered: SnapshotCoverage, rows: int, out_dir: Path
) -> ExportMark:
    """Record a finished export in the log at ``log_path`` (upgrading an older log)."""
    from cvm_rl.logs.store import DecisionLog  # the store imports numpy: only when recording

    mark = ExportMark(
        0,
        covered.snapshot_us,
        covered.max_seq,
        covered.final_before_us,
        covered.outcomes_through_us,
        rows,
        str(Path(out_dir).resolve()),
    )
    with DecisionLog(log_path) as log:
        export_id = log.record_export(dataclasses.astuple(mark)[1:])
    return dataclasses.replace(mark, id=export_id)


@dataclass
class PruneCounts:
    """Rows deleted (or, in a dry run, to delete) per table, and decisions before the date
    kept because their outcome arrived after the covering export."""

    decisions: int = 0
    outcomes: int = 0
    requests: int = 0
    late_outcomes: int = 0


@dataclass(frozen=True)
class PruneSummary:
    """What :func:`prune_log` did: the ``export`` that covered it, the rows deleted
    (``counts``), the database's size before and after (pages in use times page size, WAL
    not included) and the ``free_bytes`` left as free pages (what a ``VACUUM`` would give
    back; 0 after an incremental vacuum)."""

    before_us: int
    export: ExportMark
    counts: PruneCounts
    dry_run: bool
    bytes_before: int
    bytes_after: int
    free_bytes: int
    incremental_vacuum: bool

    def lines(self) -> list[str]:
        c = self.counts
        verb = "would prune" if self.dry_run else "pruned"
        out = [
            f"{verb} decisions before {format_us(self.before_us)}: {c.decisions} decisions, "
            f"{c.outcomes} outcomes, {c.requests} requests (covered by export {self.export.id} "
            f"to {self.export.out_dir} at {format_us(self.export.exported_at_us)})",
            f"size {self.bytes_before:,} bytes before, {self.bytes_after:,} after",
        ]
        if c.late_outcomes:
            out.append(
                f"kept {c.late_outcomes} decisions whose outcome arrived after that export "
                "(export again, then prune)"
            )
        if self.incremental_vacuum:
            out.append("freed pages returned to the file system (auto_vacuum = INCREMENTAL)")
        elif self.free_bytes:
            out.append(
                f"{self.free_bytes:,} bytes are free pages that new decisions reuse; an offline "
                "VACUUM (service stopped) would return them to the file system"
            )
        return out


def _sizes(db: sqlite3.Connection) -> tuple[int, int]:
    """(bytes in use, free bytes) of the database file."""
    page = int(db.execute("PRAGMA page_size").fetchone()[0])
    pages = int(db.execute("PRAGMA page_count").fetchone()[0])
    free = int(db.execute("PRAGMA freelist_count").fetchone()[0])
    return (pages - free) * page, free * page


def _covering_export(db: sqlite3.Connection, before_us: int, where: str) -> ExportMark:
    rows = db.execute(
        "SELECT id, exported_at_us, max_seq, final_before_us, outcomes_through_us, rows, "
        "out_dir FROM exports ORDER BY id"
    ).fetchall()
    marks = [ExportMark(*r) for r in rows]
    covering = [m for m in marks if m.final_before_us >= before_us]
    if covering:
        return max(covering, key=lambda m: (m.max_seq, m.id))
    date = format_us(before_us)[:10]
    if not marks:
        raise PruneRefused(
            f"--before {date}: {where} records no export; run `cvm logs export --log {where} "
            "--out DIR` first (only exported decisions are pruned)"
        )
    best = max(marks, key=lambda m: m.final_before_us)
    latest_day = format_us(best.final_before_us)[:10]
    raise PruneRefused(
        f"--before {date}: decisions up to that date have not all been exported with their "
        f"final outcome: the exports cover decisions before {format_us(best.final_before_us)} "
        f"(export {best.id}; a decision is final once its outcome window has passed); prune "
        f"--before {latest_day} at the latest, or export again later"
    )


@dataclass
class _Scan:
    """The state of one pass over the covered decisions, in ``seq`` order."""

    before_us: int
    late_after_us: int
    top_seq: int
    counts: PruneCounts = field(default_factory=PruneCounts)
    request: int | None = None
    request_kept: bool = False
    request_pruned: bool = False

    def finish_request(self, out: list[int]) -> None:
        if self.request is not None and self.request_pruned and not self.request_kept:
            out.append(self.request)
        self.request, self.request_kept, self.request_pruned = None, False, False

    def batch(
        self, rows: Sequence[tuple[Any, ...]], last: bool
    ) -> tuple[list[int], list[str], list[int]]:
        """The decisions (seq), outcomes (event id) and requests (id) to delete of ``rows``
        (``last``: no covered decision follows)."""
        seqs: list[int] = []
        outcomes: list[str] = []
        requests: list[int] = []
        for seq, event_id, request, decided_at_us, received_at_us in rows:
            if request != self.request:
                self.finish_request(requests)
                self.request = request
            if decided_at_us >= self.before_us or seq >= self.top_seq:
                self.request_kept = True
                continue
            if received_at_us is not None and received_at_us > self.late_after_us:
                self.counts.late_outcomes += 1
                self.request_kept = True
                continue
            self.request_pruned = True
            seqs.append(seq)
            if received_at_us is not None:
                outcomes.append(event_id)
        if last:
            self.finish_request(requests)
        self.counts.decisions += len(seqs)
        self.counts.outcomes += len(outcomes)
        self.counts.requests += len(requests)
        return seqs, outcomes, requests


_SELECT_BATCH = (
    "SELECT d.seq, d.event_id, d.request, d.decided_at_us, o.received_at_us "
    "FROM decisions AS d LEFT JOIN outcomes AS o ON o.event_id = d.event_id "
    "WHERE d.seq > ? AND d.seq <= ? ORDER BY d.seq LIMIT ?"
)


def _delete_in(db: sqlite3.Connection, sql: str, keys: Sequence[Any]) -> None:
    for start in range(0, len(keys), IN_CHUNK):
        chunk = list(keys[start : start + IN_CHUNK])
        db.execute(sql.format(marks=", ".join("?" * len(chunk))), chunk)


def _pass(
    db: sqlite3.Connection,
    export: ExportMark,
    scan: _Scan,
    *,
    write: bool,
    batch_rows: int,
    pause_s: float,
) -> None:
    """One pass over the decisions ``export`` covers, ``batch_rows`` per transaction;
    ``write``: delete what :meth:`_Scan.batch` selects, in the same (write) transaction."""
    last_seq = 0
    while True:
        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            rows = db.execute(_SELECT_BATCH, (last_seq, export.max_seq, batch_rows)).fetchall()
            seqs, outcomes, requests = scan.batch(rows, last=len(rows) < batch_rows)
            if write:
                _delete_in(db, "DELETE FROM outcomes WHERE event_id IN ({marks})", outcomes)
                _delete_in(db, "DELETE FROM decisions WHERE seq IN ({marks})", seqs)
                _delete_in(db, "DELETE FROM requests WHERE id IN ({marks})", requests)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        if len(rows) < batch_rows:
            return
        last_seq = int(rows[-1][0])
        if write and pause_s > 0:
            time.sleep(pause_s)  # let the service's writers in between batches


def _incremental_vacuum(db: sqlite3.Connection, pause_s: float) -> None:
    """Return the free pages to the file system, :data:`_VACUUM_PAGES` per transaction."""
    free = int(db.execute("PRAGMA freelist_count").fetchone()[0])
    while free > 0:
        db.execute(f"PRAGMA incremental_vacuum({_VACUUM_PAGES})").fetchall()
        left = int(db.execute("PRAGMA freelist_count").fetchone()[0])
        if left >= free:  # no progress (a writer is freeing pages too): leave the rest
            return
        free = left
        if pause_s > 0:
            time.sleep(pause_s)


def prune_log(
    log_path: str | Path,
    before_us: int,
    *,
    dry_run: bool = False,
    batch_rows: int = BATCH_ROWS,
    pause_s: float = 0.002,
    busy_timeout_ms: int = 10_000,
) -> PruneSummary:
    """Delete the decisions decided before ``before_us`` that a recorded export covers (see
    the module docstring), with their outcomes and unshared requests; ``dry_run`` counts
    without deleting. Raises :class:`PruneRefused` (naming ``--before``) when no export
    covers ``before_us`` or when a decision before it got its outcome after the export,
    FileNotFoundError when the log is missing."""
    if isinstance(batch_rows, bool) or int(batch_rows) < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows!r}")
    path = Path(log_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: decision log not found")
    from cvm_rl.logs.store import DecisionLog

    DecisionLog(path).close()  # checks the log and upgrades an older one (adds ``exports``)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        export = _covering_export(db, before_us, str(path))
        top = int(db.execute("SELECT coalesce(max(seq), 0) FROM decisions").fetchone()[0])
        late_after = export.outcomes_through_us
        bytes_before, free_before = _sizes(db)

        def scan() -> _Scan:
            return _Scan(before_us=before_us, late_after_us=late_after, top_seq=top)

        plan = scan()
        _pass(db, export, plan, write=False, batch_rows=batch_rows, pause_s=0)
        if plan.counts.late_outcomes:
            raise PruneRefused(
                f"--before {format_us(before_us)[:10]}: {plan.counts.late_outcomes} decisions "
                f"before that date got their outcome after export {export.id} "
                f"({format_us(export.exported_at_us)}), so no export holds it; run `cvm logs "
                "export` again (it rewrites their days), then prune"
            )
        incremental = int(db.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2
        if dry_run:
            return PruneSummary(
                before_us,
                export,
                plan.counts,
                True,
                bytes_before,
                bytes_before,
                free_before,
                False,
            )
        done = scan()
        _pass(db, export, done, write=True, batch_rows=batch_rows, pause_s=pause_s)
        if incremental:
            _incremental_vacuum(db, pause_s)
        db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        bytes_after, free_after = _sizes(db)
        return PruneSummary(
            before_us,
            export,
            done.counts,
            False,
            bytes_before,
            bytes_after,
            free_after,
            incremental,
        )
    finally:
        db.close()
