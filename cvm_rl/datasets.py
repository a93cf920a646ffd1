"""Public data sets: files that installed packages ship, and the Hillstrom email campaign
shipped in ``cvm_rl/data`` (nothing is downloaded)."""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray


def lifetimes_dataset(name: str) -> Path:
    """Path of a data file shipped in the ``lifetimes`` wheel (e.g. ``CDNOW_sample.txt``).

    Only the files are used: importing ``lifetimes`` itself needs ``pkg_resources``. The wheel
    is in the ``test`` extra as a data source.
    """
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the lifetimes wheel (source of the CDNOW sample) is not installed: "
            "pip install 'cvm-rl[test]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not in the installed lifetimes wheel")
    return path


HILLSTROM_FILE = "hillstrom_email_2008.csv.gz"
HILLSTROM_SHA256 = "ff9e59285e9dc3f5fa3e0975419e6631ea5bdccd65d818991473d2367e02979c"
"""sha256 of the uncompressed CSV as published (see ``cvm_rl/data/README.md``)."""

HILLSTROM_ARMS = ("No E-Mail", "Mens E-Mail", "Womens E-Mail")
"""The campaign's arms, control first: :attr:`HillstromData.arm` indexes this tuple."""

_HILLSTROM_LABELS: dict[str, tuple[str, ...]] = {
    "history_segment": (
        "1) $0 - $100",
        "2) $100 - $200",
        "3) $200 - $350",
        "4) $350 - $500",
        "5) $500 - $750",
        "6) $750 - $1,000",
        "7) $1,000 +",
    ),
    "zip_code": ("Surburban", "Urban", "Rural"),  # "Surburban" is the data's own spelling
    "channel": ("Phone", "Web", "Multichannel"),
    "segment": HILLSTROM_ARMS,
}
_HILLSTROM_WHOLE = ("recency",)
_HILLSTROM_AMOUNTS = ("history", "spend")
_HILLSTROM_FLAGS = ("mens", "womens", "newbie", "visit", "conversion")
HILLSTROM_COLUMNS = (
    "recency",
    "history_segment",
    "history",
    "mens",
    "womens",
    "zip_code",
    "newbie",
    "channel",
    "segment",
    "visit",
    "conversion",
    "spend",
)


class DatasetError(ValueError):
    """A data file that is not the data set it claims to be; the message names the file and,
    for a bad value, the column and the (1-based data) row."""


@dataclass(frozen=True, eq=False)
class HillstromData:
    """The Hillstrom email campaign, one array per column (one entry per customer).

    ``recency`` is months since the last purchase, ``history`` the spend over the past year
    ($), ``spend`` the spend in the two weeks after the campaign ($); flags are booleans and
    labels strings, as in the file.
    """

    recency: NDArray[np.int64]
    history_segment: NDArray[np.str_]
    history: NDArray[np.float64]
    mens: NDArray[np.bool_]
    womens: NDArray[np.bool_]
    zip_code: NDArray[np.str_]
    newbie: NDArray[np.bool_]
    channel: NDArray[np.str_]
    segment: NDArray[np.str_]
    visit: NDArray[np.bool_]
    conversion: NDArray[np.bool_]
    spend: NDArray[np.float64]
    source: str = "hillstrom_email_2008.csv"
    sha256: str = HILLSTROM_SHA256

    def __len__(self) -> int:
        return len(self.recency)

    @property
    def arm(self) -> NDArray[np.int64]:
        """Each customer's arm as an index into :data:`HILLSTROM_ARMS` (0 = no email)."""
        codes = np.full(len(self.segment), -1, dtype=np.int64)
        for i, label in enumerate(HILLSTROM_ARMS):
            codes[self.segment == label] = i
        return codes


def _bad_value(path: str, column: str, values: list[str], ok: NDArray[np.bool_], want: str) -> str:
    row = int(np.argmin(ok))
    return f"{path}: column {column!r}, row {row + 1}: expected {want}, got {values[row]!r}"


