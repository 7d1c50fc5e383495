"""A gRPC server that answers like `kiln serve` and runs no model: the ceiling that
`serving.py` measures Kiln against (client + grpc.aio + this host, no inference at all).

    python benchmarks/null_server.py KILN_PORT --model digits

It copies the model's metadata and config from the `kiln serve` on KILN_PORT, answers every
ModelInfer with one precomputed response, and prints `null server ready: port N` once it
listens on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc
import numpy as np


async def null_server(kiln_port: int, model: str) -> None:
    """Answer like kiln serve does (its metadata and config, replayed), computing nothing."""
    from kiln.serving.grpc.generated.inference import grpc_service_pb2 as pb
    from kiln.serving.grpc.generated.inference import grpc_service_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{kiln_port}") as channel:
        kiln = pb_grpc.GRPCInferenceServiceStub(channel)
        metadata = await kiln.ModelMetadata(pb.ModelMetadataRequest(name=model))
        config = await kiln.ModelConfig(pb.ModelConfigRequest(name=model))
    response = pb.ModelInferResponse(model_name=model, model_version=metadata.versions[-1])
    response.outputs.add(name="logits", datatype="FP32", shape=[1, 10])
    response.raw_output_contents.append(np.zeros((1, 10), np.float32).tobytes())

    class NoModel(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
        async def ServerLive(self, request: Any, context: Any) -> Any:
            return pb.ServerLiveResponse(live=True)

        async def ServerReady(self, request: Any, context: Any) -> Any:
            return pb.ServerReadyResponse(ready=True)

        async def ModelReady(self, request: Any, context: Any) -> Any:
            return pb.ModelReadyResponse(ready=True)

        async def ServerMetadata(self, request: Any, context: Any) -> Any:
            return pb.ServerMetadataResponse(name="no-model", version="0")

        async def ModelMetadata(self, request: Any, context: Any) -> Any:
            return metadata

        async def ModelConfig(self, request: Any, context: Any) -> Any:
            return config

        async def ModelInfer(self, request: Any, context: Any) -> Any:
            response.id = request.id
            return response

    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(NoModel(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"null server ready: port {port}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kiln_port", type=int, help="the kiln serve to copy metadata from")
    parser.add_argument("--model", required=True, help="the served model's name")
    args = parser.parse_args()
    asyncio.run(null_server(args.kiln_port, args.model))


if __name__ == "__main__":
    main()
