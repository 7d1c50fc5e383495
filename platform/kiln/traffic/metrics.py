"""Prometheus counters for the traffic and feedback writers.

A custom collector reads the writers' counters when Prometheus scrapes, so the request path
pays nothing for the metrics. Serving registers it in its own registry::

    registry.register(TrafficCollector(traffic=logger, feedback=feedback_writer))
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kiln.traffic.feedback import FeedbackWriter
from kiln.traffic.logger import TrafficLogger


class TrafficCollector(Collector):
    """`kiln_traffic_rows_written_total`, `kiln_traffic_rows_dropped_total{reason}`,
    `kiln_traffic_files_written_total`, `kiln_traffic_rows_buffered` and, for a bucket
    (KILN_STORAGE_URL), `kiln_traffic_files_pending_upload` / `kiln_traffic_rows_pending_upload`
    (in the local outbox, waiting for the bucket), by stream (`traffic` or `feedback`)."""

    def __init__(
        self, traffic: TrafficLogger | None = None, feedback: FeedbackWriter | None = None
    ) -> None:
        self._writers = {"traffic": traffic, "feedback": feedback}

    def collect(self) -> Iterator[Metric]:
        written = CounterMetricFamily(
            "kiln_traffic_rows_written", "Rows written to Parquet part files.", labels=["stream"]
        )
        dropped = CounterMetricFamily(
            "kiln_traffic_rows_dropped",
            "Rows lost: buffer full, offered after close, or their file could not be written.",
            labels=["stream", "reason"],
        )
        files = CounterMetricFamily(
            "kiln_traffic_files_written", "Parquet part files written.", labels=["stream"]
        )
        buffered = GaugeMetricFamily(
            "kiln_traffic_rows_buffered", "Rows waiting to be written.", labels=["stream"]
        )
        pending_files = GaugeMetricFamily(
            "kiln_traffic_files_pending_upload",
            "Part files in the local outbox waiting to be uploaded to the bucket.",
            labels=["stream"],
        )
        pending_rows = GaugeMetricFamily(
            "kiln_traffic_rows_pending_upload",
            "Rows in part files waiting in the local outbox for the bucket.",
            labels=["stream"],
        )
        for stream, writer in self._writers.items():
            if writer is None:
                continue
            s = writer.stats
            written.add_metric([stream], s.written)
            dropped.add_metric([stream, "buffer_full"], s.dropped_full)
            dropped.add_metric([stream, "closed"], s.dropped_closed)
            dropped.add_metric([stream, "write_failed"], s.failed)
            files.add_metric([stream], s.files)
            buffered.add_metric([stream], s.buffered)
            pending_files.add_metric([stream], s.pending_upload_files)
            pending_rows.add_metric([stream], s.pending_upload_rows)
        yield from (written, dropped, files, buffered, pending_files, pending_rows)
