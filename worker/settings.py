"""The worker's one Settings object: read from the environment once, validated at start-up.

Nothing else in the worker reads the environment. A wrong value stops the worker with a message
that names the variable; so does an unknown variable with one of our prefixes (a misspelling), since
a silently ignored setting is worse than a refused start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Variable prefixes that belong to this worker (an unknown one is an error).
OWN_PREFIXES = (
    *("KAFKA_", "LABELBOX_", "BATCH_", "UPLOAD_", "BUFFER_", "SHUTDOWN_", "METRICS_", "MESSAGE_"),
    *("ONTOLOGY_", "ENSURE_"),
)
#: Variables Kubernetes injects for Services ("service links"), e.g. KAFKA_PORT_9092_TCP: not ours.
_SERVICE_LINK_MARKERS = ("_SERVICE_HOST", "_SERVICE_PORT", "_PORT")


class SettingsError(Exception):
    """The configuration is invalid; the message names every offending variable."""


class _FromEnv(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Read and validate; raises :class:`SettingsError` naming each bad or unknown variable."""
        env = dict(os.environ if environ is None else environ)
        unknown = sorted(_unknown_variables(env, set(Settings.model_fields)))
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(unknown)} (misspelled?)")
        values = {name: env[name.upper()] for name in cls.model_fields if name.upper() in env}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise SettingsError(_describe(exc)) from None


class KafkaSettings(_FromEnv):
    """The Kafka part of the settings (all that ``replay-dlq`` needs)."""

    kafka_bootstrap_servers: str = Field(min_length=1, description="host:port[,host:port…] of the brokers")
    kafka_topic: str = Field("predictions", min_length=1)
    kafka_group_id: str = Field("labelbox-prediction-worker", min_length=1)
    kafka_dlq_topic: str = Field("predictions.dlq", min_length=1)
    kafka_client_id: str = Field("labelbox-prediction-worker", min_length=1)
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    #: read_committed: records of aborted transactions are never delivered (nor imported), and an
    #: open transaction holds its partition at its first record until it ends.
    kafka_isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed"
    kafka_max_poll_records: int = Field(500, ge=1, le=100_000)
    kafka_session_timeout_ms: int = Field(45_000, ge=6_000, le=1_800_000)
    kafka_max_poll_interval_ms: int = Field(300_000, ge=10_000)
    kafka_dlq_max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024)

    @model_validator(mode="after")
    def _consistent_kafka(self) -> Self:
        if self.kafka_security_protocol.startswith("SASL_"):
            if self.kafka_sasl_mechanism is None:
                raise ValueError("KAFKA_SASL_MECHANISM is required with KAFKA_SECURITY_PROTOCOL=SASL_*")
            if not self.kafka_sasl_username or self.kafka_sasl_password is None:
                raise ValueError("KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are required with SASL")
        if self.kafka_dlq_topic == self.kafka_topic:
            raise ValueError("KAFKA_DLQ_TOPIC must differ from KAFKA_TOPIC")
        return self


class LabelboxSettings(_FromEnv):
    """The Labelbox part of the settings (all that ``check``, ``ontology``, ``send-ground-truth`` need)."""

    labelbox_api_key: SecretStr = Field(min_length=1)
    labelbox_graphql_url: str = Field("https://api.labelbox.com/graphql", pattern=r"^https?://\S+$")
    labelbox_poll_interval_s: float = Field(2.0, gt=0, le=600)
    labelbox_request_timeout_s: float = Field(60.0, gt=0, le=3600)
    labelbox_retry_max_s: float = Field(300.0, ge=0, le=86_400)
    labelbox_import_timeout_s: float = Field(3600.0, gt=0)
    labelbox_task_timeout_s: float = Field(1800.0, gt=0)


class Settings(KafkaSettings, LabelboxSettings):
    """Every setting, with its unit in its name. Defaults suit a small production deployment."""

    labelbox_unready_after_s: float = Field(30.0, ge=0)
    ontology_check: Literal["strict", "off"] = "strict"
    ontology_ttl_s: float = Field(600.0, ge=0)
    ontology_min_refetch_s: float = Field(10.0, ge=0)
    ensure_data_rows: bool = False

    message_max_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    batch_max_rows: int = Field(2000, ge=1, le=500_000)
    batch_max_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    batch_linger_s: float = Field(2.0, ge=0, le=3600)
    upload_concurrency: int = Field(4, ge=1, le=256)
    buffer_max_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    shutdown_timeout_s: float = Field(25.0, ge=0, le=3600)
    metrics_port: int = Field(9400, ge=0, le=65535)
    metrics_host: str = Field("0.0.0.0", min_length=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"


def _unknown_variables(env: Mapping[str, str], fields: set[str]) -> list[str]:
    return [
        name
        for name in env
        if name.startswith(OWN_PREFIXES)
        and name.lower() not in fields
        and not any(marker in name for marker in _SERVICE_LINK_MARKERS)
    ]


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        name = str(error["loc"][0]).upper() if error["loc"] else "settings"
        parts.append(f"{name}: {error['msg']}")
    return "invalid setting(s): " + "; ".join(parts)
