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

from schemas import MAX_MESSAGE_BYTES

#: Variable prefixes that belong to this worker (an unknown one is an error).
OWN_PREFIXES = (
    *("KAFKA_", "LABELBOX_", "BATCH_", "UPLOAD_", "BUFFER_", "SHUTDOWN_", "METRICS_", "MESSAGE_"),
    *("ONTOLOGY_", "ENSURE_", "LOG_", "IMPORT_", "ADAPTIVE_"),
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


class LogSettings(_FromEnv):
    """How every command logs (``worker.logs.configure``)."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="least severe level written"
    )
    log_format: Literal["json", "text"] = Field("json", description="json (one object per line) or text")
    log_repeat_interval_s: float = Field(
        30.0,
        ge=0,
        le=86_400,
        description="a repeated error is written once, then once per interval with its count (0: all)",
    )


class KafkaSettings(LogSettings):
    """The Kafka part of the settings (all that ``replay-dlq`` needs)."""

    kafka_bootstrap_servers: str = Field(min_length=1, description="host:port[,host:port…] of the brokers")
    kafka_topic: str = Field("predictions", min_length=1, description="topic to consume")
    kafka_group_id: str = Field(
        "labelbox-prediction-worker",
        min_length=1,
        description="consumer group (scale out by adding replicas)",
    )
    kafka_dlq_topic: str = Field("predictions.dlq", min_length=1, description="dead-letter topic")
    kafka_client_id: str = Field(
        "labelbox-prediction-worker", min_length=1, description="client id sent to the brokers"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how to reach the brokers"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="required with SASL_*"
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password")
    kafka_ssl_cafile: Path | None = Field(None, description="CA certificate (PEM)")
    kafka_ssl_certfile: Path | None = Field(None, description="client certificate (PEM)")
    kafka_ssl_keyfile: Path | None = Field(None, description="client key (PEM)")
    #: read_committed: records of aborted transactions are never delivered (nor imported), and an
    #: open transaction holds its partition at its first record until it ends.
    kafka_isolation_level: Literal["read_committed", "read_uncommitted"] = Field(
        "read_committed", description="read_committed skips records of aborted transactions"
    )
    kafka_max_poll_records: int = Field(500, ge=1, le=100_000, description="records per fetch")
    kafka_session_timeout_ms: int = Field(45_000, ge=6_000, le=1_800_000, description="group session timeout")
    kafka_max_poll_interval_ms: int = Field(300_000, ge=10_000, description="max time between fetches")
    kafka_dlq_max_message_bytes: int = Field(
        MAX_MESSAGE_BYTES, ge=1024, description="largest DLQ record; a larger value is kept truncated"
    )
    #: Codec of what the worker produces (DLQ records, replayed records); reading takes every codec.
    kafka_compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "none", description="codec of what is produced (DLQ, replay-dlq); reading takes every codec"
    )

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


class LabelboxSettings(LogSettings):
    """The Labelbox part of the settings (all that ``check``, ``ontology``, ``send-ground-truth`` need)."""

    labelbox_api_key: SecretStr = Field(min_length=1, description="API key (never logged)")
    labelbox_graphql_url: str = Field(
        "https://api.labelbox.com/graphql", pattern=r"^https?://\S+$", description="GraphQL endpoint"
    )
    labelbox_poll_interval_s: float = Field(2.0, gt=0, le=600, description="import and task polling interval")
    labelbox_request_timeout_s: float = Field(60.0, gt=0, le=3600, description="one HTTP request")
    labelbox_retry_max_s: float = Field(
        300.0, ge=0, le=86_400, description="total retry time of one operation"
    )
    labelbox_import_timeout_s: float = Field(
        3600.0, gt=0, description="how long an import may stay RUNNING before it is followed again"
    )
    labelbox_task_timeout_s: float = Field(1800.0, gt=0, description="how long a registration task may run")


class Settings(KafkaSettings, LabelboxSettings):
    """Every setting, with its unit in its name. Defaults suit a small production deployment."""

    labelbox_unready_after_s: float = Field(
        30.0, ge=0, description="Labelbox failing longer than this makes /readyz answer 503"
    )
    labelbox_forbidden_ttl_s: float = Field(
        300.0, ge=0, description="a model run refused to the key is dead-lettered for this long"
    )
    import_max_rounds: int = Field(
        8,
        ge=1,
        le=1000,
        description="failing rounds of a batch while Labelbox is healthy before it is bisected",
    )
    import_bisect_max_imports: int = Field(
        64, ge=0, le=100_000, description="extra imports one batch may spend isolating what Labelbox refuses"
    )
    ontology_check: Literal["strict", "off"] = Field(
        "strict", description="strict: predictions that do not fit the ontology go to the DLQ before upload"
    )
    ontology_ttl_s: float = Field(600.0, ge=0, description="how long a fetched ontology is used")
    ontology_min_refetch_s: float = Field(
        10.0, ge=0, description="a mismatch refetches the ontology at most this often"
    )
    ensure_data_rows: bool = Field(
        False, description="register each batch's data rows in the model run before its import"
    )

    message_max_bytes: int = Field(
        MAX_MESSAGE_BYTES, ge=1024, description="larger records are rejected (message_too_large)"
    )
    batch_max_rows: int = Field(2000, ge=1, le=500_000, description="NDJSON lines per import")
    batch_max_bytes: int = Field(MAX_MESSAGE_BYTES, ge=1024, description="bytes per import")
    batch_linger_s: float = Field(
        2.0, ge=0, le=3600, description="a batch closes this long after its first message at the latest"
    )
    upload_concurrency: int = Field(
        4, ge=1, le=256, description="imports in flight, across model runs (the adaptive limit's maximum)"
    )
    adaptive_concurrency: bool = Field(
        True, description="AIMD: halve the import limit on 429/5xx or slow uploads, regrow by one"
    )
    buffer_max_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="unsettled bytes before fetching pauses (backpressure)"
    )
    shutdown_timeout_s: float = Field(
        25.0,
        ge=0,
        le=3600,
        description="the whole exit on SIGTERM; keep it below terminationGracePeriodSeconds",
    )
    metrics_port: int = Field(9400, ge=0, le=65535, description="/metrics, /healthz, /readyz")
    metrics_host: str = Field("0.0.0.0", min_length=1, description="address those endpoints listen on")


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
