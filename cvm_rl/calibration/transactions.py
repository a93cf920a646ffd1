"""Reading a transaction file: one row per transaction (customer id, day, amount).

:func:`load_transactions` takes the columns by 0-based index or header name (the defaults are
the CDNOW layout) and says which line and column is wrong when a row cannot be read.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from cvm_rl.calibration.errors import CalibrationError

Column = int | str
"""A column of a transaction file: 0-based index or header name."""


@dataclass(frozen=True, eq=False)
class Transactions:
    """One row per transaction: customer id, day and amount."""

    customer_ids: NDArray[np.str_]
    dates: NDArray[np.datetime64]
    amounts: NDArray[np.float64]
    source: str = "<memory>"

    def __post_init__(self) -> None:
        n = len(self.customer_ids)
        if len(self.dates) != n or len(self.amounts) != n:
            raise CalibrationError(
                f"Transactions: customer_ids, dates and amounts differ in length "
                f"({n}, {len(self.dates)}, {len(self.amounts)})"
            )

    def __len__(self) -> int:
        return len(self.customer_ids)


def _resolve_column(
    column: Column, header_row: list[str] | None, role: str, where: str
) -> tuple[int, str]:
    """Turn a column index or header name into (index, label for messages)."""
    if isinstance(column, bool):  # bool is an int subclass; True as a column is a mistake
        raise CalibrationError(f"{role} column must be an index or a name, got {column!r}")
    if isinstance(column, int):
        if column < 0:
            raise CalibrationError(f"{role} column index must be >= 0, got {column}")
        if header_row is not None and column < len(header_row):
            return column, f"{role} column {column} ({header_row[column]!r})"
        return column, f"{role} column {column}"
    if header_row is None:
        raise CalibrationError(
            f"{where}: {role} column {column!r} is given by name but the file is read "
            "without a header"
        )
    names = [name.strip() for name in header_row]
    if column not in names:
        raise CalibrationError(
            f"{where}: unknown {role} column {column!r}; header has {', '.join(map(repr, names))}"
        )
    return names.index(column), f"{role} column {column!r}"


def _read_rows(path: Path, delimiter: str | None) -> list[tuple[int, list[str]]]:
    """(line number, fields) for every line of the file."""
    # utf-8-sig drops the byte-order mark that spreadsheet exports put before the header.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        if delimiter is None:
            return [(n, line.split()) for n, line in enumerate(handle, start=1)]
        reader = csv.reader(handle, delimiter=delimiter)
        # line_num is the reader's current line, right for quoted multi-line fields too.
        return [(reader.line_num, row) for row in reader]


def load_transactions(
    path: str | Path,
    *,
    customer_column: Column = 0,
    date_column: Column = 2,
    amount_column: Column = 4,
    date_format: str = "%Y%m%d",
    delimiter: str | None = None,
    header: bool | None = None,
) -> Transactions:
    """Read a transaction file (one transaction per line) into :class:`Transactions`.

    Columns are 0-based indices or header names. ``delimiter=None`` splits on any whitespace
    (the CDNOW layout, whose defaults these are). ``header=None`` means the first line is a
    header exactly when some column is given by name. Blank lines are skipped.
    """
    path = Path(path)
    if delimiter is not None and len(delimiter) != 1:
        raise CalibrationError(f"delimiter must be one character, got {delimiter!r}")
    columns = {"customer": customer_column, "date": date_column, "amount": amount_column}
    if header is None:
        header = any(isinstance(c, str) for c in columns.values())
    try:
        rows = _read_rows(path, delimiter)
    except UnicodeDecodeError as exc:
        raise CalibrationError(f"{path}: not a UTF-8 text file ({exc.reason})") from exc
    rows = [(n, row) for n, row in rows if any(field.strip() for field in row)]

    header_row: list[str] | None = None
    if header:
        if not rows:
            raise CalibrationError(f"{path}: empty file, expected a header line")
        header_line, header_row = rows[0]
        rows = rows[1:]
        where = f"{path}, line {header_line}"
    else:
        where = str(path)
    resolved = {
        role: _resolve_column(column, header_row, role, where) for role, column in columns.items()
    }
    if not rows:
        raise CalibrationError(f"{path}: empty file, no transactions found")

    (ci, c_label), (di, d_label), (ai, a_label) = (
        resolved["customer"],
        resolved["date"],
        resolved["amount"],
    )
    needed = max(ci, di, ai) + 1
    ids: list[str] = []
    days: list[date] = []
    amounts: list[float] = []
    for line, row in rows:
        if len(row) < needed:
            missing = [label for index, label in resolved.values() if index >= len(row)]
            raise CalibrationError(
                f"{path}, line {line}: missing {', '.join(missing)} "
                f"(expected at least {needed} fields, got {len(row)})"
            )
        customer = row[ci].strip()
        if not customer:
            raise CalibrationError(f"{path}, line {line}, {c_label}: empty customer id")
        raw_date = row[di].strip()
        try:
            day = datetime.strptime(raw_date, date_format).date()
        except ValueError:
            raise CalibrationError(
                f"{path}, line {line}, {d_label}: cannot parse date {raw_date!r} "
                f"with format {date_format!r}"
            ) from None
        raw_amount = row[ai].strip()
        try:
            amount = float(raw_amount)
        except ValueError:
            raise CalibrationError(
                f"{path}, line {line}, {a_label}: expected a number, got {raw_amount!r}"
            ) from None
        if not math.isfinite(amount) or amount < 0:
            raise CalibrationError(
                f"{path}, line {line}, {a_label}: expected a finite non-negative amount, "
                f"got {raw_amount!r}"
            )
        ids.append(customer)
        days.append(day)
        amounts.append(amount)
    return Transactions(
        customer_ids=np.array(ids, dtype=np.str_),
        dates=np.array(days, dtype="datetime64[D]"),
        amounts=np.array(amounts, dtype=np.float64),
        source=str(path),
    )