def _numbers(path: str, column: str, values: list[str], want: str) -> NDArray[np.float64]:
    try:
        array = np.array(values, dtype=np.float64)
    except ValueError:
        ok = np.ones(len(values), dtype=bool)
        for i, text in enumerate(values):
            try:
                float(text)
            except ValueError:
                ok[i] = False
                break
        raise DatasetError(_bad_value(path, column, values, ok, want)) from None
    ok = np.isfinite(array) & (array >= 0)
    if column in _HILLSTROM_WHOLE:
        ok &= array == np.round(array)
    if column in _HILLSTROM_FLAGS:
        ok &= (array == 0) | (array == 1)
    if not np.all(ok):
        raise DatasetError(_bad_value(path, column, values, ok, want))
    return array


def _hillstrom_columns(text: str, path: str) -> dict[str, list[str]]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise DatasetError(f"{path}: empty file, expected a header {','.join(HILLSTROM_COLUMNS)}")
    header = [name.strip() for name in header]
    missing = [name for name in HILLSTROM_COLUMNS if name not in header]
    unknown = [name for name in header if name not in HILLSTROM_COLUMNS]
    if missing or unknown or len(set(header)) != len(header):
        problems = [f"missing column {name!r}" for name in missing]
        problems += [f"unknown column {name!r}" for name in unknown]
        if not problems:
            problems = ["a column appears twice"]
        raise DatasetError(f"{path}: {'; '.join(problems)} (expected {HILLSTROM_COLUMNS})")
    rows = [row for row in reader if row]
    if not rows:
        raise DatasetError(f"{path}: no customers after the header")
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise DatasetError(
                f"{path}: row {i + 1} has {len(row)} fields, the header {len(header)} columns"
            )
    return {name: [row[j] for row in rows] for j, name in enumerate(header)}


def hillstrom_email(
    path: str | Path | None = None, *, expected_sha256: str | None = HILLSTROM_SHA256
) -> HillstromData:
    """Load the Hillstrom MineThatData email campaign (2008).

    ``path`` defaults to the copy shipped in the package; plain or gzip-compressed CSV. Every
    column is checked; then the sha256 of the (decompressed) bytes must equal
    ``expected_sha256`` (``None`` accepts any file in the same layout, e.g. another campaign).
    Raises :class:`DatasetError` naming the file, and the column and row of a bad value.
    """
    file = Path(path) if path is not None else Path(__file__).parent / "data" / HILLSTROM_FILE
    raw = file.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DatasetError(f"{file}: corrupt gzip data ({exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{file}: not UTF-8 text ({exc})") from None
    columns = _hillstrom_columns(text, str(file))
    arrays: dict[str, NDArray[Any]] = {}
    for name in HILLSTROM_COLUMNS:
        values = columns[name]
        if name in _HILLSTROM_LABELS:
            labels = _HILLSTROM_LABELS[name]
            array = np.array(values, dtype=np.str_)
            ok = np.isin(array, labels)
            if not np.all(ok):
                want = "one of " + ", ".join(repr(label) for label in labels)
                raise DatasetError(_bad_value(str(file), name, values, ok, want))
            arrays[name] = array
        elif name in _HILLSTROM_FLAGS:
            arrays[name] = _numbers(str(file), name, values, "0 or 1").astype(np.bool_)
        elif name in _HILLSTROM_WHOLE:
            numbers = _numbers(str(file), name, values, "a whole number >= 0")
            arrays[name] = numbers.astype(np.int64)
        else:
            arrays[name] = _numbers(str(file), name, values, "an amount >= 0")
    digest = hashlib.sha256(raw).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise DatasetError(
            f"{file}: sha256 of the data is {digest}, expected {expected_sha256} "
            "(the file is corrupt or not the published data set)"
        )
    return HillstromData(**arrays, source=file.name, sha256=digest)
