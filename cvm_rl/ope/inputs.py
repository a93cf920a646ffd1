"""What off-policy evaluation reads, and what it refuses: the errors, reading a decision log
and checking it.

:func:`load_log` reads a log (an export directory of ``cvm logs export`` or the SQLite log
itself) into :class:`~cvm_rl.logs.arrays.LoggedDecisions`, refusing what OPE cannot use with
one line naming the column or the mismatch (:func:`check_export_table` on an export's
columns, :func:`check_decisions` on the converted rows).

Memory. Long-run estimators need every customer's trajectory in memory (padded to the longest
one), so :func:`load_log` refuses logs of more than ``max_rows`` decisions; an export past it
can still be evaluated single-step by streaming (:mod:`cvm_rl.ope.streaming`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cvm_rl.logs.arrays import LoggedDecisions

if TYPE_CHECKING:
    import pyarrow as pa

DEFAULT_MAX_ROWS = 1_000_000
"""Decisions held in memory at most (long-run estimators need them all at once)."""
MEMORY_NOTE = (
    "Long-run estimators hold every customer's trajectory in memory (customers x weeks x "
    "features, padded to the longest trajectory); logs of more decisions than max_rows are "
    "refused for them, while single-step estimates of an export can stream in record batches."
)
"""The report's note on memory (every report that ran long-run estimators or streamed)."""
NO_EXPLORATION = (
    "propensity: every logged propensity is 1: the logging policy never explored, so the log "
    "shows only what it chose; OPE cannot evaluate a different policy from it (serve with "
    "exploration, e.g. cvm serve --exploration epsilon --epsilon 0.1)"
)

Kind = Literal["export", "sqlite", "arrays"]


# --- errors ----------------------------------------------------------------------------------


class OpeInputError(ValueError):
    """Input that off-policy evaluation cannot use; the message names the column, the
    candidate or the mismatch."""


class LogInputError(OpeInputError):
    """The log cannot be evaluated against (no propensities, no exploration, nothing read)."""


class CandidateError(OpeInputError):
    """A candidate cannot be evaluated on this log (another schema, no support)."""


# --- reading the log -------------------------------------------------------------------------


@dataclass(frozen=True)
class LogSource:
    """Where the decisions came from and how rewards were completed."""

    path: str = ""
    kind: Kind = "arrays"
    reported: int | None = None  # rows with a reported outcome
    defaulted: int | None = None  # rows given the default reward (outcome window passed)
    pending: int | None = None  # rows left out: no outcome yet, inside the window
    default_reward: float | None = None
    outcome_window_days: float | None = None

    @classmethod
    def from_counts(
        cls,
        path: str | Path,
        kind: Kind,
        counts: Mapping[str, int],
        *,
        default_reward: float | None = None,
        outcome_window_days: float | None = None,
    ) -> LogSource:
        """A source whose row counts come from outcome-status ``counts`` (as
        :func:`status_counts` gives them), with how a SQLite log's rewards were completed."""
        return cls(
            str(path),
            kind,
            reported=counts.get("reported", 0),
            defaulted=counts.get("default", 0),
            pending=counts.get("pending", 0),
            default_reward=default_reward,
            outcome_window_days=outcome_window_days,
        )


@dataclass(frozen=True)
class LoadedLog:
    decisions: LoggedDecisions
    source: LogSource


def detect_log_kind(path: str | Path) -> Literal["export", "sqlite"]:
    """``"export"`` for a directory (of ``cvm logs export``), ``"sqlite"`` for a SQLite file."""
    root = Path(path)
    if root.is_dir():
        return "export"
    if not root.exists():
        raise LogInputError(f"{root}: no such file or directory")
    with root.open("rb") as fh:
        header = fh.read(16)
    if header == b"SQLite format 3\x00":
        return "sqlite"
    raise LogInputError(
        f"{root}: neither a decision log (SQLite file) nor an export directory of `cvm logs export`"
    )


def count_export_rows(path: str | Path) -> int:
    """Rows of an export (from the Parquet metadata: nothing is decoded)."""
    return int(export_dataset(path).count_rows())


