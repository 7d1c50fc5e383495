"""Clients that keep a server busy while a test changes it underneath them (a hot swap, a
rollout, SIGTERM), recording every answer and every failure.

    with BackgroundLoad(server.url, images(1)) as load:
        load.wait_until(lambda: load.total() >= 200)
        ...  # move an alias, start a rollout, send SIGTERM
    assert load.errors == []
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType

import numpy as np
import tritonclient.grpc as triton
import tritonclient.http as triton_http

from tests.conftest import wait_until
from tests.integration.grpc_harness import INPUT, OUTPUT


class BackgroundLoad:
    """`clients` threads, each sending `x` to `model` back to back with the stock Triton client
    until the block ends.

    A failed request is recorded in `errors`; the client goes on sending, or stops with
    `until_refused` (a server shutting down refuses the rest). With `request_ids`, client `w`
    names its requests `{id_prefix}w{w}-{i}` and `answered` lists those answered; without, the
    server assigns ids (a rollout routes by them). With `http`, `url` is the server's HTTP
    endpoint and the clients are `tritonclient.http`'s (the same calls over KServe v2 REST).
    """

    def __init__(
        self,
        url: str,
        x: np.ndarray,
        *,
        clients: int = 4,
        model: str = "digits",
        request_ids: bool = False,
        until_refused: bool = False,
        http: bool = False,
        id_prefix: str = "",
    ) -> None:
        self.url = url
        self.id_prefix = id_prefix
        self.http = http
        self.x = x
        self.model = model
        self.request_ids = request_ids
        self.until_refused = until_refused
        self.stop = threading.Event()
        self.versions: list[list[str]] = [[] for _ in range(clients)]
        """Each client's answers' versions, in the order it got them."""
        self.answers: list[str] = []
        """Every answer's version, in the order the answers came (all clients)."""
        self.outputs: dict[str, set[bytes]] = {}
        """The distinct outputs (raw bytes) each version answered with."""
        self.answered: list[str] = []
        """The ids of the requests answered (with `request_ids`)."""
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)
        ]

    def __enter__(self) -> BackgroundLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop.set()
        self.join()

    def join(self, timeout: float = 60) -> None:
        """Wait for every client to finish (after `stop`, or after its refusal)."""
        for thread in self._threads:
            thread.join(timeout)

    def _run(self, index: int) -> None:
        transport = triton_http if self.http else triton
        tensor = transport.InferInput(INPUT, list(self.x.shape), "FP32")
        tensor.set_data_from_numpy(self.x)
        # tritonclient.http has no per-call timeout: its client's network_timeout (60 s) holds.
        timeout = {} if self.http else {"client_timeout": 30}
        with transport.InferenceServerClient(self.url) as client:
            sent = 0
            while not self.stop.is_set():
                request_id = f"{self.id_prefix}w{index}-{sent}" if self.request_ids else ""
                sent += 1
                try:
                    result = client.infer(self.model, [tensor], request_id=request_id, **timeout)
                except BaseException as exc:
                    with self._lock:
                        self.errors.append(exc)
                    if self.until_refused:
                        return
                    continue
                response = result.get_response()  # a dict over HTTP, a protobuf over gRPC
                version = response["model_version"] if self.http else response.model_version
                self.versions[index].append(version)
                output = result.as_numpy(OUTPUT).tobytes()
                with self._lock:
                    self.answers.append(version)
                    self.outputs.setdefault(version, set()).add(output)
                    if request_id:
                        self.answered.append(request_id)

    def total(self) -> int:
        """Answers so far."""
        return len(self.answers)

    def latest(self) -> set[str]:
        """The version of each client's last answer."""
        return {v[-1] for v in self.versions if v}

    def wait_until(
        self,
        condition: Callable[[], bool],
        timeout: float = 60,
        why: Callable[[], str] = lambda: "timed out waiting for the load to progress",
    ) -> None:
        """Wait for the load to reach `condition`; fail at once if any request failed.
        `why` says what the load did instead when it did not get there in time."""
        reached = wait_until(lambda: bool(self.errors) or condition(), timeout, interval=0.01)
        assert not self.errors, self.errors[:3]
        assert reached, why()

    def wait_for(self, versions: set[str], count: int = 100) -> None:
        """Wait until the last `count` answers came from exactly `versions`; no failures."""
        self.wait_until(
            lambda: self.total() >= count and self.last(count) == versions,
            why=lambda: f"last answers from {self.last(count)}, not {versions}",
        )

    def last(self, count: int) -> set[str]:
        """The versions of the last `count` answers."""
        with self._lock:
            return set(self.answers[-count:])
