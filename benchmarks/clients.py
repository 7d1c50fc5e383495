"""The load generators the serving benchmarks drive, each measuring one `Sample`.

Closed loop: N asyncio tasks, each sending one prebuilt request, waiting for the answer and
sending it again, for `warmup` + `seconds`; only calls started after the warmup count. NVIDIA's
perf_analyzer (C++, `../shared/tools/install-perf-analyzer`) over gRPC or HTTP. Used by
`serving.py` and `http_stacks.py`; the request is one 1x28x28 FP32 digit image.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt


@dataclass
class Sample:
    target: str
    client: str
    concurrency: int
    throughput: float
    p50_us: float
    p99_us: float


def image() -> npt.NDArray[np.float32]:
    """The one input every client sends (seeded: every target computes the same)."""
    return np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)


async def closed_loop(
    call: Callable[[], Awaitable[int]], concurrency: int, seconds: float, warmup: float
) -> tuple[list[float], list[int]]:
    """Latencies (s) of the measured calls that answered 200 (or OK), and the failed codes.

    `call` returns a status: 200 for success, anything else is counted as a failure.
    """
    latencies: list[float] = []
    failures: list[int] = []
    started = time.perf_counter()
    measure_from, measure_to = started + warmup, started + warmup + seconds

    async def worker() -> None:
        while (now := time.perf_counter()) < measure_to:
            status = await call()
            done = time.perf_counter()
            if now < measure_from:
                continue
            if status == 200:
                latencies.append(done - now)
            else:
                failures.append(status)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, failures


def sample(
    target: str, client: str, concurrency: int, latencies: list[float], seconds: float
) -> Sample:
    ordered = np.sort(np.asarray(latencies)) * 1e6
    return Sample(
        target,
        client,
        concurrency,
        len(ordered) / seconds,
        float(np.percentile(ordered, 50)),
        float(np.percentile(ordered, 99)),
    )


@asynccontextmanager
async def grpc_caller(port: int, model: str) -> AsyncIterator[Callable[[], Awaitable[int]]]:
    """ModelInfer of one prebuilt request (raw input contents) through a grpc.aio stub
    (tritonclient's generated one) over one channel; each call returns 200."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 28, 28])
    request.raw_input_contents.append(image().tobytes())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def call() -> int:
            await stub.ModelInfer(request)
            return 200

        yield call


async def grpc_client(
    port: int, model: str, concurrency: int, seconds: float, warmup: float
) -> Sample:
    """`grpc_caller`'s request from `concurrency` tasks."""
    async with grpc_caller(port, model) as call:
        latencies, _ = await closed_loop(call, concurrency, seconds, warmup)
    return sample("", "python", concurrency, latencies, seconds)


def kserve_json(model: str) -> tuple[str, bytes]:
    """KServe v2's infer path and JSON body (`data` flat, as most JSON clients send it)."""
    tensor = {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32"}
    body = {"inputs": [{**tensor, "data": image().ravel().tolist()}]}
    return f"/v2/models/{model}/infer", json.dumps(body).encode()


def bento_json() -> tuple[str, bytes]:
    """The BentoML service's /predict path and JSON body (its own schema, nested lists)."""
    return "/predict", json.dumps({"inputs": image().tolist()}).encode()


@asynccontextmanager
async def http_caller(
    port: int, request: tuple[str, bytes], concurrency: int
) -> AsyncIterator[Callable[[], Awaitable[int]]]:
    """POST of one prebuilt JSON body (`request`: path, body) from an aiohttp client session;
    each call returns the HTTP status.

    aiohttp's client, not httpx: httpx.AsyncClient itself capped this host at ~110 requests/s
    at concurrency 32 against kiln serve's JSON path (aiohttp's: ~680/s, same server, same run).
    """
    import aiohttp

    path, body = request
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector) as session:

        async def call() -> int:
            async with session.post(path, data=body, headers=headers) as response:
                await response.read()
                return response.status

        yield call


async def http_client(
    port: int, request: tuple[str, bytes], target: str, concurrency: int, seconds: float,
    warmup: float,
) -> Sample:  # fmt: skip
    """`http_caller`'s request from `concurrency` tasks."""
    async with http_caller(port, request, concurrency) as call:
        latencies, failures = await closed_loop(call, concurrency, seconds, warmup)
    if failures:
        print(
            f"  {target} at concurrency {concurrency}: {len(failures)} requests failed "
            f"(HTTP {sorted(set(failures))}); throughput counts answered requests only"
        )
    return sample(target, "python-http", concurrency, latencies, seconds)


async def in_process(
    core: Any, model: str, concurrency: int, seconds: float, warmup: float
) -> Sample:
    """The ServingCore called from asyncio tasks in this process: no transport at all."""
    from kiln.serving.messages import InferRequest

    inputs = {"input": image()}

    async def call() -> int:
        await core.infer(InferRequest(model, inputs, transport="benchmark"))
        return 200

    latencies, _ = await closed_loop(call, concurrency, seconds, warmup)
    return sample("in-process", "python", concurrency, latencies, seconds)


def perf_analyzer(
    binary: Path, port: int, model: str, concurrency: int, seconds: float, protocol: str = "grpc",
    version: str = "",
) -> Sample | None:  # fmt: skip
    """perf_analyzer over `protocol` ("grpc", or "http": it sends Triton's binary tensor
    extension) at one concurrency; None when it fails (its output tail is printed).

    Without a `version` it reads the server's statistics to find the version that served; a
    server whose statistics do not move (a replaying one) needs the version named.
    """
    result = subprocess.run(
        [
            str(binary), "-m", model, "-i", protocol, "-u", f"127.0.0.1:{port}",
            "--concurrency-range", f"{concurrency}:{concurrency}",
            "--measurement-interval", str(int(seconds * 1000 / 3)),
            "--stability-percentage", "100", "--max-trials", "6", "--input-data", "zero",
            *(("-x", version) if version else ()),
        ],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    found = {
        key: re.search(rf"{pattern}: ([\d.]+)", result.stdout)
        for key, pattern in (("tp", "Throughput"), ("p50", "p50 latency"), ("p99", "p99 latency"))
    }
    if result.returncode != 0 or not all(found.values()):
        print(
            f"  perf_analyzer ({protocol}) failed at concurrency {concurrency}: "
            f"{result.stdout[-300:]}{result.stderr[-300:]}"
        )
        return None
    tp, p50, p99 = (float(m.group(1)) for m in found.values() if m)
    return Sample("", "perf_analyzer", concurrency, tp, p50, p99)
