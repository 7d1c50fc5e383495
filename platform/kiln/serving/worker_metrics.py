"""One Prometheus endpoint over the workers of `kiln serve --workers N`.

Each worker keeps its own metrics (`ServingMetrics`, its traffic logger's counters) and serves
them on a private 127.0.0.1 port; the parent's `WorkerMetrics` fetches every worker's
exposition when Prometheus scrapes the public metrics port, and exposes them as one, each
sample labelled `worker="i"`. `sum without(worker) (...)` aggregates them.

Why this and not prometheus_client's multiprocess mode: that mode covers only the library's
own metric objects (values in mmap'ed files per pid), while Kiln's serving metrics are custom
collectors (plain numbers on the event loop, built into families at scrape time:
`kiln.serving.metrics`), which multiprocess mode does not see at all; it also needs a
directory wiped before every start. Scraping each worker keeps every worker's numbers exactly
as a single server reports them, costs nothing on the request path, and shows which worker
does what (a stuck or idle one stands out).

`kiln_worker_up{worker="i"}` is 1 when that worker's exposition was read for this scrape and
0 when it could not be (the worker is gone or did not answer within `SCRAPE_TIMEOUT_S`): its
samples are then missing from that scrape, as Prometheus's own `up` does for a target.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator
from typing import Final

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

log = logging.getLogger("kiln.serving.workers")

SCRAPE_TIMEOUT_S: Final = 5.0
"""How long one worker may take to answer the parent's scrape."""

WORKER_LABEL: Final = "worker"


class WorkerMetrics(Collector):
    """The merged exposition of the workers added so far (a worker is added once ready)."""

    def __init__(self) -> None:
        self._ports: dict[int, int] = {}

    def add(self, worker: int, port: int) -> None:
        """Scrape worker `worker` (its index) at 127.0.0.1:`port` from now on."""
        self._ports[worker] = port

    def remove(self, worker: int) -> None:
        """Stop scraping `worker` (it has exited)."""
        self._ports.pop(worker, None)

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        up = GaugeMetricFamily(
            "kiln_worker_up",
            "1 when this worker's metrics were read for this scrape, 0 when they could not be.",
            labels=[WORKER_LABEL],
        )
        for worker, port in sorted(self._ports.items()):
            try:
                families = list(text_string_to_metric_families(_fetch(port)))
            except (OSError, ValueError) as exc:  # gone, refused, timed out, garbled
                log.warning("could not read the metrics of worker %d: %s", worker, exc)
                up.add_metric([str(worker)], 0.0)
                continue
            up.add_metric([str(worker)], 1.0)
            for family in families:
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                into.samples.extend(_labelled(s, str(worker)) for s in family.samples)
        yield up
        yield from merged.values()


def _fetch(port: int) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
        return bytes(response.read()).decode("utf-8")


def _labelled(sample: Sample, worker: str) -> Sample:
    return sample._replace(labels={**sample.labels, WORKER_LABEL: worker})
