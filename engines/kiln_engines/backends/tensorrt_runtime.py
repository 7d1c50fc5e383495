"""Running a TensorRT plan: one deserialized engine, one execution context, device buffers.

Name-based I/O tensors and `execute_async_v3` (TensorRT 10+); device memory and the stream come
from NVIDIA's cuda-python bindings, never from torch.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kiln_engines.backends.tensorrt_cuda import cuda_check
from kiln_engines.backends.tensorrt_plan import PlanHeader, batched_shape
from kiln_engines.engine import Engine
from kiln_engines.errors import EngineError, EngineLoadError

NAME = "tensorrt"


class TensorRTEngine(Engine):
    """A deserialized TensorRT engine with device buffers sized for its maximum batch.

    One execution context serves all calls, guarded by a lock (a context is not thread-safe).
    """

    kind = NAME

    def __init__(
        self, trt: Any, cudart: Any, plan: bytes, header: PlanHeader, device_index: int, path: Path
    ) -> None:
        super().__init__(header.signature.with_max_batch(header.max_batch), f"cuda:{device_index}")
        self._cudart = cudart
        self._lock = threading.Lock()
        self._buffers: dict[str, int] = {}
        self._stream: Any = None
        cuda_check(cudart.cudaSetDevice(device_index))
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise EngineLoadError(
                f"TensorRT {trt.__version__} refused to deserialize {path} although its header "
                f"says it was built here ({header.describe_target()}); rebuild it with "
                "`kiln compile --target tensorrt`",
                code="failed_precondition",
            )
        self._context = self._engine.create_execution_context()
        self._stream = cuda_check(cudart.cudaStreamCreate())
        max_shapes = {
            spec.name: batched_shape(self.signature, spec.name, header.max_batch)
            for spec in self.signature.inputs
        }
        for name, shape in max_shapes.items():
            self._context.set_input_shape(name, shape)
        self._dtypes: dict[str, np.dtype[Any]] = {}
        for spec in (*self.signature.inputs, *self.signature.outputs):
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(spec.name)))
            shape = max_shapes.get(spec.name) or tuple(self._context.get_tensor_shape(spec.name))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            self._buffers[spec.name] = cuda_check(cudart.cudaMalloc(max(nbytes, 1)))
            self._context.set_tensor_address(spec.name, self._buffers[spec.name])
            self._dtypes[spec.name] = dtype

    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with self._lock:
            for spec in self.signature.inputs:
                array = np.ascontiguousarray(inputs[spec.name])
                self._context.set_input_shape(spec.name, array.shape)
                cuda_check(
                    cudart.cudaMemcpyAsync(
                        self._buffers[spec.name], array.ctypes.data, array.nbytes, h2d, self._stream
                    )
                )
            if not self._context.execute_async_v3(int(self._stream)):
                raise EngineError("TensorRT failed to run the engine (execute_async_v3 failed)")
            outputs = {}
            for spec in self.signature.outputs:
                shape = tuple(self._context.get_tensor_shape(spec.name))
                host = np.empty(shape, dtype=self._dtypes[spec.name])
                cuda_check(
                    cudart.cudaMemcpyAsync(
                        host.ctypes.data, self._buffers[spec.name], host.nbytes, d2h, self._stream
                    )
                )
                outputs[spec.name] = host
            cuda_check(cudart.cudaStreamSynchronize(self._stream))
        return outputs

    def _release(self) -> None:
        for ptr in self._buffers.values():
            self._cudart.cudaFree(ptr)
        self._buffers.clear()
        if self._stream is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self._context = None
        self._engine = None