def load_log(
    path: str | Path,
    *,
    outcome_window_s: float = 7 * 86400,
    default_reward: float = 0.0,
    now_us: int | None = None,
    max_rows: int | None = DEFAULT_MAX_ROWS,
) -> LoadedLog:
    """The decisions of the log at ``path`` that have a reward, in memory, checked for what
    OPE needs. ``outcome_window_s``, ``default_reward`` and ``now_us`` complete a SQLite log's
    rewards as ``cvm logs export`` does (an export carries its own). More than ``max_rows``
    decisions are refused (long-run estimators hold them all)."""
    from cvm_rl.logs.convert import decisions_from_log, decisions_from_table
    from cvm_rl.logs.reader import OutcomeWindow
    from cvm_rl.logs.reader import now_us as wall_clock_us

    kind = detect_log_kind(path)
    if kind == "export":
        rows = count_export_rows(path)
        _check_max_rows(rows, max_rows, streamable=True)
        table = _read_export_table(path)
        check_export_table(table)
        # An export's pending rows (if it kept them) are left out by the converter.
        statuses = (
            table.column("outcome_status").to_pylist()
            if "outcome_status" in table.column_names
            else []
        )
        counts = status_counts(statuses)
        decisions = converted(lambda: decisions_from_table(table))
        source = LogSource.from_counts(path, "export", counts)
    else:
        # One "now" for the counts and the conversion, so both see the same window.
        now = wall_clock_us() if now_us is None else now_us
        window = OutcomeWindow(outcome_window_s, default_reward, now)
        counts = _sqlite_status_counts(path, window)
        _check_max_rows(sum(counts.values()), max_rows, streamable=False)
        decisions = converted(
            lambda: decisions_from_log(
                path, outcome_window_s=outcome_window_s, default_reward=default_reward, now_us=now
            )
        )
        source = LogSource.from_counts(
            path,
            "sqlite",
            counts,
            default_reward=default_reward,
            outcome_window_days=outcome_window_s / 86400,
        )
    check_decisions(decisions, pending=source.pending or 0)
    return LoadedLog(decisions, source)


def _check_max_rows(rows: int, max_rows: int | None, *, streamable: bool) -> None:
    if max_rows is None or rows <= max_rows:
        return
    way_out = (
        "or evaluate single-step only (long_run=False), which streams the export in record batches"
        if streamable
        else "or export it with `cvm logs export` and evaluate the export single-step only "
        "(long_run=False), which streams it in record batches"
    )
    raise LogInputError(
        f"the log has {rows:,} decisions, more than max_rows {max_rows:,}: long-run estimators "
        f"need every customer's trajectory in memory; raise max_rows if the memory allows, "
        f"{way_out}"
    )


def converted(convert: Callable[[], LoggedDecisions]) -> LoggedDecisions:
    """Run a converter; its ValueErrors (a bad column, mixed schemas) become LogInputErrors."""
    try:
        return convert()
    except OpeInputError:
        raise
    except ValueError as exc:
        raise LogInputError(str(exc)) from None


def export_dataset(path: str | Path) -> Any:
    """The export at ``path`` as a pyarrow dataset (hive partitions), once its models file
    has been read (a LogInputError without it)."""
    import pyarrow.dataset as ds

    from cvm_rl.logs.export import read_models

    root = Path(path)
    try:
        read_models(root)
    except FileNotFoundError as exc:
        raise LogInputError(str(exc)) from None
    return ds.dataset(str(root), format="parquet", partitioning="hive")


def _read_export_table(path: str | Path) -> pa.Table:
    """The export as one table with its models in the schema metadata (whatever columns it
    has: the checks name the missing ones)."""
    from cvm_rl.logs.export import MODELS_METADATA_KEY, read_models

    table = export_dataset(path).to_table()
    models = json.dumps(read_models(path), sort_keys=True).encode()
    return table.replace_schema_metadata({MODELS_METADATA_KEY: models})


# --- checking the log ------------------------------------------------------------------------


