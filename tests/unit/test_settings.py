"""Settings: defaults, validation at start-up, errors that name the variable, secrets kept secret."""

from __future__ import annotations

import subprocess
import sys

import pytest

from worker.settings import Settings, SettingsError

BASE = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092", "LABELBOX_API_KEY": "secret-key-123"}


def test_defaults() -> None:
    settings = Settings.from_env(BASE)
    assert settings.kafka_topic == "predictions"
    assert settings.kafka_dlq_topic == "predictions.dlq"
    assert settings.labelbox_graphql_url == "https://api.labelbox.com/graphql"
    assert settings.kafka_security_protocol == "PLAINTEXT"
    assert settings.log_repeat_interval_s == 30.0


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"BATCH_MAX_ROWS": "0"}, "BATCH_MAX_ROWS"),
        ({"BATCH_LINGER_S": "soon"}, "BATCH_LINGER_S"),
        ({"UPLOAD_CONCURRENCY": "-1"}, "UPLOAD_CONCURRENCY"),
        ({"METRICS_PORT": "70000"}, "METRICS_PORT"),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_MECHANISM"),
        ({"LABELBOX_GRAPHQL_URL": "ftp://x"}, "LABELBOX_GRAPHQL_URL"),
        ({"BATCH_MAX_ROW": "10"}, "BATCH_MAX_ROW"),  # a misspelling is an error, not ignored
        ({"KAFKA_DLQ_TOPIC": "predictions"}, "KAFKA_DLQ_TOPIC"),
        ({"LOG_REPEAT_INTERVAL_S": "-1"}, "LOG_REPEAT_INTERVAL_S"),
        ({"LOG_REPEAT_INTERVAL": "10"}, "LOG_REPEAT_INTERVAL"),  # LOG_ is one of the worker's prefixes
    ],
)
def test_bad_values_name_the_variable(extra: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env({**BASE, **extra})


@pytest.mark.parametrize("missing", ["KAFKA_BOOTSTRAP_SERVERS", "LABELBOX_API_KEY"])
def test_required_settings(missing: str) -> None:
    env = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(SettingsError, match=missing):
        Settings.from_env(env)


def test_kubernetes_service_links_are_not_mistaken_for_settings() -> None:
    env = {
        **BASE,
        "KAFKA_PORT": "tcp://10.0.0.1:9092",
        "KAFKA_SERVICE_HOST": "10.0.0.1",
        "KAFKA_PORT_9092_TCP": "x",
    }
    assert Settings.from_env(env).kafka_bootstrap_servers == "127.0.0.1:9092"


def test_api_key_is_never_shown() -> None:
    settings = Settings.from_env(BASE)
    assert "secret-key-123" not in repr(settings)
    assert "secret-key-123" not in str(settings.model_dump())


def test_run_refuses_to_start_with_a_clear_message() -> None:
    env = {"PATH": "/usr/bin:/bin", **BASE, "BATCH_MAX_BYTES": "lots"}
    done = subprocess.run(
        [sys.executable, "-m", "worker", "run"], env=env, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert b"BATCH_MAX_BYTES" in done.stderr
    assert b"secret-key-123" not in done.stderr + done.stdout
