"""Page checksums: every traffic and feedback part carries a CRC per page, and damage inside a
page, which Polars would decode into other values without a word, is found without decoding.

The references: pyarrow's own check (`page_checksum_verification`), which ours must match on
every page it finds damaged, and Polars, which must never read other values than were
written from a file ours passes.
"""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.traffic import FeedbackWriter, TrafficLogger, TrafficRecord, TrafficSettings
from kiln.traffic.checksums import verify_pages


def traffic_part(home: Path, rows: int = 300) -> Path:
    """A real part file: random (incompressible) inputs, as zstd stores them raw."""
    rng = np.random.default_rng(0)
    with TrafficLogger(home, TrafficSettings(flush_interval_s=60)) as logger:
        for i in range(rows):
            x = rng.random((1, 64), dtype=np.float32)
            logits = rng.standard_normal((1, 10)).astype(np.float32)
            logger.log(TrafficRecord(f"r{i}", 10**15 + i, "digits", 1, 100 + i, input=x,
                                     output=logits, batch_size=1))  # fmt: skip
    (part,) = (home / "traffic").rglob("part-*.parquet")
    return part


@pytest.fixture(scope="module")
def part(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return traffic_part(tmp_path_factory.mktemp("checksums"))


def data_region(path: Path) -> tuple[int, int]:
    """Where the pages are: after the magic, before the footer."""
    data = path.read_bytes()
    footer = struct.unpack("<i", data[-8:-4])[0]
    return 4, len(data) - 8 - footer


def test_every_page_of_traffic_and_feedback_parts_has_a_crc(part: Path, tmp_path: Path) -> None:
    check = verify_pages(part)
    assert check.problem is None and check.unchecked == 0 and check.checked >= 17
    with FeedbackWriter(tmp_path) as feedback:
        feedback.add("r1", 3, model="digits")
    (labels,) = (tmp_path / "feedback").rglob("part-*.parquet")
    check = verify_pages(labels)
    assert check.problem is None and check.unchecked == 0 and check.checked >= 5


def test_a_file_without_crcs_is_readable_and_counted_unchecked(tmp_path: Path) -> None:
    path = tmp_path / "old.parquet"
    pl.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]}).write_parquet(path)  # Polars: no CRCs
    check = verify_pages(path)
    assert check.problem is None and check.checked == 0 and check.unchecked >= 2


def pyarrow_crc_mismatch(path: Path) -> bool:
    try:
        pq.read_table(path, page_checksum_verification=True)
    except OSError as exc:
        return "CRC checksum verification failed" in str(exc)
    return False


def polars_reads(path: Path, original: pl.DataFrame) -> bool | None:
    """True: the original values; False: other values; None: Polars fails on it."""
    try:
        return pl.read_parquet(path).equals(original)
    except pl.exceptions.PolarsError:
        return None


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7), span=st.sampled_from([1, 2048])
)
def test_damage_that_would_change_values_is_found(
    part: Path, tmp_path: Path, where: float, bit: int, span: int
) -> None:
    """A flipped bit or 2 KB of random bytes anywhere in the pages: found whenever pyarrow's
    CRC check finds it, and whenever Polars would read other values than were written."""
    start, end = data_region(part)
    data = bytearray(part.read_bytes())
    at = start + int(where * (end - start))
    if span == 1:
        data[at] ^= 1 << bit
    else:
        stop = min(end, at + span)
        data[at:stop] = np.random.default_rng(at).bytes(stop - at)
    damaged = tmp_path / f"damaged-{at}-{bit}-{span}.parquet"
    damaged.write_bytes(bytes(data))
    found = verify_pages(damaged).problem is not None
    if pyarrow_crc_mismatch(damaged):
        assert found
    if not found:  # damage in bytes no reader uses: what it reads is what was written
        assert polars_reads(damaged, pl.read_parquet(part)) is not False


def test_polars_alone_would_read_a_flipped_bit_as_another_value(part: Path, tmp_path: Path) -> None:
    """Why the readers check: the damage this module finds is invisible to Polars."""
    start, end = data_region(part)
    original = pl.read_parquet(part)
    rng = np.random.default_rng(1)
    silent = 0
    for _ in range(20):  # bounded: a few flips are enough to show it
        data = bytearray(part.read_bytes())
        data[int(rng.integers(start, end))] ^= 1 << int(rng.integers(0, 8))
        damaged = tmp_path / "flip.parquet"
        damaged.write_bytes(bytes(data))
        assert verify_pages(damaged).problem is not None
        with contextlib.suppress(pl.exceptions.PolarsError):
            silent += not pl.read_parquet(damaged).equals(original)
    assert silent > 0
