"""The one interface every backend implements, and the options a caller may pass to `load`."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from kiln_engines.errors import EngineClosed
from kiln_engines.signature import InputValidator, Signature


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """How to run an engine. Every field has a default that suits a CPU serving host."""

    device: str = "cpu"
    """"cpu", "cuda" or "cuda:N". A backend refuses a device it cannot use on this host."""

    intra_op_threads: int = 0
    """Threads inside one operator; 0 lets the library choose (one per core)."""

    inter_op_threads: int = 0
    """Threads running independent operators in parallel; 0 lets the library choose."""

    providers: tuple[str, ...] = ()
    """onnxruntime execution providers, in order of preference; empty chooses by `device`."""

    cache_dir: Path | None = None
    """Where TensorRT keeps its timing cache and plans it rebuilt (Kiln: KILN_HOME/cache)."""

    allow_rebuild: bool = True
    """Rebuild a TensorRT plan from the ONNX model it carries when it was built elsewhere."""

    def __post_init__(self) -> None:
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError("thread counts must be >= 0 (0 lets the library choose)")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")

    @property
    def device_type(self) -> str:
        return "cuda" if self.device.startswith("cuda") else "cpu"

    @property
    def device_index(self) -> int:
        _, _, index = self.device.partition(":")
        return int(index) if index else 0


class Engine(abc.ABC):
    """A loaded, compiled model.

    `infer` validates its inputs against `signature` (raising `EngineInputError`), runs the
    backend and returns one numpy array per output name. Engines are used from one thread at a
    time unless a backend says otherwise; `close()` releases native resources and is idempotent.
    """

    kind: str
    """The artifact kind this engine runs: onnxruntime, onnx, aotinductor or tensorrt."""

    def __init__(self, signature: Signature, device: str) -> None:
        self.signature = signature
        self.device = device
        self._validate = InputValidator(signature)
        self._closed = False

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._closed:
            raise EngineClosed(f"this {self.kind} engine was closed; load it again")
        self._validate(inputs)
        return self._run(inputs)

    @abc.abstractmethod
    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run validated inputs through the backend."""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._release()

    def _release(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing native
        """Free native resources; called once by `close()`."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind} on {self.device}: {self.signature.describe()}>"
