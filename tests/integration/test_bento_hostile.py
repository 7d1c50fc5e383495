"""The BentoML service against hostile and careless clients, through a real `bentoml serve`:
bounded bodies and images, labels checked per item, back-pressure instead of lost labels,
numbers too big to parse, and errors that name the problem without leaking internals.

One server for the module. It runs with the default body and pixel limits, a feedback buffer
of 8 labels (so that a full buffer is easy to reach) and non-finite inputs allowed (the refusal,
the default, is tested in test_bento.py against a server with default settings).
"""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import kiln.registry
from kiln.settings import Settings
from kiln.traffic import scan_feedback
from tests.conftest import wait_until
from tests.integration.bento_harness import bento_serve
from tests.integration.grpc_harness import images, register

pytestmark = pytest.mark.slow

MAX_BODY_BYTES = 16 * 1024 * 1024  # KILN_BENTO_MAX_BODY_BYTES' default
MAX_IMAGE_PIXELS = 4096 * 4096  # KILN_BENTO_MAX_IMAGE_PIXELS' default
FEEDBACK_BUFFER = 8


@dataclass
class Served:
    url: str
    home: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("kiln-home")
    with kiln.registry.open(settings=Settings(home=home)) as registry:
        register(registry, tmp_path_factory.mktemp("models"), "digits", seed=1)
    env = {
        "KILN_HOME": str(home),
        "BENTOML_HOME": str(tmp_path_factory.mktemp("bentoml-home")),
        "KILN_THREADS": "1",
        "KILN_TRAFFIC_FLUSH_INTERVAL_S": "0.2",
        "KILN_TRAFFIC_MAX_BUFFERED_ROWS": str(FEEDBACK_BUFFER),
        "KILN_SERVE_ALLOW_NONFINITE": "true",
    }
    with bento_serve("kiln.serving.bento:KilnService", env, log_path=home / "serve.log") as url:
        yield Served(url, home)


def _post(url: str, route: str, body: Any) -> httpx.Response:
    return httpx.post(f"{url}/{route}", json=body, timeout=60)


def _post_raw(url: str, route: str, body: bytes) -> httpx.Response:
    headers = {"content-type": "application/json"}
    return httpx.post(f"{url}/{route}", content=body, headers=headers, timeout=60)


def _upload(url: str, data: bytes, name: str = "digit.png") -> httpx.Response:
    files = {"image": (name, data, "image/png")}
    return httpx.post(f"{url}/classify_image", files=files, timeout=60)


def _stored_labels(home: Path) -> dict[str, int]:
    frame = scan_feedback(home).frame.collect()
    return dict(zip(frame["request_id"].to_list(), frame["label"].to_list(), strict=True))


def _png(width: int, height: int, rows: int | None = None) -> bytes:
    """An 8-bit grayscale PNG of zeros, compressed row by row (never whole in memory).

    Zeros compress about 1000:1, so a 144-megapixel image is a 140 KB file: a decompression
    bomb. `rows` writes fewer rows than the header claims (a header-only lie).
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte, then the pixels
    data = [compressor.compress(row) for _ in range(height if rows is None else rows)]
    data.append(compressor.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(data))
        + chunk(b"IEND", b"")
    )


def _noise_png() -> bytes:
    """A 28x28 PNG of random pixels: incompressible, so a prefix of it ends inside the data."""
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """The status and body of one HTTP/1.1 response with a Content-Length (bounded reads)."""
    data = b""
    for _ in range(1000):
        if b"\r\n\r\n" in data:
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            fields = dict(line.lower().split(": ", 1) for line in lines[1:])
            if len(body) >= int(fields.get("content-length", "0")):
                return int(lines[0].split()[1]), body
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    raise AssertionError(f"no complete response: {data[:500]!r}")


Span = tuple[float, float]
"""When something started and ended (time.monotonic)."""


def _probe_livez_while(url: str, busy: threading.Thread) -> list[Span]:
    """/livez asked back to back while `busy` runs, and once more after (bounded in count):
    each probe's span."""
    spans: list[Span] = []
    with httpx.Client(timeout=60) as client:
        while len(spans) < 5000:
            running = busy.is_alive()
            started = time.monotonic()
            assert client.get(f"{url}/livez").status_code == 200
            spans.append((started, time.monotonic()))
            if not running:
                break
    return spans


