"""The ready line `kiln serve` prints: written and read by one module, so they agree."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kiln.serving.ready import Endpoints, parse_ready_line, ready_line

PORTS = st.integers(0, 65535)
LABELS = st.from_regex(
    r"[a-z][a-z0-9_.-]{0,20}:[1-9][0-9]{0,5} \((onnx|tensorrt)/(cpu|cuda:0)\)", fullmatch=True
)


def test_the_line_users_see() -> None:
    endpoints = Endpoints(8001, 8002, ("digits:1 (onnx/cpu)", "letters:3 (onnx/cpu)"))
    line = ready_line(endpoints)
    assert line == (
        "kiln serve ready: grpc port 8001, metrics port 8002; "
        "serving digits:1 (onnx/cpu), letters:3 (onnx/cpu)"
    )
    assert parse_ready_line(line + "\n") == endpoints


def test_without_metrics_or_models() -> None:
    line = ready_line(Endpoints(50051, None, ()))
    assert line == "kiln serve ready: grpc port 50051; serving no models"
    assert parse_ready_line(line) == Endpoints(50051, None, ())


@given(PORTS, st.none() | PORTS, st.lists(LABELS, max_size=4).map(tuple))
def test_every_line_reads_back_as_written(
    grpc_port: int, metrics_port: int | None, models: tuple[str, ...]
) -> None:
    endpoints = Endpoints(grpc_port, metrics_port, models)
    assert parse_ready_line(ready_line(endpoints)) == endpoints


def test_other_lines_are_not_ready_lines() -> None:
    for line in ("", "\n", "kiln serve ready:", "INFO kiln.serving: loaded digits:1", "ready"):
        assert parse_ready_line(line) is None
