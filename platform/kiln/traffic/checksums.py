"""Parquet page checksums: traffic and feedback parts carry a CRC-32 per page, checked on read.

`write_part` writes every page with its CRC (Parquet's `PageHeader.crc`, pyarrow's
`write_page_checksum`). Polars' reader does not check them, and damage inside a page whose
compression has no checksum of its own (values zstd stores raw) decodes into wrong values
without an error. So readers call `verify_pages` before they scan a file: it walks the page
headers of each column chunk the footer lists and compares the CRC of each page's bytes,
without decompressing or decoding anything (CRC-32 runs at gigabytes per second; a file's
page headers are a few dozen bytes each).

A page without a CRC (a file written before checksums, or by another writer) cannot be
checked and is counted as such; a page whose bytes do not match its CRC, or whose header is
not a header, makes the file damaged.
"""

from __future__ import annotations

import mmap
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

_STOP, _TRUE, _FALSE, _I8, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(
    13
)
_MAX_DEPTH = 32


class DamagedPage(Exception):
    """A page header that cannot be parsed, or page bytes that do not match their CRC."""


@dataclass(frozen=True)
class PageCheck:
    """What `verify_pages` found in one file."""

    checked: int
    """Pages whose CRC matched."""
    unchecked: int
    """Pages without a CRC."""
    problem: str | None = None
    """Why the file is damaged (the first bad page, by column and row group); None if not."""


def verify_pages(path: Path, columns: Iterable[str] | None = None) -> PageCheck:
    """Check the CRC of every page of `columns` (all when None) in the Parquet file `path`.

    Raises OSError when the file cannot be read, and whatever pyarrow raises for a footer that
    is not one (`_readable` has checked the footer before)."""
    metadata = pq.read_metadata(path)
    wanted = None if columns is None else set(columns)
    checked = unchecked = 0
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        size = len(data)
        for g in range(metadata.num_row_groups):
            group = metadata.row_group(g)
            for c in range(group.num_columns):
                chunk = group.column(c)
                if wanted is not None and chunk.path_in_schema.split(".")[0] not in wanted:
                    continue
                start = chunk.data_page_offset
                if chunk.has_dictionary_page and 0 < chunk.dictionary_page_offset < start:
                    start = chunk.dictionary_page_offset
                end = start + chunk.total_compressed_size
                try:
                    if not 0 <= start <= end <= size:
                        raise DamagedPage("its pages lie outside the file")
                    ok, missing = _verify_chunk(
                        data, start, end, chunk.num_values, chunk.total_uncompressed_size
                    )
                except DamagedPage as exc:
                    where = f"column '{chunk.path_in_schema}', row group {g}"
                    return PageCheck(checked, unchecked, f"damaged page in {where}: {exc}")
                checked += ok
                unchecked += missing
    return PageCheck(checked, unchecked)


def _verify_chunk(
    data: mmap.mmap, start: int, end: int, values: int, uncompressed: int
) -> tuple[int, int]:
    """(pages checked, pages without a CRC) of the column chunk in data[start:end], which
    the footer says holds `values` values in `uncompressed` bytes (headers included)."""
    checked = unchecked = 0
    counted = unpacked = 0
    view = memoryview(data)
    try:
        position = start
        page = 0
        while position < end:
            header = _Header(data, position, end)
            header.read()
            body = header.position
            stop = body + header.compressed_size
            if stop > end:
                raise DamagedPage(f"page {page} claims {header.compressed_size} bytes")
            if header.crc is None:
                unchecked += 1
            elif zlib.crc32(view[body:stop]) != header.crc & 0xFFFFFFFF:
                raise DamagedPage(f"page {page}'s bytes do not match its CRC")
            else:
                checked += 1
            counted += header.values
            unpacked += (body - position) + header.uncompressed_size
            position = stop
            page += 1
    finally:
        view.release()
    # The CRC covers a page's bytes, not its header: the header's sizes and counts are held
    # against the footer's totals for the chunk instead (for files written with CRCs, whose
    # writer is known to keep them; an unchecked file is reported as such anyway).
    if not unchecked and counted != values:
        raise DamagedPage(f"its pages hold {counted} values, the footer says {values}")
    if not unchecked and unpacked != uncompressed:
        raise DamagedPage(f"its pages unpack to {unpacked} bytes, the footer says {uncompressed}")
    return checked, unchecked


_PAGE_TYPES = {0: "data", 1: "index", 2: "dictionary", 3: "data v2"}
_DATA_PAGES = {0: 5, 3: 8}
"""Data page types and the PageHeader field holding their header (whose field 1 is the
number of values)."""
_ENCODINGS = range(10)


