"""The demo's users: stock tritonclient sending digits to `kiln serve`, and what they saw.

A `Phase` counts one stretch of traffic (answers, accuracy, which versions answered); `send`
runs one phase from a single client; `BackgroundLoad` keeps clients sending while the alias
moves, so that "no request fails during a swap" is measured, not claimed.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from kiln.errors import FailedPrecondition

MODEL = "digits"
"""The model the demo registers, serves and retrains."""
TEXT_MODEL = "reviews"
"""The model `kiln demo --task text` registers, serves and retrains."""


class Classifying(Protocol):
    """A client of the demo: one sample in, (request id, served version, class) out."""

    def classify(self, x: np.ndarray) -> tuple[str, int, int]: ...

    def close(self) -> None: ...


@dataclass
class Phase:
    """One stretch of the demo's traffic, as the clients saw it."""

    name: str
    version_counts: dict[int, int] = field(default_factory=dict)
    """Answers per version that gave them."""
    correct: int = 0
    total: int = 0
    """Requests answered."""
    failed: int = 0
    started: float = 0.0
    """When the first request went out (seconds since the epoch)."""
    ended: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")


def _tritonclient() -> object:
    try:
        import tritonclient.grpc as triton
    except ImportError as exc:  # the demo's own dependency, not the platform's
        raise FailedPrecondition(
            "kiln demo sends traffic with tritonclient: pip install 'tritonclient[grpc]'"
        ) from exc
    return triton


class Client:
    """Stock tritonclient over gRPC, one sample per request, client-chosen request ids."""

    def __init__(self, url: str) -> None:
        triton: Any = _tritonclient()
        self._triton = triton
        self._client = triton.InferenceServerClient(url)

    def classify(self, x: np.ndarray) -> tuple[str, int, int]:
        """(request id, served version, predicted class) for one (1, 1, 28, 28) sample."""
        tensor = self._triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        request_id = uuid.uuid4().hex
        result = self._client.infer(MODEL, [tensor], request_id=request_id)
        response = result.get_response()
        return request_id, int(response.model_version), int(result.as_numpy("logits").argmax())

    def close(self) -> None:
        self._client.close()


class TextClient:
    """Stock tritonclient sending one review per request as a BYTES tensor of UTF-8 text: the
    server tokenises it with the serving version's own tokenizer."""

    def __init__(self, url: str) -> None:
        triton: Any = _tritonclient()
        self._triton = triton
        self._client = triton.InferenceServerClient(url)

    def classify(self, x: np.ndarray) -> tuple[str, int, int]:
        """(request id, served version, predicted class) for one text (an object array of
        one string, any shape)."""
        texts = np.asarray([str(t).encode("utf-8") for t in np.ravel(x)], dtype=object)
        tensor = self._triton.InferInput("text", [len(texts)], "BYTES")
        tensor.set_data_from_numpy(texts)
        request_id = uuid.uuid4().hex
        result = self._client.infer(TEXT_MODEL, [tensor], request_id=request_id)
        response = result.get_response()
        return request_id, int(response.model_version), int(result.as_numpy("logits").argmax())

    def close(self) -> None:
        self._client.close()


def send(client: Classifying, phase: Phase, x: np.ndarray, y: np.ndarray,
         labels: list[tuple[str, int]]) -> None:  # fmt: skip
    """Send every sample; record accuracy, served versions and (id, true label) pairs."""
    phase.started = time.time()
    for sample, label in zip(x, y, strict=True):
        try:
            request_id, version, predicted = client.classify(sample[None])
        except Exception:  # any failure is what the demo counts; it goes on sending
            phase.failed += 1
            continue
        phase.total += 1
        phase.correct += int(predicted == label)
        phase.version_counts[version] = phase.version_counts.get(version, 0) + 1
        labels.append((request_id, int(label)))
    phase.ended = time.time()


class BackgroundLoad:
    """Clients that keep sending while the alias moves: the zero-downtime claim, measured."""

    def __init__(
        self,
        url: str,
        x: np.ndarray,
        threads: int = 2,
        client: Callable[[str], Classifying] = Client,
    ) -> None:
        self._x = x
        self._client = client
        self._stop = threading.Event()
        self.versions_seen: set[int] = set()
        self.sent = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(url, i)) for i in range(threads)]

    def _run(self, url: str, offset: int) -> None:
        client = self._client(url)
        i = offset
        while not self._stop.is_set():
            try:
                _, version, _ = client.classify(self._x[i % len(self._x)][None])
                with self._lock:
                    self.sent += 1
                    self.versions_seen.add(version)
            except Exception:  # a failed request during the swap is the number measured
                with self._lock:
                    self.sent += 1
                    self.failed += 1
            i += len(self._threads)
        client.close()

    def __enter__(self) -> BackgroundLoad:
        for t in self._threads:
            t.start()
        return self

    def wait_for_version(self, version: int, timeout: float) -> bool:
        """Whether an answer from `version` came within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if version in self.versions_seen:
                    return True
            self._stop.wait(0.1)
        return False

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