# -- feedback (issue 13, items 2 and 3a) --------------------------------------------------------


def test_out_of_range_labels_are_refused_per_item_and_the_valid_one_is_stored(
    served: Served,
) -> None:
    items = [
        {"request_id": "huge", "label": 2**63},
        {"request_id": "wide", "label": 100_000},
        {"request_id": "negative", "label": -1},
        {"request_id": "valid", "label": 3},
    ]
    response = _post(served.url, "feedback", {"items": items})
    assert response.status_code == 200, response.text
    receipt = response.json()
    assert receipt["accepted"] == 1
    reasons = {r["index"]: r["reason"] for r in receipt["rejected"]}
    assert sorted(reasons) == [0, 1, 2]
    assert "0-9" in reasons[0], reasons  # the valid range
    assert "0-9" in reasons[1] or "item 0" in reasons[1], reasons  # (a repeat may refer back)
    assert "negative" in reasons[2]
    assert wait_until(lambda: "valid" in _stored_labels(served.home), 60)
    stored = _stored_labels(served.home)
    assert stored["valid"] == 3
    assert not {"huge", "wide", "negative"} & set(stored)


def test_a_label_too_long_to_parse_is_a_400(served: Served) -> None:
    body = b'{"items": [{"request_id": "a", "label": ' + b"9" * 5000 + b"}]}"
    response = _post_raw(served.url, "feedback", body)
    assert response.status_code == 400, response.text
    assert "number out of range" in response.text


def test_a_full_feedback_buffer_is_back_pressure_and_keeps_nothing(served: Served) -> None:
    ids = [f"crowd-{i}" for i in range(FEEDBACK_BUFFER + 1)]
    response = _post(
        served.url, "feedback", {"items": [{"request_id": r, "label": 1} for r in ids]}
    )
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) >= 1
    assert "retry" in response.text
    # A later label is written; none of the refused call's labels are (writes keep order).
    marker = _post(served.url, "feedback", {"items": [{"request_id": "after-full", "label": 2}]})
    assert marker.status_code == 200, marker.text
    assert wait_until(lambda: "after-full" in _stored_labels(served.home), 60)
    assert not set(ids) & set(_stored_labels(served.home))


def test_too_many_feedback_items_in_one_call_is_a_400(served: Served) -> None:
    items = [{"request_id": f"r{i}", "label": 1} for i in range(10_001)]
    response = _post(served.url, "feedback", {"items": items})
    assert response.status_code == 400, response.text
    assert "split them" in response.text


# -- request bodies (item 9) -------------------------------------------------------------------


def test_a_declared_body_over_the_limit_is_413_before_it_is_sent(served: Served) -> None:
    """Content-Length alone decides: the server answers without waiting for the body."""
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1073741824\r\n\r\n"
        )
        status, body = _read_response(sock)
    assert status == 413, body
    assert b"KILN_BENTO_MAX_BODY_BYTES" in body
    assert str(MAX_BODY_BYTES).encode() in body