class _Header:
    """A Thrift compact-protocol reader of one `PageHeader` (parquet.thrift): checks that it
    is one (required fields present, of their types) and keeps what the checks need."""

    def __init__(self, data: mmap.mmap, position: int, end: int) -> None:
        self.data, self.position, self.end = data, position, end
        self.compressed_size = -1
        self.uncompressed_size = -1
        self.crc: int | None = None
        self.values = 0

    def read(self) -> None:
        fields: dict[int, int] = {}
        kind_of: dict[int, int] = {}
        field = 0
        while True:
            head = self._byte()
            kind = head & 0x0F
            if kind == _STOP:
                break
            delta = head >> 4
            field = field + delta if delta else self._zigzag()
            kind_of[field] = kind
            if field in (1, 2, 3, 4):
                if kind != _I32:
                    raise DamagedPage(f"page header field {field} is not an integer")
                fields[field] = self._zigzag()
            elif field in (5, 6, 7, 8):
                if kind != _STRUCT:
                    raise DamagedPage(f"page header field {field} is not a structure")
                page_type = fields.get(1)
                if page_type in _DATA_PAGES and _DATA_PAGES[page_type] == field:
                    self.values = self._data_page_header(v2=field == 8)
                else:
                    self._struct(1)
            else:
                self._skip(kind, 0)
        if not {1, 2, 3} <= fields.keys():
            raise DamagedPage("a page header lacks its type or sizes")
        page_type, self.uncompressed_size, self.compressed_size = fields[1], fields[2], fields[3]
        self.crc = fields.get(4)
        if page_type not in _PAGE_TYPES or min(self.uncompressed_size, self.compressed_size) < 0:
            raise DamagedPage("a page header holds an impossible type or size")
        if page_type in _DATA_PAGES and _DATA_PAGES[page_type] not in kind_of:
            raise DamagedPage(f"a {_PAGE_TYPES[page_type]} page has no data page header")

    def _data_page_header(self, *, v2: bool) -> int:
        """Reads a (V1 or V2) DataPageHeader; returns its number of values."""
        values = -1
        encodings = (4,) if v2 else (2, 3, 4)
        field = 0
        while True:
            head = self._byte()
            kind = head & 0x0F
            if kind == _STOP:
                break
            delta = head >> 4
            field = field + delta if delta else self._zigzag()
            if field == 1 and kind == _I32:
                values = self._zigzag()
            elif field in encodings and kind == _I32:
                if self._zigzag() not in _ENCODINGS:
                    raise DamagedPage("a data page names an unknown encoding")
            else:
                self._skip(kind, 1)
        if values < 0:
            raise DamagedPage("a data page header lacks its number of values")
        return values

    def _byte(self) -> int:
        if self.position >= self.end:
            raise DamagedPage("a page header runs past its column chunk")
        value = self.data[self.position]
        self.position += 1
        return value

    def _varint(self) -> int:
        shift = result = 0
        while True:
            b = self._byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise DamagedPage("a page header holds an overlong integer")

    def _zigzag(self) -> int:
        n = self._varint()
        return (n >> 1) ^ -(n & 1)

    def _struct(self, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise DamagedPage("a page header nests too deep")
        while True:
            head = self._byte()
            kind = head & 0x0F
            if kind == _STOP:
                return
            if not head >> 4:
                self._zigzag()  # a field id too far from the last for a delta
            self._skip(kind, depth)

    def _skip(self, kind: int, depth: int) -> None:
        if kind in (_TRUE, _FALSE):
            return
        if kind == _I8:
            self._byte()
        elif kind in (_I16, _I32, _I64):
            self._varint()
        elif kind == _DOUBLE:
            self._advance(8)
        elif kind == _BINARY:
            self._advance(self._varint())
        elif kind in (_LIST, _SET):
            head = self._byte()
            count = head >> 4
            if count == 15:
                count = self._varint()
            element = head & 0x0F
            for _ in range(count):
                self._skip_element(element, depth)
        elif kind == _MAP:
            count = self._varint()
            if count:
                types = self._byte()
                for _ in range(count):
                    self._skip_element(types >> 4, depth)
                    self._skip_element(types & 0x0F, depth)
        elif kind == _STRUCT:
            self._struct(depth + 1)
        else:
            raise DamagedPage(f"a page header holds a field of unknown type {kind}")

    def _skip_element(self, kind: int, depth: int) -> None:
        if kind in (_TRUE, _FALSE):  # in containers a bool takes a byte
            self._byte()
        else:
            self._skip(kind, depth)

    def _advance(self, n: int) -> None:
        if n < 0 or self.position + n > self.end:
            raise DamagedPage("a page header runs past its column chunk")
        self.position += n
