"""Time-indexed tables: parse CSV text or Parquet bytes into a Table of float columns.

No file is opened here: callers pass an open text stream (CSV) or an open binary
stream (Parquet), so the learning core stays usable on data from anywhere (a file,
an HTTP upload, a string in a test).

Timestamps are epoch seconds (numbers) or ISO 8601 with a zone (`Z` or `+HH:MM`).
Times without a zone are refused: their meaning depends on the machine that wrote
them, which is how the seed's extractor came to confuse local time with UTC.
Numeric timestamps above 1e11 look like milliseconds and are refused too.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import IO

import numpy as np

from .errors import LearnError

# Empty cells and these spellings are missing values (NaN); anything else that is
# not a number is an error naming its row and column.
MISSING = frozenset({"", "nan", "NaN", "NA", "N/A", "null", "None"})
MILLISECOND_EPOCH = 1e11  # 1e11 s is the year 5138; epoch milliseconds of today are ~1.7e12

_FRACTION = re.compile(r"\.(\d+)")


@dataclass
class Table:
    """Rows in time order: timestamps (epoch seconds, float64, shape (n,)), column names
    and values (float64, shape (n, len(columns)), NaN where missing)."""

    timestamps: np.ndarray
    columns: list[str]
    values: np.ndarray

    def __post_init__(self) -> None:
        if self.values.shape != (len(self.timestamps), len(self.columns)):
            raise LearnError("table shape %s does not match %d timestamps x %d columns"
                             % (self.values.shape, len(self.timestamps), len(self.columns)))

    def column(self, name: str) -> np.ndarray:
        try:
            return self.values[:, self.columns.index(name)]
        except ValueError:
            raise LearnError("unknown column %r (columns: %s)" % (name, _names(self.columns))) from None

    def subset(self, names: Sequence[str]) -> Table:
        index = {name: i for i, name in enumerate(self.columns)}
        unknown = [name for name in names if name not in index]
        if unknown:
            raise LearnError("unknown column%s %s (columns: %s)" % (
                "s" if len(unknown) > 1 else "", ", ".join(repr(u) for u in unknown), _names(self.columns)))
        return Table(self.timestamps, list(names), self.values[:, [index[name] for name in names]])


def _names(columns: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(columns[:limit])
    return shown + (", ... (%d in all)" % len(columns) if len(columns) > limit else "")


# ---------------------------------------------------------------- timestamps
def parse_time(text: str) -> float:
    """One timestamp as epoch seconds: a number, or ISO 8601 with a zone."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        return _parse_iso(text)
    return _check_epoch(value, text)


def _check_epoch(value: float, text: str) -> float:
    if not np.isfinite(value):
        raise LearnError("timestamp %r is not a finite number" % text)
    if abs(value) >= MILLISECOND_EPOCH:
        raise LearnError("timestamp %r looks like epoch milliseconds: give epoch seconds" % text)
    return value


def _parse_iso(text: str) -> float:
    # Python 3.10's fromisoformat takes neither "Z" nor more than 6 fraction digits.
    normal = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    normal = _FRACTION.sub(lambda m: "." + (m.group(1) + "000000")[:6], normal, count=1)
    try:
        moment = datetime.fromisoformat(normal)
    except ValueError:
        raise LearnError("timestamp %r is neither epoch seconds nor ISO 8601" % text) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise LearnError("timestamp %r has no time zone: add Z or +HH:MM, or give epoch seconds" % text)
    return moment.timestamp()


def parse_times(texts: Sequence[str], column: str = "timestamp") -> np.ndarray:
    """A column of timestamps as epoch seconds (float64)."""
    try:
        values = np.asarray(texts, dtype=str).astype(np.float64)
    except ValueError:
        values = np.empty(len(texts))
        for row, text in enumerate(texts):
            try:
                values[row] = parse_time(text)
            except LearnError as exc:
                raise LearnError("column %r, data row %d: %s" % (column, row + 1, exc)) from None
        return values
    for row, value in enumerate(values):
        if not np.isfinite(value) or abs(value) >= MILLISECOND_EPOCH:
            try:
                _check_epoch(float(value), texts[row])
            except LearnError as exc:
                raise LearnError("column %r, data row %d: %s" % (column, row + 1, exc)) from None
    return values


# ---------------------------------------------------------------- building tables
def _to_floats(cells: Sequence[str], column: str) -> np.ndarray:
    try:
        return np.asarray(cells, dtype=str).astype(np.float64)
    except ValueError:
        pass
    out = np.empty(len(cells))
    for row, cell in enumerate(cells):
        text = cell.strip()
        if text in MISSING:
            out[row] = np.nan
            continue
        try:
            out[row] = float(text)
        except ValueError:
            raise LearnError("column %r, data row %d: %r is not a number" % (column, row + 1, cell)) from None
    return out


