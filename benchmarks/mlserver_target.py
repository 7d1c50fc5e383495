"""MLServer 1.7.1 as a serving-benchmark target: one process, optionally pinned, gRPC port back.

    benchmarks/setup_mlserver.sh                               # once: .bench/mlserver-venv
    python benchmarks/mlserver_target.py                       # digits from .bench/serving-home
    python benchmarks/mlserver_target.py MODEL.onnx --max-batch-time 0.0005  # batching on

`start_mlserver` writes settings.json and a model-settings.json (the custom runtime in
`mlserver_runtime.py`, MLServer's adaptive batching settings) into a temporary directory and runs
`.bench/mlserver-venv/bin/mlserver start DIR` under `taskset -c CORES`. MLServer lives in its
own virtualenv because it needs protobuf<7; this module runs in Kiln's and talks to it only over
gRPC (tritonclient), so it never imports mlserver.

Settings chosen so the comparison with `kiln serve` on one core is fair:
- `parallel_workers: 0`: inference in the server process itself. MLServer's default (1) adds a
  worker process fed over a queue: two processes on one pinned core, plus the hop between them.
- `debug: false`: debug (MLServer's default) adds a gRPC access-log interceptor per request.
- `metrics_endpoint: null`: no Prometheus interceptor and no metrics server, as kiln serve runs
  in the benchmark (metrics off).
- adaptive batching off by default (`MAX_BATCH_TIME` 0: MLServer skips its batcher when
  max_batch_time is 0), because it measured better for MLServer here. Paired, interleaved runs
  at concurrency 32, MLServer on core 1, client on core 0, 2026-12-02, on a host loaded by
  other work (load average 5 on 2 cores, so absolute numbers are low):
  max_batch_time 0: 702 and 743 infer/s, 1,420 and 1,295 us server CPU per request;
  0.0005 s (max_batch_size 32): 493 and 510 infer/s, 2,006 and 1,915 us, mean batch 4.4;
  0.002 s: 623 and 550 infer/s against 642 and 642 at 0 in the same rounds.
  Its batcher forms batches but costs more Python per request (merging and splitting the
  decoded requests) than onnxruntime saves per image. `--max-batch-time` sets it per run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from clients import Sample, grpc_client, image
from serving import stop as _stop

REPO = Path(__file__).resolve().parent.parent
MLSERVER_VENV = REPO / ".bench" / "mlserver-venv"
RUNTIME = Path(__file__).with_name("mlserver_runtime.py")
MAX_BATCH_SIZE = 32
MAX_BATCH_TIME = 0.0
"""Seconds MLServer's adaptive batcher waits to fill a batch; 0 turns it off (see above)."""
READY_TIMEOUT_S = 120.0
COUNTERS = re.compile(r"mlserver_runtime: (\d+) executions, (\d+) images")
"""The line `mlserver_runtime.py` prints at exit."""


def start_mlserver(
    onnx: Path,
    model: str,
    cores: str | None,
    stack: contextlib.ExitStack,
    *,
    max_batch_time: float = MAX_BATCH_TIME,
    log: Path | None = None,
) -> int:
    """Start MLServer serving `onnx` as `model`; return its gRPC port once the model is ready.

    `cores` is a `taskset -c` list ("1", "0,1"); None runs it unpinned. The process is stopped
    (terminate, then kill after 30 s) and its directory removed when `stack` closes. Raises
    FileNotFoundError when the virtualenv or the ONNX file is missing, RuntimeError (with the
    tail of MLServer's log) when it exits or is not ready in `READY_TIMEOUT_S`. MLServer's
    output goes to `log` when given (it outlives the stack), else into the directory.
    """
    mlserver = MLSERVER_VENV / "bin" / "mlserver"
    if not mlserver.exists():
        raise FileNotFoundError(f"no {mlserver}: run benchmarks/setup_mlserver.sh first")
    if not onnx.is_file():
        raise FileNotFoundError(f"no ONNX file at {onnx}")
    root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mlserver-")))
    grpc_port, http_port, metrics_port = _free_ports(3)
    settings = {
        "debug": False,
        "host": "127.0.0.1",
        "grpc_port": grpc_port,
        "http_port": http_port,
        # Unused while metrics_endpoint is null, but never the default 8082 of another run.
        "metrics_port": metrics_port,
        "metrics_endpoint": None,
        "parallel_workers": 0,
        "model_repository_root": str(root),
        "load_models_at_startup": True,
    }
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    model_dir = root / model
    model_dir.mkdir()
    # MLServer imports the runtime from the folder of model-settings.json.
    shutil.copy(RUNTIME, model_dir / RUNTIME.name)
    model_settings = {
        "name": model,
        "implementation": f"{RUNTIME.stem}.OnnxRuntimeModel",
        "max_batch_size": MAX_BATCH_SIZE,
        "max_batch_time": max_batch_time,
        "parameters": {"uri": str(onnx.resolve())},
    }
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))

    command = [str(mlserver), "start", str(root)]
    if cores is not None:
        command = ["taskset", "-c", cores, *command]
    # Kiln's PYTHONPATH must not reach MLServer's interpreter; OMP stays at the one core.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    log_path = log or root / "mlserver.log"
    output = stack.enter_context(log_path.open("w"))
    process = subprocess.Popen(
        command, cwd=root, env=env, stdout=output, stderr=subprocess.STDOUT, text=True
    )
    stack.callback(_stop, process)
    _wait_ready(process, grpc_port, model, log_path)
    return grpc_port


