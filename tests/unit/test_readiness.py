"""``worker.readiness``: what ``/readyz`` answers, and a broker outage's start and end; pure."""

from __future__ import annotations

from worker.readiness import BrokerChange, Readiness


def test_ready_needs_every_condition() -> None:
    readiness = Readiness(unready_after_s=30)
    assert not readiness.report(live=True, labelbox=(None, 0.0), stopping=False)["ready"], "not joined yet"
    readiness.joined = True
    assert readiness.report(live=True, labelbox=(None, 0.0), stopping=False)["ready"]
    assert not readiness.report(live=False, labelbox=(None, 0.0), stopping=False)["ready"]
    assert not readiness.report(live=True, labelbox=(None, 0.0), stopping=True)["ready"]
    failing = readiness.report(live=True, labelbox=(100.0, 131.0), stopping=False)
    assert (failing["ready"], failing["labelbox_ok"]) == (False, False), "failing for longer than 30 s"
    assert readiness.report(live=True, labelbox=(100.0, 129.0), stopping=False)["ready"], "not long enough"


def test_a_broker_outage_is_reported_once_at_each_end() -> None:
    readiness = Readiness(unready_after_s=30)
    assert readiness.broker_checked(True, 0.0, 0.1) is None
    assert readiness.broker_checked(False, 10.0, 15.0) == BrokerChange(False)
    assert readiness.broker_checked(False, 16.0, 17.0) is None
    assert not readiness.report(live=True, labelbox=(None, 0.0), stopping=False)["broker_ok"]
    assert readiness.broker_checked(True, 30.0, 30.5) == BrokerChange(True, 20.5)