def build_table(header: Sequence[str], columns: Sequence[Sequence[str]] | Sequence[np.ndarray],
                timestamp_column: str | None = None, *, source: str = "table") -> Table:
    """A Table from named columns; the timestamp column is timestamp_column or, when
    None, the first. Rows are sorted by time (a stable sort)."""
    names = [str(name).strip() for name in header]
    if len(names) < 2:
        raise LearnError("%s needs a timestamp column and at least one value column, got %d column%s"
                         % (source, len(names), "" if len(names) == 1 else "s"))
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise LearnError("%s has duplicate column names: %s" % (source, ", ".join(duplicates)))
    if timestamp_column is None:
        time_index = 0
    elif timestamp_column in names:
        time_index = names.index(timestamp_column)
    else:
        raise LearnError("%s has no timestamp column %r (columns: %s)" % (source, timestamp_column, _names(names)))
    if len(columns[0]) == 0:
        raise LearnError("%s has a header but no data rows" % source)
    raw_times = columns[time_index]
    if isinstance(raw_times, np.ndarray) and raw_times.dtype.kind in "fiu":
        times = raw_times.astype(np.float64)
        for row, value in enumerate(times):
            try:
                _check_epoch(float(value), str(value))
            except LearnError as exc:
                raise LearnError("%s, column %r, data row %d: %s" % (source, names[time_index], row + 1, exc)) from None
    else:
        try:
            times = parse_times([str(t) for t in raw_times], names[time_index])
        except LearnError as exc:
            raise LearnError("%s: %s" % (source, exc)) from None
    value_names = [name for i, name in enumerate(names) if i != time_index]
    values = np.empty((len(times), len(value_names)))
    position = 0
    for i, cells in enumerate(columns):
        if i == time_index:
            continue
        if isinstance(cells, np.ndarray) and cells.dtype.kind in "fiub":
            values[:, position] = cells.astype(np.float64)
        else:
            try:
                values[:, position] = _to_floats([str(c) if c is not None else "" for c in cells], names[i])
            except LearnError as exc:
                raise LearnError("%s: %s" % (source, exc)) from None
        position += 1
    values[~np.isfinite(values)] = np.nan  # +Inf/-Inf (e.g. a histogram's le="+Inf" ratio) carry no signal
    order = np.argsort(times, kind="stable")
    if np.any(order != np.arange(len(order))):
        times, values = times[order], values[order]
    return Table(times, value_names, values)


def read_csv(stream: IO[str], timestamp_column: str | None = None, *, source: str = "CSV") -> Table:
    """A Table from CSV text with a header row; every row must have the header's number
    of cells."""
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        raise LearnError("%s is empty (no header row)" % source) from None
    except csv.Error as exc:
        raise LearnError("%s is not valid CSV: %s" % (source, exc)) from None
    rows: list[list[str]] = []
    try:
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise LearnError("%s line %d has %d cells, the header has %d"
                                 % (source, reader.line_num, len(row), len(header)))
            rows.append(row)
    except csv.Error as exc:
        raise LearnError("%s is not valid CSV (line %d): %s" % (source, reader.line_num, exc)) from None
    except UnicodeDecodeError as exc:
        raise LearnError("%s is not UTF-8 text: %s" % (source, exc)) from None
    if not rows:
        raise LearnError("%s has a header but no data rows" % source)
    columns = list(zip(*rows, strict=False))
    return build_table(header, [list(c) for c in columns], timestamp_column, source=source)


def read_csv_text(text: str, timestamp_column: str | None = None, *, source: str = "CSV") -> Table:
    return read_csv(io.StringIO(text), timestamp_column, source=source)


def read_parquet(stream: IO[bytes], timestamp_column: str | None = None, *, source: str = "Parquet") -> Table:
    """A Table from Parquet (needs pyarrow: the package's `learn` extra). Timestamp
    columns may be numbers (epoch seconds), strings, or Parquet timestamps with a zone
    (naive Parquet timestamps are refused like naive strings)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise LearnError("reading Parquet needs pyarrow (pip install 'edgelab-agents[learn]')") from None
    try:
        table = pq.read_table(stream)
    except (pa.ArrowException, OSError) as exc:
        raise LearnError("%s is not a readable Parquet file: %s" % (source, exc)) from None
    if table.num_rows == 0:
        raise LearnError("%s has no rows" % source)
    header = list(table.column_names)
    columns: list[np.ndarray] = []
    for name, column in zip(header, table.columns, strict=False):
        kind = column.type
        if pa.types.is_timestamp(kind):
            if kind.tz is None:
                raise LearnError("%s column %r holds timestamps without a time zone: store them as UTC"
                                 % (source, name))
            seconds = column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)
            columns.append(seconds.astype(np.float64) / 1e6)
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
            columns.append(column.cast(pa.float64()).to_numpy(zero_copy_only=False))
        else:
            columns.append(np.asarray([("" if v is None else str(v)) for v in column.to_pylist()], dtype=object))
    return build_table(header, columns, timestamp_column, source=source)


PARQUET_MAGIC = b"PAR1"


def read_table(stream: IO[bytes], timestamp_column: str | None = None, *, source: str = "dataset") -> Table:
    """A Table from an open binary stream holding Parquet (recognised by its magic
    bytes) or UTF-8 CSV."""
    head = stream.read(4)
    stream.seek(0)
    if head == PARQUET_MAGIC:
        return read_parquet(stream, timestamp_column, source=source)
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    try:
        return read_csv(text, timestamp_column, source=source)
    finally:
        text.detach()
