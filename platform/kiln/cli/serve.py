"""`kiln serve`: the KServe v2 inference server, gRPC and HTTP (see kiln.serving)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError

from kiln.errors import InvalidArgument, Unavailable

if TYPE_CHECKING:
    from kiln.serving.ready import Endpoints
    from kiln.serving.settings import ServingSettings
    from kiln.settings import Settings

Models = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="REF",
        help="References to serve: digits (its production alias), digits@candidate, digits:3. "
        "The first reference to a model picks the version requests get by default; further "
        "ones load more versions that requests choose with model_version. Default: every "
        "model's production version.",
        show_default=False,
    ),
]


def serve(
    references: Models = None,
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--models",
            "-m",
            help="Same as the arguments (repeatable; `--models a b` also works).",
            show_default=False,
        ),
    ] = None,
    bundle: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="Serve the export bundles (kiln models export) at PATH instead of references: "
            "a bundle file, an unpacked bundle, or a directory of them (KServe: /mnt/models). "
            "Each is imported into KILN_HOME's registry first (every artifact's sha256 "
            "checked); each model's newest version is its default.",
            show_default=False,
        ),
    ] = None,
    model_name: Annotated[
        str | None,
        typer.Option(
            help="With --bundle: serve the bundles' model under this name (KServe: {{.Name}}, "
            "the InferenceService's name).",
            show_default="the bundle's model",
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Address to bind.", show_default="0.0.0.0")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="gRPC port; 0 picks a free one.", show_default="8001")
    ] = None,
    http_port: Annotated[
        int | None,
        typer.Option(
            help="KServe v2 HTTP/REST port (same process and models as gRPC); 0 picks a free one.",
            show_default="8000",
        ),
    ] = None,
    no_http: Annotated[bool, typer.Option("--no-http", help="Serve no HTTP (gRPC only).")] = False,
    metrics_port: Annotated[
        int | None, typer.Option(help="Prometheus port; 0 picks a free one.", show_default="8002")
    ] = None,
    no_metrics: Annotated[bool, typer.Option("--no-metrics", help="Serve no metrics.")] = False,
    max_batch_size: Annotated[
        int | None,
        typer.Option(help="Most rows per execution; 0 turns batching off.", show_default="32"),
    ] = None,
    max_queue_delay_us: Annotated[
        int | None,
        typer.Option(
            help="How long a request may wait for a batch to fill, in microseconds.",
            show_default="0",
        ),
    ] = None,
    max_queue_size: Annotated[
        int | None,
        typer.Option(
            help="Queued requests per model before RESOURCE_EXHAUSTED; 0: no bound.",
            show_default="1024",
        ),
    ] = None,
    max_text_bytes: Annotated[
        int | None,
        typer.Option(
            help="Longest string (UTF-8 bytes) a text model's 'text' input may hold; longer "
            "ones are refused (INVALID_ARGUMENT). Within it, texts past the tokenizer's "
            "max_length tokens are truncated.",
            show_default="65536",
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            help="Threads per engine.", show_default="KILN_THREADS, else one per core but one"
        ),
    ] = None,
    execution: Annotated[
        str | None,
        typer.Option(
            help="Where CPU engines compute: thread (a worker thread per version), loop (the "
            "event loop itself: best on one core), auto (loop when this process may use one "
            "core).",
            show_default="auto",
        ),
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            help="Artifact kind to load (onnxruntime, aotinductor:cpu, ...).",
            show_default="fastest",
        ),
    ] = None,
    poll_interval: Annotated[
        float | None,
        typer.Option(help="Seconds between checks for moved aliases.", show_default="1"),
    ] = None,
    max_message_size: Annotated[
        int | None, typer.Option(help="Largest gRPC message in bytes.", show_default="64 MiB")
    ] = None,
    max_json_size: Annotated[
        int | None,
        typer.Option(
            help="Largest JSON part of an HTTP request in bytes (413 beyond it); large tensors "
            "belong in the binary tensor extension.",
            show_default="4 MiB",
        ),
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate chain (TLS).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key (TLS).")] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="KILN_SERVE_TOKEN",
            help="Bearer token required for repository load/unload.",
            show_envvar=True,
        ),
    ] = None,
    token_for_inference: Annotated[
        bool, typer.Option(help="Require the token for inference calls too.")
    ] = False,
    model_control: Annotated[
        bool,
        typer.Option(
            "--model-control",
            help="Allow RepositoryModelLoad/Unload from any client (off by default, as in "
            "Triton; a --token also allows them, to clients that send it).",
        ),
    ] = False,
    allow_nonfinite: Annotated[
        bool,
        typer.Option(
            "--allow-nonfinite",
            help="Accept NaN and infinite values in float inputs (refused by default).",
        ),
    ] = False,
    traffic_log: Annotated[
        bool,
        typer.Option(
            help="Log every request to KILN_HOME/traffic and accept kiln.v1 feedback labels."
        ),
    ] = True,
    bento: Annotated[
        bool,
        typer.Option(
            "--bento",
            help="Serve with BentoML instead (bentoml serve kiln.serving.bento:KilnService: "
            "BentoML's HTTP API, not KServe v2); --port defaults to 3000.",
        ),
    ] = False,
    workers: Annotated[
        str,
        typer.Option(
            "--workers",
            metavar="N|auto",
            envvar="KILN_SERVE_WORKERS",
            show_envvar=True,
            help="Server processes sharing the gRPC and HTTP ports (SO_REUSEPORT), each with "
            "its own event loop, engines and traffic log; one metrics endpoint over all. "
            "auto: one per core this process may use. Default threads per engine: the cores "
            "shared out, one per worker kept for its event loop.",
        ),
    ] = "1",
) -> None:
    """Serve models over gRPC and HTTP (KServe v2 / Open Inference Protocol, Triton-compatible).

    One process, one set of loaded models, both transports: gRPC on --port (8001), HTTP/REST on
    --http-port (8000), with Triton's binary tensor extension. Prints one line starting with
    "kiln serve ready:" once it accepts requests. Every request is
    logged to KILN_HOME/traffic (unless --no-traffic-log). SIGTERM stops accepting, finishes the
    requests in flight, writes the traffic log and exits 0. Clients cannot load or unload models
    unless --model-control (or --token) is given. With --workers N, N such processes share the
    ports, each with its own models and traffic log; the ready line comes once all are ready,
    SIGTERM drains them all, and a worker that dies stops the rest (exit code non-zero).
    """
    from kiln.serving.workers import WORKER_ENV, WorkerSpec, parse_workers

    count = parse_workers(workers)
    if bento:
        if count != 1:
            raise InvalidArgument(
                "--workers is not supported with --bento: BentoML runs its own processes "
                "(bentoml serve's own options, or a bentofile's workers setting); drop --workers"
            )
        wanted_http = [r for t in [*(models or []), *(references or [])] for r in t.split(",") if r]
        serve_bento(wanted_http, host or "0.0.0.0", 3000 if port is None else port, threads, engine)
        return

    from kiln.serving.settings import ServingSettings
    from kiln.settings import Settings

    kiln_settings = Settings()
    worker_index = os.environ.pop(WORKER_ENV, None)
    if worker_index is not None:  # one of the processes `--workers N` started (below)
        spec = WorkerSpec.read(sys.stdin)
        _configure_logging(f"[worker {worker_index}]")
        _serve_one(ServingSettings(**spec.settings), kiln_settings, spec.traffic_log, worker=True)
        return

    given: dict[str, Any] = {
        "host": host,
        "port": port,
        "metrics_port": metrics_port,
        "http_port": http_port,
        "max_json_bytes": max_json_size,
        "max_batch_size": max_batch_size,
        "max_queue_delay_us": max_queue_delay_us,
        "max_queue_size": max_queue_size,
        "max_text_bytes": max_text_bytes,
        "threads": threads,
        "execution": execution,
        "engine_kind": engine,
        "poll_interval_s": poll_interval,
        "max_message_bytes": max_message_size,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "token": token,
        "bundle": bundle,
        "model_name": model_name,
    }
    given = {k: v for k, v in given.items() if v is not None}
    wanted = [r for text in [*(models or []), *(references or [])] for r in text.split(",") if r]
    if wanted:
        given["models"] = tuple(wanted)
    if no_metrics:
        given["metrics_port"] = None
    if no_http:
        given["http_port"] = None
    if token_for_inference:
        given["token_for_inference"] = True
    if model_control:
        given["model_control"] = True
    if allow_nonfinite:
        given["allow_nonfinite"] = True
    try:
        settings = ServingSettings(**given)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidArgument(f"invalid serve options: {problems}") from None

    _configure_logging("")
    if settings.bundle is not None:
        settings = _import_bundles(settings, settings.bundle, kiln_settings)
    if count == 1:
        _serve_one(settings, kiln_settings, traffic_log, worker=False)
        return
    _serve_workers(settings, kiln_settings, count, traffic_log)


def _serve_workers(
    settings: ServingSettings, kiln_settings: Settings, count: int, traffic_log: bool
) -> None:
    """`--workers N`: this process supervises N workers (`kiln.serving.workers`)."""
    from kiln.serving.workers import WorkerPool, worker_threads

    if settings.model_control:
        raise InvalidArgument(
            "--model-control is not supported with --workers: a RepositoryModelLoad/Unload "
            "call reaches one worker only, and the workers would serve different models; "
            "move aliases in the registry instead (kiln promote), which every worker follows"
        )
    cores = kiln_settings.thread_count()
    if not settings.threads and not kiln_settings.threads:
        settings = settings.model_copy(update={"threads": worker_threads(count, cores)})
    if settings.execution == "auto":  # each worker gets its share of the cores
        settings = settings.model_copy(
            update={"execution": "loop" if cores // count <= 1 else "thread"}
        )
    # The workers run `kiln serve` again (told they are workers by WORKER_ENV), each in a
    # fresh interpreter; -P keeps the current directory off their import path.
    command = [sys.executable, "-P", "-c", "from kiln.cli.main import main; main()", "serve"]
    code = WorkerPool(settings, count, command=command, traffic_log=traffic_log).run(_print_ready)
    if code:
        raise typer.Exit(code)


def _import_bundles(
    settings: ServingSettings, bundle: Path, kiln_settings: Settings
) -> ServingSettings:
    """`--bundle`: import the bundles (once, before any worker starts) and serve what they
    hold; the workers of `--workers N` are then told the references only."""
    import kiln.registry
    from kiln.serving.bundles import import_bundles

    with kiln.registry.open(settings=kiln_settings) as registry:
        refs = import_bundles(registry, bundle, settings.model_name, scratch=kiln_settings.home)
    logging.getLogger(__name__).info("imported from %s: %s", bundle, ", ".join(refs))
    return settings.model_copy(update={"models": tuple(refs), "bundle": None, "model_name": None})


def _configure_logging(tag: str) -> None:
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s"
    )


def _print_ready(endpoints: Endpoints) -> None:
    from kiln.serving.ready import ready_line

    sys.stdout.write(ready_line(endpoints) + "\n")
    sys.stdout.flush()


def _serve_one(
    settings: ServingSettings, kiln_settings: Settings, traffic_log: bool, *, worker: bool
) -> None:
    """Serve in this process until SIGTERM/SIGINT: `kiln serve` itself, or one of its
    `--workers` (which shares its ports and stops when its parent goes)."""
    from kiln.serving.runner import serve

    async def run(**hooks: Any) -> None:
        stop = asyncio.Event()
        if worker:
            from kiln.serving.workers import watch_parent

            watch_parent(sys.stdin, stop)
        await serve(
            settings, kiln_settings, on_ready=_print_ready, stop=stop, worker=worker, **hooks
        )

    if not traffic_log:
        asyncio.run(run())
        return
    from kiln.serving.traffic_hook import TrafficSink
    from kiln.traffic import Transport, log_store

    # Feedback records the transport that carried it (HTTP's items say so); gRPC's is the rest.
    sink = TrafficSink(log_store(kiln_settings), feedback_source=Transport.GRPC.value)
    try:
        asyncio.run(
            run(
                traffic_hook=sink.on_request,
                feedback_hook=sink.on_feedback,
                collectors=[sink.collector],
            )
        )
    finally:
        sink.close()  # after the drain: every answered request is written


def serve_bento(
    references: list[str], host: str, port: int, threads: int | None, engine: str | None
) -> None:
    """Replace this process with `bentoml serve` of Kiln's BentoML service."""
    if len(references) > 1:
        raise InvalidArgument(
            "the HTTP service serves one model: pass one reference (e.g. --models digits)"
        )
    env = dict(os.environ)
    if references:
        env["KILN_MODEL"] = references[0]
    if threads is not None:
        env["KILN_BENTO_THREADS"] = str(threads)
    if engine is not None:
        env["KILN_BENTO_ENGINE_KIND"] = engine
    bentoml = Path(sys.executable).with_name("bentoml")
    if not bentoml.exists():
        raise Unavailable("kiln serve --bento needs BentoML: pip install 'kiln[bento]'")
    argv = [str(bentoml), "serve", "kiln.serving.bento:KilnService",
            "--host", host, "--port", str(port)]  # fmt: skip
    os.execve(argv[0], argv, env)
