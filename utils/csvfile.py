"""One reader for the CSV files a user hands in: attribute labels, face lists, ``faces.csv``.

Why one reader: each CSV used to be parsed by hand with ``csv.DictReader``, so a short row gave
``None`` values (``AttributeError: 'NoneType' object has no attribute 'strip'``), a repeated
key let its last row win silently, and a file saved by Excel (UTF-8 with a byte-order mark: the
BOM became part of the first column's name) or in latin-1 failed with a traceback or a
confusing "no column file". Here every such mistake is one error whose message stands alone
and names the file and line (and the column or key) at fault:

* Encoding: UTF-8, with or without a BOM (``utf-8-sig``, what Excel's "CSV UTF-8" writes).
  Anything else is refused, naming the line of the first byte that is not UTF-8 and saying to
  save the file as UTF-8: guessing latin-1 would silently turn names into other names.
* Header: the first line that is not blank; names stripped of surrounding spaces, none empty
  and none repeated.
* Rows: exactly one value per column (a short or a long row is refused), values stripped of
  surrounding spaces; blank lines hold no value and are skipped.
* :meth:`Table.require` refuses missing columns, ``row[column]`` (:meth:`Row.__getitem__`) an
  empty value of a column the caller needs, :meth:`Table.unique` a key that repeats, naming
  both lines.

Errors are :class:`CSVError` unless the caller names its own ``ValueError`` subclass (e.g.
``datasets.DataError``), so its callers keep catching what they caught.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterator, Mapping
from pathlib import Path


class CSVError(ValueError):
    """A CSV that cannot be read as asked; the message names the file (and line, column)."""


ErrorType = type[ValueError]


@dataclasses.dataclass(frozen=True)
class Row:
    """One record of a CSV: its values by column and the line it starts on."""

    path: Path
    line: int
    values: Mapping[str, str]
    error_type: ErrorType = CSVError

    def __getitem__(self, column: str) -> str:
        """The value of a column this row must have: an empty one is refused by name."""
        if column not in self.values:
            raise self.error(f'no column {column!r} (has {list(self.values)})')
        value = self.values[column]
        if not value:
            raise self.error(f'no value in column {column!r}')
        return value

    def get(self, column: str, default: str = '') -> str:
        """The value of an optional column: ``default`` where the column or value is absent."""
        return self.values.get(column) or default

    def error(self, message: str) -> ValueError:
        """An error about this row: ``<file>:<line>: <message>``."""
        return self.error_type(f'{self.path}:{self.line}: {message}')


@dataclasses.dataclass(frozen=True)
class Table:
    """A CSV read by :func:`read_csv`: header columns and rows in file order."""

    path: Path
    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    header_line: int = 1
    error_type: ErrorType = CSVError

    def require(self, *columns: str) -> None:
        """Refuses the file, naming it and its header line, if a column is missing."""
        missing = [c for c in columns if c not in self.columns]
        if missing:
            raise self.error_type(
                f'{self.path}:{self.header_line}: no column {missing} (has {list(self.columns)})'
            )

    def unique(self, column: str) -> dict[str, Row]:
        """``value -> row`` of a key column: a repeated or empty key is refused (both lines
        named), since otherwise one of the two rows would win silently."""
        self.require(column)
        first: dict[str, Row] = {}
        for row in self.rows:
            key = row[column]
            if key in first:
                raise row.error(f'{column} {key!r} repeats line {first[key].line}')
            first[key] = row
        return first


def read_csv(
    path: str | Path, required: tuple[str, ...] = (), error_type: ErrorType = CSVError
) -> Table:
    """The header and rows of the CSV ``path`` (module doc: encoding, header and row rules),
    refusing it (``error_type``, naming file and line) if a ``required`` column is missing."""
    path = Path(path)
    records = _records(path, _text(path, error_type), error_type)
    header_line, header = next(records, (1, []))
    columns = tuple(name.strip() for name in header)
    if not any(columns):
        raise error_type(f'{path}:{header_line}: empty; expected a header line of column names')
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if '' in columns or repeated:
        raise error_type(
            f'{path}:{header_line}: header {list(columns)} has an empty or repeated column name'
        )
    rows = []
    for line, record in records:
        if len(record) != len(columns):
            raise error_type(
                f'{path}:{line}: {len(record)} values, but the header (line {header_line}) '
                f'has {len(columns)} columns {list(columns)}'
            )
        values = dict(zip(columns, (v.strip() for v in record), strict=True))
        rows.append(Row(path, line, values, error_type))
    table = Table(path, columns, tuple(rows), header_line, error_type)
    table.require(*required)
    return table


def _text(path: Path, error_type: ErrorType) -> str:
    """The file decoded as UTF-8 (a leading BOM dropped), or an error saying what to do."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise error_type(f'cannot read CSV {path}: {err.strerror or err}') from None
    try:
        return data.decode('utf-8-sig')
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b'\n') + 1
        raise error_type(
            f'{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the file as '
            'UTF-8 (e.g. Excel: "CSV UTF-8")'
        ) from None


def _records(path: Path, text: str, error_type: ErrorType) -> Iterator[tuple[int, list[str]]]:
    """``(first line, values)`` of every record that is not a blank line."""
    reader = csv.reader(io.StringIO(text, newline=''), skipinitialspace=True)
    end = 0  # Last physical line of the previous record (quoted values may span lines).
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise error_type(f'{path}:{reader.line_num}: not valid CSV: {err}') from None
        start, end = end + 1, reader.line_num
        if record and any(v.strip() for v in record):
            yield start, record
