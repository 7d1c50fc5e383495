"""Part-file checksums: every traffic and feedback part carries the CRC-32 of its bytes in its
name, and damage anywhere in it, which Polars would often decode into other values without a
word, is found before a reader scans it."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.traffic import FeedbackWriter, TrafficLogger, TrafficRecord, TrafficSettings
from kiln.traffic.checksums import verify_file


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


def test_traffic_and_feedback_parts_carry_their_sum(part: Path, tmp_path: Path) -> None:
    assert verify_file(part) == verify_file(part).__class__(checked=True)
    with FeedbackWriter(tmp_path) as feedback:
        feedback.add("r1", 3, model="digits")
    (labels,) = (tmp_path / "feedback").rglob("part-*.parquet")
    check = verify_file(labels)
    assert check.checked and check.problem is None


def test_a_file_without_a_sum_is_readable_and_counted_unchecked(tmp_path: Path) -> None:
    path = tmp_path / "part-old.parquet"
    pl.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]}).write_parquet(path)
    check = verify_file(path)
    assert check.problem is None and not check.checked


def test_a_file_renamed_to_another_sum_is_damaged(part: Path, tmp_path: Path) -> None:
    other = tmp_path / "part-x-c00000000.parquet"
    other.write_bytes(part.read_bytes())
    problem = verify_file(other).problem
    assert problem is not None and "do not match the CRC-32" in problem


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    where=st.floats(0, 1, exclude_max=True),
    bit=st.integers(0, 7),
    span=st.sampled_from([1, 2048, -1]),
)
def test_any_damage_is_found(part: Path, tmp_path: Path, where: float, bit: int, span: int) -> None:
    """A flipped bit, 2 KB of random bytes, or a truncation, anywhere in the file."""
    data = bytearray(part.read_bytes())
    at = int(where * len(data))
    if span == 1:
        data[at] ^= 1 << bit
    elif span == -1:
        del data[at:]
    else:
        stop = min(len(data), at + span)
        replaced = np.random.default_rng(at).bytes(stop - at)
        if replaced == bytes(data[at:stop]):
            return  # no change at all (vanishingly rare)
        data[at:stop] = replaced
    damaged = tmp_path / part.name
    damaged.write_bytes(bytes(data))
    assert verify_file(damaged).problem is not None


def test_polars_alone_would_read_a_flipped_bit_as_another_value(part: Path, tmp_path: Path) -> None:
    """Why the readers check: much of this damage is invisible to Polars."""
    original = pl.read_parquet(part)
    size = part.stat().st_size
    rng = np.random.default_rng(1)
    silent = 0
    for _ in range(20):  # bounded: a few flips are enough to show it
        data = bytearray(part.read_bytes())
        data[int(rng.integers(4, size // 2))] ^= 1 << int(rng.integers(0, 8))
        damaged = tmp_path / part.name
        damaged.write_bytes(bytes(data))
        assert verify_file(damaged).problem is not None
        with contextlib.suppress(pl.exceptions.PolarsError):
            silent += not pl.read_parquet(damaged).equals(original)
    assert silent > 0
