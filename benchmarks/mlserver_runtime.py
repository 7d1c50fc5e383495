"""An MLServer custom runtime over one ONNX file, the way MLServer's docs write one.

Loaded by MLServer 1.7.1 itself (`implementation: mlserver_runtime.OnnxRuntimeModel` in the
model-settings.json that `mlserver_target.py` writes), inside `.bench/mlserver-venv`: Kiln's
own virtualenv cannot hold MLServer (it needs protobuf<7). onnxruntime runs with one intra-op
and one inter-op thread, sequential execution, CPU provider, as `kiln serve` does on the pinned
benchmark, so both servers run the same file with the same engine settings.

The file path is the model's `parameters.uri`. Input and output names come from the ONNX
session (the trainer's CNN: `input` FP32 (N,1,28,28) -> `logits` FP32 (N,10)); requests are
decoded with `NumpyCodec` (MLServer unpacks gRPC `raw_input_contents` itself) and answers
encoded with it, so MLServer's adaptive batcher can merge and split them along axis 0.

At exit it prints `mlserver_runtime: E executions, I images` to stderr (MLServer's log), so a
benchmark can see the batch sizes MLServer's batcher formed.
"""

from __future__ import annotations

import atexit
import sys
from typing import Any

import onnxruntime as ort
from mlserver import MLModel  # type: ignore[import-not-found]
from mlserver.codecs import NumpyCodec  # type: ignore[import-not-found]
from mlserver.errors import InferenceError, InvalidModelURI  # type: ignore[import-not-found]
from mlserver.types import (  # type: ignore[import-not-found]
    InferenceRequest,
    InferenceResponse,
)


class OnnxRuntimeModel(MLModel):  # type: ignore[misc]
    """One onnxruntime InferenceSession: every input by name, every output in the answer."""

    async def load(self) -> bool:
        parameters = self.settings.parameters
        if parameters is None or not parameters.uri:
            # MLServer's own message names the model; parameters.uri must be the ONNX path.
            raise InvalidModelURI(self.name)
        options = ort.SessionOptions()
        # One core per server on the pinned benchmark: a second thread would only contend.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(
            parameters.uri, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]
        self._executions = 0
        self._images = 0
        atexit.register(self._report)
        self.ready = True
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds: dict[str, Any] = {}
        for request_input in payload.inputs:
            if request_input.name not in self._inputs:
                raise InferenceError(
                    f"model {self.name!r} has no input {request_input.name!r}; "
                    f"inputs: {', '.join(self._inputs)}"
                )
            feeds[request_input.name] = self.decode(request_input, default_codec=NumpyCodec)
        results = self._session.run(self._outputs, feeds)
        self._executions += 1
        self._images += len(results[0])
        return InferenceResponse(
            id=payload.id,
            model_name=self.name,
            model_version=self.version,
            outputs=[
                NumpyCodec.encode_output(name, result)
                for name, result in zip(self._outputs, results, strict=True)
            ],
        )

    def _report(self) -> None:
        print(
            f"mlserver_runtime: {self._executions} executions, {self._images} images",
            file=sys.stderr,
            flush=True,
        )
