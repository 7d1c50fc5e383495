"""Production traffic: the request log, ground-truth feedback, and lazy readers over both.

Serving logs each request with a `TrafficLogger`; labels and values arrive through a
`FeedbackWriter` (servers) or `import_feedback` (files); `scan_traffic` / `scan_feedback` give
Polars lazy frames over the Parquet partitions for `traffic_stats` and `kiln.evaluate`::

    from kiln.traffic import TrafficLogger, TrafficRecord

    logger = TrafficLogger(settings.home)      # one per process; a background writer thread
    logger.log(TrafficRecord(request_id, timestamp_us, "digits", 3, latency_us,
                             input=x, output=logits, queue_us=q, batch_size=8))
    logger.close()                             # on shutdown: writes everything buffered

Layout (`KILN_HOME`): ``traffic/model=NAME/date=YYYY-MM-DD/part-*.parquet`` and
``feedback/date=YYYY-MM-DD/part-*.parquet``, each file written atomically. With
`KILN_STORAGE_URL=s3://bucket/prefix` the same layout lives below the prefix: pass
`log_store(settings)` instead of the home to every reader and writer (a plain path always
means local files)::

    store = log_store(settings)                # LocalLogStore or S3LogStore
    logger = TrafficLogger(store)              # part files go up through KILN_HOME/outbox/
    scan = scan_traffic(store, "digits", Window.last("24h"))
"""

from __future__ import annotations

from kiln.traffic.feedback import FeedbackWriter
from kiln.traffic.feedback_files import ImportResult, import_feedback, read_feedback_file
from kiln.traffic.labels import label_problem
from kiln.traffic.logger import TrafficLogger, TrafficSettings
from kiln.traffic.metrics import TrafficCollector
from kiln.traffic.readers import (
    Scan,
    Window,
    latest_labels,
    latest_values,
    parse_since,
    run_query,
    scan_feedback,
    scan_traffic,
    traffic_models,
)
from kiln.traffic.records import (
    TrafficColumns,
    TrafficRecord,
    predictions_and_confidences,
    record_row,
)
from kiln.traffic.schema import (
    FEEDBACK_SCHEMA,
    FEEDBACK_SCHEMA_V1,
    STATUS_OK,
    TEXT_COLUMNS,
    TRAFFIC_SCHEMA,
    TRAFFIC_SCHEMA_V1,
    Route,
    Transport,
)
from kiln.traffic.shutdown import close_on_signals
from kiln.traffic.stats import traffic_stats
from kiln.traffic.store import LocalLogStore, LogRoot, LogStore, as_store, log_store
from kiln.traffic.writer import WriterStats

__all__ = [
    "FEEDBACK_SCHEMA",
    "FEEDBACK_SCHEMA_V1",
    "STATUS_OK",
    "TEXT_COLUMNS",
    "TRAFFIC_SCHEMA",
    "TRAFFIC_SCHEMA_V1",
    "FeedbackWriter",
    "ImportResult",
    "LocalLogStore",
    "LogRoot",
    "LogStore",
    "Route",
    "Scan",
    "TrafficCollector",
    "TrafficColumns",
    "TrafficLogger",
    "TrafficRecord",
    "TrafficSettings",
    "Transport",
    "Window",
    "WriterStats",
    "as_store",
    "close_on_signals",
    "import_feedback",
    "label_problem",
    "latest_labels",
    "latest_values",
    "log_store",
    "parse_since",
    "predictions_and_confidences",
    "read_feedback_file",
    "record_row",
    "run_query",
    "scan_feedback",
    "scan_traffic",
    "traffic_models",
    "traffic_stats",
]