def check_export_table(table: pa.Table | pa.RecordBatch) -> None:
    """An export's propensity and reward columns as OPE needs them, else a LogInputError
    naming the column, the first offending event and how many rows are affected."""
    import pyarrow.compute as pc

    names = set(table.schema.names)
    if "propensity" not in names:
        raise LogInputError(
            "propensity: the log has no propensity column: OPE needs the logging policy's "
            "probability of each logged action"
        )
    for column in ("reward", "event_id"):
        if column not in names:
            raise LogInputError(f"{column}: the log has no {column} column (not an export?)")
    propensity = table.column("propensity")
    event_ids = table.column("event_id")
    missing = pc.is_null(propensity, nan_is_null=True)
    if pc.any(missing).as_py():
        _raise_rows(
            "propensity",
            missing,
            event_ids,
            "has no propensity",
            ": OPE needs the logging policy's probability of each logged action",
        )
    outside = pc.or_(pc.less_equal(propensity, 0.0), pc.greater(propensity, 1.0))
    if pc.any(outside).as_py():
        first = pc.filter(propensity, outside)[0].as_py()
        _raise_rows("propensity", outside, event_ids, f"is {first:g}, outside (0, 1]")
    reward = table.column("reward")
    not_finite = pc.and_(pc.is_valid(reward), pc.invert(pc.is_finite(reward)))
    if pc.any(not_finite).as_py():
        first = pc.filter(reward, not_finite)[0].as_py()
        _raise_rows("reward", not_finite, event_ids, f"is {first}")


def _rows(count: int) -> str:
    return f"{count:,} row" + ("" if count == 1 else "s")


def _raise_rows(column: str, bad: Any, event_ids: Any, problem: str, why: str = "") -> None:
    import pyarrow.compute as pc

    count = int(pc.sum(bad).as_py())
    first = pc.filter(event_ids, bad)[0].as_py()
    raise LogInputError(f"{column}: decision {first!r} {problem} ({_rows(count)} in all){why}")


def status_counts(statuses: Iterable[str]) -> dict[str, int]:
    """Rows per outcome status (``reported``, ``default``, ``pending``)."""
    values, counts = np.unique(np.asarray(list(statuses), dtype=object), return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts, strict=True)}


def _sqlite_status_counts(path: str | Path, window: Any) -> dict[str, int]:
    """Decisions of the SQLite log by outcome status, by the rule the export applies."""
    from cvm_rl.logs.reader import CHUNK_ROWS, open_read_only
    from cvm_rl.logs.records import DecisionLogError

    totals: dict[str, int] = {}
    try:
        with open_read_only(path) as reader, reader.snapshot():
            for rows in reader.chunks(CHUNK_ROWS):
                for status, count in status_counts(window.status(rows)).items():
                    totals[status] = totals.get(status, 0) + count
    except (FileNotFoundError, DecisionLogError) as exc:
        raise LogInputError(str(exc)) from None
    return totals


def check_decisions(decisions: LoggedDecisions, *, pending: int = 0) -> None:
    """What every evaluation needs of the converted rows (LogInputError otherwise): some rows,
    propensities in (0, 1], finite rewards, and exploration (a propensity below 1)."""
    if not len(decisions):
        raise nothing_to_evaluate(pending)
    data = decisions.data
    bad = ~((data.propensities > 0) & (data.propensities <= 1))
    if bad.any():
        row = int(np.argmax(bad))
        raise LogInputError(
            f"propensity: decision {decisions.event_ids[row]!r} has propensity "
            f"{data.propensities[row]:g}, outside (0, 1] ({_rows(int(bad.sum()))} in all)"
        )
    bad = ~np.isfinite(data.rewards)
    if bad.any():
        row = int(np.argmax(bad))
        raise LogInputError(
            f"reward: decision {decisions.event_ids[row]!r} has reward {data.rewards[row]} "
            f"({_rows(int(bad.sum()))} in all)"
        )
    if (data.propensities == 1).all():
        raise LogInputError(NO_EXPLORATION)


def nothing_to_evaluate(pending: int) -> LogInputError:
    """The error for a log without a decision to evaluate (all pending, or none at all)."""
    if pending:
        return LogInputError(
            f"outcome_status: all {pending:,} decisions are pending (no outcome yet, inside "
            "the outcome window): nothing to evaluate yet; wait for the outcomes or shorten "
            "the outcome window"
        )
    return LogInputError("the log holds no decisions")
