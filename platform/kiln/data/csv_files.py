"""User CSV files: read as strict UTF-8 into a polars frame, or refused naming the bad lines.

A CSV carries no types: polars infers them from the values, except that a `text` column is
always read as strings (texts that look like numbers stay texts) and an empty `text` field is
an empty string, not a missing value, so it is refused as an empty text.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.errors import DatasetInvalid, DatasetNotFound

if TYPE_CHECKING:  # polars is imported where a file is read, not when kiln.data is
    import polars as pl

SHOWN = 5
"""How many bad lines an error names."""


def read_csv(path: Path) -> pl.DataFrame:
    """The rows of the CSV file at `path`, with a header row naming the columns.

    Raises DatasetNotFound for a missing file and DatasetInvalid for bytes that are not UTF-8
    (naming the first lines and rows that hold them) or rows polars cannot parse."""
    import polars as pl

    if not path.is_file():
        raise DatasetNotFound(f"CSV file {path} does not exist")
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise DatasetInvalid(not_utf8_message(path, data)) from None
    try:
        return pl.read_csv(
            io.BytesIO(data), schema_overrides={"text": pl.String}, empty_string_is_null=False
        )
    except Exception as exc:  # polars raises several unrelated types for malformed files
        ragged = ragged_rows(data)
        if ragged:
            raise DatasetInvalid(
                f"{path}: {'; '.join(ragged)} (rows count from 0 after the header); quote "
                'fields that hold the separator ("a, b") and give every row every column'
            ) from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetInvalid(f"cannot read {path} as CSV: {first}") from exc


def ragged_rows(data: bytes) -> list[str]:
    """The first rows whose number of fields differs from the header's, as messages."""
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    found: list[str] = []
    try:
        header = len(next(reader))
        line = reader.line_num
        for index, row in enumerate(reader):
            if row and len(row) != header:
                found.append(
                    f"row {index} (line {line + 1}) has {len(row)} fields, the header {header}"
                )
                if len(found) == SHOWN:
                    break
            line = reader.line_num
    except (StopIteration, csv.Error):  # no header, or a row the reader cannot split:
        pass  # the rows found so far are the report; the loader's own error names the rest
    return found


def bad_utf8_offsets(data: bytes, limit: int) -> list[int]:
    """Byte offsets of the first `limit` invalid UTF-8 sequences in `data`."""
    offsets: list[int] = []
    position = 0
    while len(offsets) < limit:
        try:
            data[position:].decode("utf-8")
            break
        except UnicodeDecodeError as exc:
            offsets.append(position + exc.start)
            position += exc.end
    return offsets


def row_of_lines(data: bytes) -> dict[int, int]:
    """Map each line number (from 1) of a CSV file to its data row (from 0, after the header),
    following quoted fields over line breaks. Bad bytes are kept as surrogates to be parsed."""
    reader = csv.reader(io.StringIO(data.decode("utf-8", errors="surrogateescape"), newline=""))
    rows: dict[int, int] = {}
    first_line = 1
    try:
        for index, _ in enumerate(reader):
            for line in range(first_line, reader.line_num + 1):
                rows[line] = index - 1  # index 0 is the header
            first_line = reader.line_num + 1
    except csv.Error:  # a malformed row: lines past it are reported without their row
        pass
    return rows


def not_utf8_message(path: Path, data: bytes) -> str:
    """Say where the file's bytes are not UTF-8: line, data row and the byte itself."""
    rows = row_of_lines(data)
    places: list[str] = []
    seen_lines: set[int] = set()
    for offset in bad_utf8_offsets(data, limit=100):
        line = data.count(b"\n", 0, offset) + 1
        if line in seen_lines:
            continue
        seen_lines.add(line)
        row = rows.get(line)
        where = "the header" if row == -1 else "row ?" if row is None else f"row {row}"
        places.append(f"line {line} ({where}): byte 0x{data[offset]:02x}")
        if len(places) == SHOWN:
            break
    return (
        f"{path} is not UTF-8: {'; '.join(places)} (rows count from 0 after the header). Save "
        f"it as UTF-8, e.g. iconv -f WINDOWS-1252 -t UTF-8 {path.name} > utf8-{path.name}"
    )