def onnx_artifact(home: Path, model: str, kind: str = "onnxruntime") -> Path:
    """The verified file of `model`@production's newest `kind` artifact in the Kiln `home`.

    Registry blobs are stored by sha256 without an extension, so a `*.onnx` glob finds none.
    """
    import kiln.registry
    from kiln.settings import Settings

    with kiln.registry.open(settings=Settings(home=home)) as registry:
        version = registry.resolve(model)
        found = registry.artifacts(version.name, version.version, kind)
        if not found:
            raise FileNotFoundError(
                f"{version.name}:{version.version} in {home} has no {kind} artifact "
                f"(KILN_HOME={home} kiln compile {version.name}:{version.version} "
                f"--target {kind})"
            )
        return registry.artifact_file(found[-1])


def _free_ports(count: int) -> list[int]:
    # All bound at once so the ports differ; MLServer binds them again a moment later.
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def _wait_ready(process: subprocess.Popen[str], port: int, model: str, log: Path) -> None:
    """Poll gRPC ServerReady and ModelReady until both say yes (Kiln's tritonclient)."""
    from tritonclient.grpc import InferenceServerClient, InferenceServerException

    client = InferenceServerClient(f"127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"mlserver exited with code {process.returncode} before it was ready; "
                    f"its log ends:\n{_tail(log)}"
                )
            with contextlib.suppress(InferenceServerException):
                ready = client.is_server_ready(client_timeout=1)
                if ready and client.is_model_ready(model, client_timeout=1):
                    return
            time.sleep(0.2)
    finally:
        client.close()
    raise RuntimeError(
        f"mlserver was not ready on port {port} in {READY_TIMEOUT_S:.0f} s; "
        f"its log ends:\n{_tail(log)}"
    )


def _tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


# -- the proof that it works ------------------------------------------------------------------


def check_answer(port: int, model: str, onnx: Path) -> None:
    """One ModelInfer as the benchmark client sends it (raw_input_contents); the answer must
    be `logits` FP32 (1,10) equal to onnxruntime's in this process."""
    import grpc
    import numpy as np
    import onnxruntime as ort
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 28, 28])
    request.raw_input_contents.append(image().tobytes())
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    (output,) = answer.outputs
    if answer.raw_output_contents:
        logits = np.frombuffer(answer.raw_output_contents[0], np.float32)
    else:
        logits = np.asarray(output.contents.fp32_contents, np.float32)
    logits = logits.reshape(tuple(output.shape))
    expected = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"input": image()}
    )[0]
    where = "raw_output_contents" if answer.raw_output_contents else "contents"
    print(
        f"answer: {output.name} {output.datatype} {list(output.shape)} in {where}, "
        f"max |diff| vs onnxruntime here {float(np.abs(logits - expected).max()):.2e}"
    )
    if output.name != "logits" or output.datatype != "FP32" or logits.shape != (1, 10):
        raise RuntimeError(f"unexpected answer from mlserver: {answer}")
    if not np.allclose(logits, expected, atol=1e-4):
        raise RuntimeError("mlserver's logits differ from onnxruntime's on the same file")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("onnx", nargs="?", type=Path, help="default: --model's artifact")
    parser.add_argument("--home", type=Path, default=REPO / ".bench" / "serving-home")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--server-cores", default="1", help="taskset -c list for MLServer")
    parser.add_argument("--client-core", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--max-batch-time", type=float, default=MAX_BATCH_TIME)
    args = parser.parse_args()

    onnx = args.onnx or onnx_artifact(args.home, args.model)
    log = Path(tempfile.mkstemp(prefix="mlserver-", suffix=".log")[1])
    try:
        result, cpu = measure(args, onnx, log)
        batches = COUNTERS.search(log.read_text())
    finally:
        log.unlink(missing_ok=True)
    served = result.throughput * args.seconds
    print(
        f"mlserver (cores {args.server_cores}, max_batch_time {args.max_batch_time} s), "
        f"python client on core {args.client_core}, concurrency {args.concurrency}: "
        f"{result.throughput:,.0f} infer/s, p50 {result.p50_us / 1000:.2f} ms, "
        f"p99 {result.p99_us / 1000:.2f} ms, server CPU {cpu / served * 1e6:.0f} us per request"
    )
    if batches:
        executions, images = int(batches[1]), int(batches[2])
        print(f"whole run: {executions} executions, {images} images, mean batch "
              f"{images / max(executions, 1):.2f}")  # fmt: skip


def measure(args: argparse.Namespace, onnx: Path, log: Path) -> tuple[Sample, float]:
    """Start, check one answer, warm up, then the closed loop: (its sample, server CPU s).

    MLServer is stopped before this returns, so its exit counters are in `log`.
    """
    with contextlib.ExitStack() as stack:
        started = time.monotonic()
        port = start_mlserver(
            onnx, args.model, args.server_cores, stack, max_batch_time=args.max_batch_time,
            log=log,
        )  # fmt: skip
        print(f"mlserver ready on gRPC port {port} in {time.monotonic() - started:.1f} s")
        # After the start, so MLServer does not inherit this core before taskset sets its own.
        os.sched_setaffinity(0, {args.client_core})
        check_answer(port, args.model, onnx)
        pid = _only_child()
        # Warm up first, so the CPU counted below is the measured window's only.
        asyncio.run(grpc_client(port, args.model, args.concurrency, args.warmup, 0.0))
        cpu_before = _cpu_seconds(pid)
        result = asyncio.run(grpc_client(port, args.model, args.concurrency, args.seconds, 0.0))
        return result, _cpu_seconds(pid) - cpu_before


def _only_child() -> int:
    """MLServer's pid: this process's one child (taskset execs the command it runs)."""
    me = os.getpid()
    (child,) = Path(f"/proc/{me}/task/{me}/children").read_text().split()
    return int(child)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
