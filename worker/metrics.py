"""Every Prometheus metric of the worker, defined once, on an injected registry.

Labels are low-cardinality only: reason codes, prediction types, outcomes, causes, partitions.
Never a uuid, a data row, a message id or a model run id.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "lbworker"
_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


class Metrics:
    """The worker's metrics. One instance per registry (tests use a fresh registry each)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.messages_consumed = Counter(
            f"{PREFIX}_messages_consumed", "Kafka records fetched", ["topic"], registry=r
        )
        self.messages_rejected = Counter(
            f"{PREFIX}_messages_rejected",
            "Messages rejected before upload, by reason code",
            ["reason"],
            registry=r,
        )
        self.predictions_converted = Counter(
            f"{PREFIX}_predictions_converted",
            "NDJSON lines produced, by prediction type",
            ["type"],
            registry=r,
        )
        self.batches_closed = Counter(
            f"{PREFIX}_batches_closed", "Batches closed, by what closed them", ["trigger"], registry=r
        )
        self.imports = Counter(
            f"{PREFIX}_imports", "Labelbox imports settled, by outcome", ["outcome"], registry=r
        )
        self.bisection_imports = Counter(
            f"{PREFIX}_bisection_imports",
            "Imports of half a batch, made to isolate messages Labelbox refused",
            registry=r,
        )
        self.forbidden_model_runs = Gauge(
            f"{PREFIX}_forbidden_model_runs",
            "Model runs the API key may not access (their messages go to the DLQ)",
            registry=r,
        )
        self.import_latency = Histogram(
            f"{PREFIX}_import_latency_seconds",
            "From batch close to settled (uploaded, finished, status read)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upload_attempts = Counter(
            f"{PREFIX}_upload_attempts", "Labelbox requests made, by operation", ["operation"], registry=r
        )
        self.upload_retries = Counter(
            f"{PREFIX}_upload_retries",
            "Labelbox requests retried, by operation and cause (5xx, 429, 408, timeout, connection, …)",
            ["operation", "cause"],
            registry=r,
        )
        self.rows_imported = Counter(
            f"{PREFIX}_rows_imported", "NDJSON rows Labelbox reported SUCCESS", registry=r
        )
        self.rows_failed = Counter(
            f"{PREFIX}_rows_failed", "NDJSON rows Labelbox reported FAILURE (or did not report)", registry=r
        )
        self.dlq_records = Counter(
            f"{PREFIX}_dlq_records",
            "Records written to the dead-letter topic, by reason",
            ["reason"],
            registry=r,
        )
        self.upload_concurrency_limit = Gauge(
            f"{PREFIX}_upload_concurrency_limit",
            "Imports allowed in flight now (UPLOAD_CONCURRENCY, lowered by 429/5xx when adaptive)",
            registry=r,
        )
        self.imports_in_flight = Gauge(
            f"{PREFIX}_imports_in_flight", "Imports being uploaded or followed", registry=r
        )
        self.buffered_bytes = Gauge(
            f"{PREFIX}_buffered_bytes", "Bytes of fetched records not yet settled", registry=r
        )
        self.paused_partitions = Gauge(
            f"{PREFIX}_paused_partitions", "Partitions paused by backpressure", registry=r
        )
        self.consumer_lag = Gauge(
            f"{PREFIX}_consumer_lag",
            "Records behind the partition's high watermark (from fetch responses)",
            ["topic", "partition"],
            registry=r,
        )
        self.committed_offset = Gauge(
            f"{PREFIX}_committed_offset", "Last committed offset", ["topic", "partition"], registry=r
        )
        self.last_commit = Gauge(
            f"{PREFIX}_last_commit_timestamp_seconds", "Unix time of the last successful commit", registry=r
        )
        self.ready = Gauge(f"{PREFIX}_ready", "1 when the worker reports ready", registry=r)


class PendingCounts:
    """Counts by one label value, added to a labelled counter only when :meth:`flush` is called.

    For per-message counts on the hot path: prometheus-client's ``labels(...)`` and ``inc`` cost more
    than counting in a dict, so the caller flushes once per batch or tick. The labelled children are
    looked up once each."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._pending: Tally[str] = Tally()
        self._children: dict[str, Counter] = {}

    def add(self, values: Iterable[str]) -> None:
        """Count one for each of ``values`` (label values)."""
        self._pending.update(values)

    def flush(self) -> None:
        """Add what was counted since the last flush to the counter."""
        for value, count in self._pending.items():
            child = self._children.get(value)
            if child is None:
                child = self._children[value] = self._counter.labels(value)
            child.inc(count)
        self._pending.clear()
