"""Part-file checksums: every traffic and feedback part carries the CRC-32 of its bytes in its
name, and readers check it before they scan the file.

Polars' reader checks no checksum, and damage inside a page whose compression has none of its
own (values zstd stores raw) decodes into other values without an error. Parquet's own page
CRCs would catch it, but only pyarrow's writer writes them, at 2.5x the CPU of Polars' writer
on the serving host (measured on 10,000 logged MNIST requests: 182 ms against 73 ms). So
`write_part` writes with Polars, sums the finished file (CRC-32 runs at gigabytes per second,
and the file is still in the page cache) and puts the sum in the name it renames the file to:
``part-<stamp>-<id>-c<crc32 hex>.parquet``. A file is only ever renamed once, whole, so a name
and its bytes are written together; any later change to the bytes (a flipped bit, a block of
garbage, a truncation) no longer matches the name. CRC-32 finds every error burst of up to 32
bits and all but 2^-32 of the others.

A file whose name carries no sum (written before checksums, or by another tool) cannot be
checked and is counted as such.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

_SUM = re.compile(r"-c([0-9a-f]{8})\.parquet$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileCheck:
    """What `verify_file` found."""

    checked: bool
    """The name carried a sum and the bytes were summed."""
    problem: str | None = None
    """Why the file is damaged; None when it is intact (or could not be checked)."""


def with_sum(name: str, crc: int) -> str:
    """`part-….parquet` renamed to carry `crc`."""
    return f"{name.removesuffix('.parquet')}-c{crc:08x}.parquet"


def name_crc(name: str) -> int | None:
    """The CRC-32 a part file's name carries (`with_sum`), or None when it carries none."""
    match = _SUM.search(name)
    return None if match is None else int(match.group(1), 16)


def file_crc(path: Path) -> int:
    """CRC-32 of the bytes of `path`, read in 1 MiB pieces (bounded memory)."""
    crc = 0
    with path.open("rb") as f:
        while piece := f.read(_CHUNK):
            crc = zlib.crc32(piece, crc)
    return crc


def verify_file(path: Path) -> FileCheck:
    """Whether the bytes of `path` still sum to what its name says. Raises `OSError` when the
    file cannot be read."""
    expected = name_crc(path.name)
    if expected is None:
        return FileCheck(checked=False)
    found = file_crc(path)
    if found != expected:
        return FileCheck(
            checked=True,
            problem=(
                f"its bytes do not match the CRC-32 in its name ({found:08x}, written as "
                f"{expected:08x}): the file was damaged or truncated after it was written"
            ),
        )
    return FileCheck(checked=True)
