"""``worker.service``: the process's start (the API key checked before anything is consumed), its
settings errors, its Labelbox metrics and its bounded Kafka-client stop, over fakes: no broker, no
Labelbox, no pipeline."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import pytest

from worker import service as service_module
from worker.labelbox import AuthenticationError, RequestRejected, TransientError
from worker.pipeline import EXIT_AUTH, EXIT_OK, EXIT_SETTINGS
from worker.service import Service
from worker.settings import OWN_PREFIXES, Settings


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"kafka_bootstrap_servers": "127.0.0.1:9", "labelbox_api_key": "k", **overrides}
    return Settings.model_validate(values)


class FakeLabelbox:
    """``check_auth`` raises each of ``errors`` in turn, then succeeds."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.checks = 0
        self.opened = self.closed = False

    async def __aenter__(self) -> FakeLabelbox:
        self.opened = True
        return self

    async def __aexit__(self, *_: object) -> None:
        self.closed = True

    async def check_auth(self) -> None:
        self.checks += 1
        if self.errors:
            raise self.errors.pop(0)


def service_with(labelbox: FakeLabelbox, **kwargs: Any) -> Service:
    service = Service(settings(), **kwargs)
    service.labelbox = labelbox  # type: ignore[assignment]
    return service


async def test_a_refused_api_key_exits_3_before_any_pipeline() -> None:
    labelbox = FakeLabelbox(AuthenticationError("Labelbox refused the API key"))
    service = service_with(labelbox)
    assert await service.run() == EXIT_AUTH
    assert service.pipeline is None
    assert (labelbox.opened, labelbox.closed, labelbox.checks) == (True, True, 1)


async def test_a_url_that_is_not_labelbox_is_a_settings_error() -> None:
    service = service_with(FakeLabelbox(RequestRejected("HTTP 404: not found")))
    assert await service.run() == EXIT_SETTINGS
    assert service.pipeline is None


async def test_a_stop_while_labelbox_is_unreachable_at_start_exits_0_without_consuming() -> None:
    labelbox = FakeLabelbox(*(TransientError("connection refused", "connection") for _ in range(10)))
    service = service_with(labelbox)
    asyncio.get_running_loop().call_later(0.15, service.request_stop)
    assert await asyncio.wait_for(service.run(), timeout=5) == EXIT_OK
    assert labelbox.checks == 1, "the next check waits 5 s; the stop cut the wait short"
    assert service.pipeline is None


async def test_a_stop_requested_before_run_never_asks_labelbox() -> None:
    labelbox = FakeLabelbox()
    service = service_with(labelbox)
    service.request_stop()
    assert await service.run() == EXIT_OK
    assert labelbox.checks == 0


def test_labelbox_retries_are_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    service = Service(settings())
    with caplog.at_level(logging.WARNING, logger="worker.service"):
        service._count_retry("create_import", "429", 1.234)
        service._count_retry("create_import", "429", 0.5)
    registry = service.metrics.registry
    value = registry.get_sample_value(
        "lbworker_upload_retries_total", {"operation": "create_import", "cause": "429"}
    )
    assert value == 2.0
    [first, _] = [r for r in caplog.records if r.msg == "labelbox_retry"]
    assert first.ctx == {"operation": "create_import", "cause": "429", "sleep_s": 1.23}  # type: ignore[attr-defined]


def test_an_answer_before_the_pipeline_exists_is_ignored() -> None:
    Service(settings())._labelbox_answered("check_auth", "ok", 0.0, 0.1)  # must not raise


class Stopping:
    stop_deadline: float | None = 100.0


async def test_a_kafka_client_stop_is_bounded_by_what_is_left_of_the_drain_on_the_services_clock(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = Service(settings(), clock=lambda: 98.8)  # 1.2 s left of the drain
    never = asyncio.get_running_loop().create_future()
    with caplog.at_level(logging.WARNING, logger="worker.service"):
        await service._stop_client("consumer", never, Stopping())  # type: ignore[arg-type]
    [record] = [r for r in caplog.records if r.msg == "kafka_client_stop_timeout"]
    assert record.ctx == {"client": "consumer", "timeout_s": 1.2}  # type: ignore[attr-defined]
    assert never.cancelled()


def test_invalid_settings_exit_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith(OWN_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LABELBOX_API_KEY", "k")
    monkeypatch.setenv("UPLOAD_CONCURRENCY", "0")
    assert service_module.main() == EXIT_SETTINGS
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("worker: ")
    assert "KAFKA_BOOTSTRAP_SERVERS" in err
    assert "UPLOAD_CONCURRENCY" in err
