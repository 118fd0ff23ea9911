"""Records of the routing stage: the receiver an alert goes to, and ``nmstream-groups`` (a
flushed group of alerts for one receiver)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nmstream.ingest.models import Alert

log = logging.getLogger(__name__)


R = TypeVar("R", bound=BaseModel)


def decode(model: type[R], value: bytes, topic: Any) -> R | None:
    """Parse a topic record, or log and return None for one that does not fit (never raise:
    one bad record must not stop an agent)."""
    try:
        return model.model_validate_json(value)
    except ValidationError as exc:
        log.error("skipping a record of %s that is not a %s: %s", topic, model.__name__, exc)
        return None


class Record(BaseModel):
    """Base of the pipeline's topic records: frozen pydantic, JSON on the wire."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    def to_bytes(self) -> bytes:
        """The topic encoding."""
        return self.model_dump_json(by_alias=True).encode()


class ReceiverRef(Record):
    """Which receiver, resolved at routing time: its config by reference, never secrets."""

    kind: str
    name: str
    channel: str
    tenant: str | None
    config_kind: str
    config_name: str
    targets: dict[str, Any] = Field(description="channel-specific recipients")

    @property
    def key(self) -> str:
        """``kind/name``."""
        return f"{self.kind}/{self.name}"


def group_id(receiver: ReceiverRef, group_labels: dict[str, str]) -> str:
    """Stable id of one receiver's group (remembered: every alert of the group asks)."""
    return _group_id(receiver.key, tuple(sorted(group_labels.items())))


@functools.lru_cache(maxsize=65536)
def _group_id(receiver_key: str, group_labels: tuple[tuple[str, str], ...]) -> str:
    material = json.dumps([receiver_key, group_labels]).encode()
    return hashlib.sha256(material).hexdigest()[:24]


class AlertGroup(Record):
    """Alerts of one group for one receiver, flushed together (``nmstream-groups``)."""

    schema_version: Literal[1] = 1
    group_id: str
    group_labels: dict[str, str]
    receiver: ReceiverRef
    alerts: list[Alert]
    source_receiver: str | None = Field(None, description="Alertmanager's receiver name")
    external_url: str | None = None
    received_at: datetime | None = Field(
        None, description="when nmstream received the group's oldest alert"
    )
    flushed_at: datetime
