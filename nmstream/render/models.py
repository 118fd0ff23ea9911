"""Records of ``nmstream-notify-<channel>`` and ``nmstream-dlq-<channel>``."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Literal

from pydantic import Field

from nmstream.routing.models import AlertGroup, ReceiverRef, Record


def notification_id(group_id: str, statuses: list[tuple[str, str]], part: int) -> str:
    """Stable id of a notification: the same group content gives the same id (idempotency)."""
    material = f"{group_id}|{sorted(statuses)}|{part}".encode()
    return hashlib.sha256(material).hexdigest()[:32]


class Notification(Record):
    """One message for one receiver, ready to deliver."""

    schema_version: Literal[1] = 1
    id: str = Field(description="idempotency key: same group content, same id")
    channel: str
    receiver: ReceiverRef = Field(description="targets and config by reference, no secret")
    group_id: str
    group_labels: dict[str, str]
    subject: str | None
    body: str
    text: str | None = Field(None, description="email: the plain-text alternative")
    fingerprints: list[str]
    statuses: dict[str, str] = Field(description="fingerprint → firing|resolved")
    part: int = Field(1, ge=1)
    parts: int = Field(1, ge=1)
    attempt: int = 0
    created_at: datetime
    received_at: datetime | None = Field(
        None, description="when nmstream received the oldest alert of the notification"
    )
    not_before: datetime | None = Field(None, description="a retry waits until then")
    failures: list[str] = Field(default_factory=list, description="reasons of past attempts")


class DeadLetter(Record):
    """What could not be turned into (or delivered as) a notification, and why."""

    schema_version: Literal[1] = 1
    stage: Literal["render", "deliver"]
    channel: str
    error: str
    group: AlertGroup | None = None
    notification: Notification | None = None
    failed_at: datetime


#: What happened: a delivery outcome, or why alerts produced no notification.
SentStatus = Literal["delivered", "retrying", "dead-lettered", "filtered", "deduplicated"]


class SentRecord(Record):
    """One outcome on ``nmstream-sent``: the history auditors read.

    ``delivered``, ``retrying`` and ``dead-lettered`` are outcomes of one delivery attempt of a
    notification; ``filtered`` (an alert no receiver gets) and ``deduplicated`` (a repeat of an
    alert within ``dedupWindow``) concern alerts and carry no notification id.
    """

    schema_version: Literal[1] = 1
    notification_id: str | None
    status: SentStatus
    channel: str | None
    receiver: ReceiverRef | None
    tenant: str | None
    fingerprints: list[str]
    attempts: int = 0
    error: str = ""
    failed_targets: list[str] = Field(default_factory=list)
    received_at: datetime | None = Field(None, description="oldest alert received")
    created_at: datetime | None = Field(None, description="notification rendered")
    at: datetime