def test_a_streamed_body_over_the_limit_is_413(served: Served) -> None:
    """No Content-Length (chunked): the server counts what arrives and stops at the limit."""

    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": ['
        piece = b"0.0," * 16384
        for _ in range(MAX_BODY_BYTES // len(piece) + 1):
            yield piece

    headers = {"content-type": "application/json"}
    response = httpx.post(f"{served.url}/predict", content=chunks(), headers=headers, timeout=60)
    assert response.status_code == 413, response.text
    assert "KILN_BENTO_MAX_BODY_BYTES" in response.text
    assert _post(served.url, "predict", {"inputs": images(1).tolist()}).status_code == 200


# -- images (items 9 and 12) -------------------------------------------------------------------


def test_a_decompression_bomb_is_refused_from_its_header(served: Served) -> None:
    bomb = _png(12_000, 12_000)  # 144 megapixels in a 140 KB file
    assert len(bomb) < 200_000
    answers: list[httpx.Response] = []
    upload = threading.Thread(target=lambda: answers.append(_upload(served.url, bomb)))
    upload.start()
    probes = _probe_livez_while(served.url, upload)
    upload.join()
    (response,) = answers
    assert response.status_code == 400, response.text
    assert "12000x12000" in response.text
    assert str(MAX_IMAGE_PIXELS) in response.text
    assert "KILN_BENTO_MAX_IMAGE_PIXELS" in response.text
    assert probes  # /livez answered throughout


def test_a_header_claiming_65535_squared_pixels_is_a_400(served: Served) -> None:
    response = _upload(served.url, _png(65535, 65535, rows=1))
    assert response.status_code == 400, response.text
    assert "65535x65535" in response.text


def test_images_are_decoded_off_the_event_loop(served: Served) -> None:
    """A large image within the limit takes a while to decode; /livez answers meanwhile.

    Were the decode on the event loop, the /livez asked while it runs would wait for all of
    it, during every upload: some probe overlapping each upload would take most of the
    upload's time. Off the loop, probes stay short (a busy host may delay one now and then:
    one upload in three without such a delay is enough).
    """
    side = int(MAX_IMAGE_PIXELS**0.5)
    large = _png(side, side)
    uploads: list[Span] = []

    def upload() -> None:
        for _ in range(3):
            started = time.monotonic()
            response = _upload(served.url, large)
            uploads.append((started, time.monotonic()))
            assert response.status_code == 200, response.text

    busy = threading.Thread(target=upload)
    busy.start()
    probes = _probe_livez_while(served.url, busy)
    busy.join()
    assert len(uploads) == 3

    def slowest_probe_share(start: float, end: float) -> float:
        overlapping = [b - a for a, b in probes if a < end and b > start]
        return max(overlapping, default=0.0) / (end - start)

    shares = [slowest_probe_share(*span) for span in uploads]
    assert min(shares) < 0.5, shares


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"not an image at all", "not a PNG or JPEG image"),
        (_noise_png()[:400], "truncated or damaged"),
        (b"GIF89a" + bytes(64), "not a PNG or JPEG image"),
    ],
    ids=["text", "truncated-png", "gif"],
)
def test_image_errors_name_the_problem_and_nothing_internal(
    served: Served, data: bytes, problem: str
) -> None:
    response = _upload(served.url, data, name="upload.png")
    assert response.status_code == 400, response.text
    message = response.json()[0]["error"]
    assert problem in message
    for internal in ("tmp", "0x", "BytesIO", "<", "/"):
        assert internal not in message, message


def test_a_valid_image_is_still_classified(served: Served) -> None:
    response = _upload(served.url, _noise_png())
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 1


# -- numbers too big to parse (item 10) --------------------------------------------------------


def test_a_version_of_5000_digits_is_a_400_naming_the_field(served: Served) -> None:
    response = _post(served.url, "infer", {"inputs": images(1).tolist(), "version": "9" * 5000})
    assert response.status_code == 400, response.text
    assert "version" in response.text
    assert len(response.text) < 2000  # the value is not echoed whole


def test_numbers_too_long_to_parse_are_400s(served: Served) -> None:
    row = json.dumps(images(1).tolist()).encode()
    huge = b"9" * 5000
    for route, body in [
        ("infer", b'{"inputs": ' + row + b', "version": ' + huge + b"}"),
        ("predict", b'{"inputs": [[[[' + huge + b"]]]]}"),
    ]:
        response = _post_raw(served.url, route, body)
        assert response.status_code == 400, (route, response.text)


def test_integers_beyond_int64_in_inputs_are_numbers(served: Served) -> None:
    """JSON integers too big for int64 parse as Python ints (an object array): still numbers."""
    rows: Any = images(1).tolist()
    rows[0][0][0][0] = 10**30
    response = _post(served.url, "predict", {"inputs": rows})
    assert response.status_code == 200, response.text


# -- what clients see of the server (item 12) --------------------------------------------------


def test_model_info_shows_the_registry_kind_not_its_path(served: Served) -> None:
    info = _post(served.url, "model_info", {})
    assert info.status_code == 200, info.text
    source = info.json()["source"]
    assert "sqlite" in source
    assert str(served.home) not in info.text
    assert "registry.db" not in info.text


# -- non-finite inputs (item 15): allowed on this server by KILN_SERVE_ALLOW_NONFINITE -----------


def test_non_finite_inputs_pass_when_the_setting_allows_them(served: Served) -> None:
    x = images(1)
    x[0, 0, 0, 0] = np.nan
    response = _post_raw(served.url, "predict", json.dumps({"inputs": x.tolist()}).encode())
    assert response.status_code == 200, response.text
