"""worker.metrics: one registry per instance; counts kept aside until flushed."""

from __future__ import annotations

from worker.metrics import Metrics, PendingCounts


def converted(metrics: Metrics, kind: str) -> float | None:
    return metrics.registry.get_sample_value("lbworker_predictions_converted_total", {"type": kind})


def test_pending_counts_reach_the_counter_only_when_flushed_and_only_once() -> None:
    metrics = Metrics()
    pending = PendingCounts(metrics.predictions_converted)
    pending.add(["bbox", "bbox", "radio"])
    pending.add(["bbox"])
    assert converted(metrics, "bbox") is None, "nothing before the flush"
    pending.flush()
    assert converted(metrics, "bbox") == 3
    assert converted(metrics, "radio") == 1
    pending.flush()
    assert converted(metrics, "bbox") == 3, "a second flush adds nothing"
    pending.add(["radio", "mask"])
    pending.flush()
    assert (converted(metrics, "radio"), converted(metrics, "mask")) == (2, 1)


def test_two_instances_do_not_share_a_registry() -> None:
    first, second = Metrics(), Metrics()
    first.predictions_converted.labels("bbox").inc()
    assert converted(first, "bbox") == 1
    assert converted(second, "bbox") is None
