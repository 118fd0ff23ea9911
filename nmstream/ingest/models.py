"""What senders post to ``/api/v2/alerts`` and what lands on the ``nmstream-alerts`` topic."""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

ALERT_SCHEMA_VERSION: Literal[1] = 1

LabelName = Annotated[str, StringConstraints(min_length=1)]
LabelSet = dict[LabelName, str]

_FNV64_OFFSET = 0xCBF29CE484222325
_FNV64_PRIME = 0x100000001B3
_SEPARATOR = b"\xff"
#: Label sets whose fingerprint is remembered.
FINGERPRINT_CACHE = 16384


def label_fingerprint(labels: dict[str, str]) -> str:
    """Prometheus' label-set fingerprint (FNV-1a 64 over sorted name/value pairs).

    It equals what Alertmanager sends as ``fingerprint``, so alerts from senders that
    give none are keyed exactly as Alertmanager would key them. Remembered per label set:
    Prometheus posts the same alerts again every evaluation, and the hash costs ~12 µs.
    """
    return _fingerprint(tuple(sorted(labels.items())))


@functools.lru_cache(maxsize=FINGERPRINT_CACHE)
def _fingerprint(pairs: tuple[tuple[str, str], ...]) -> str:
    digest = _FNV64_OFFSET
    for name, value in pairs:
        for part in (name.encode(), _SEPARATOR, value.encode(), _SEPARATOR):
            for byte in part:
                digest = ((digest ^ byte) * _FNV64_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{digest:016x}"


class _Wire(BaseModel):
    """Alertmanager's camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class Alert(_Wire):
    """One alert as Alertmanager's webhook (v4) or its v2 API ("postable alert") carries it."""

    status: Literal["firing", "resolved"] | None = None
    labels: Annotated[LabelSet, Field(min_length=1)]
    annotations: LabelSet = Field(default_factory=dict)
    starts_at: datetime | None = Field(None, alias="startsAt")
    ends_at: datetime | None = Field(None, alias="endsAt")
    generator_url: str = Field("", alias="generatorURL")
    fingerprint: str = ""

    def effective_status(self, now: datetime) -> Literal["firing", "resolved"]:
        """The sender's status, or Alertmanager's rule: resolved once ``endsAt`` has passed."""
        if self.status is not None:
            return self.status
        if self.ends_at is not None and self.ends_at.year > 1 and self.ends_at <= now:
            return "resolved"
        return "firing"


class GroupContext(_Wire):
    """The webhook's group-level fields: everything but the alerts themselves."""

    version: str | None = None
    group_key: str | None = Field(None, alias="groupKey")
    truncated_alerts: int = Field(0, ge=0, alias="truncatedAlerts")
    status: Literal["firing", "resolved"] | None = None
    receiver: str | None = None
    group_labels: LabelSet = Field(default_factory=dict, alias="groupLabels")
    common_labels: LabelSet = Field(default_factory=dict, alias="commonLabels")
    common_annotations: LabelSet = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str | None = Field(None, alias="externalURL")


class WebhookPayload(GroupContext):
    """Alertmanager webhook v4, or notification-manager's minimal sender shape: its group
    context with the alerts."""

    alerts: Annotated[list[Alert], Field(min_length=1)]


PostableAlerts = TypeAdapter(Annotated[list[Alert], Field(min_length=1)])


class Received(NamedTuple):
    """What the router takes of an alert record: the stamped alert, when and with what group
    context it was received. Ingest keeps one for each record it writes, so a router in the
    same worker need not parse the record again (:class:`~nmstream.stage.ReadBack`)."""

    fingerprint: str
    alert: Alert
    received_at: datetime
    group: GroupContext


class AlertRecord(_Wire):
    """One record of ``nmstream-alerts``: one alert with its group context, keyed by fingerprint."""

    schema_version: Literal[1] = ALERT_SCHEMA_VERSION
    fingerprint: str
    fingerprint_source: Literal["sender", "computed"]
    request_id: str
    received_at: datetime
    alert: Alert
    group: GroupContext

    @classmethod
    def build(
        cls, alert: Alert, group: GroupContext, request_id: str, received_at: datetime
    ) -> AlertRecord:
        """Stamp an incoming alert: fingerprint (the sender's or computed) and resolved status."""
        fingerprint = alert.fingerprint or label_fingerprint(alert.labels)
        status = alert.effective_status(received_at)
        return cls(
            fingerprint=fingerprint,
            fingerprint_source="sender" if alert.fingerprint else "computed",
            request_id=request_id,
            received_at=received_at,
            alert=alert.model_copy(update={"fingerprint": fingerprint, "status": status}),
            group=group,
        )

    def to_bytes(self) -> bytes:
        """The topic encoding: JSON with Alertmanager's field names."""
        return self.model_dump_json(by_alias=True).encode()

    def received(self) -> Received:
        """The fields the router takes."""
        return Received(self.fingerprint, self.alert, self.received_at, self.group)


_TIMESTAMP = TypeAdapter(datetime)
_ALERT_JSON = Alert.__pydantic_serializer__
_STAMPED = {"status", "fingerprint"}
_ALERTS = {"alerts"}
_SENDER, _COMPUTED = b',"fingerprint_source":"sender', b',"fingerprint_source":"computed'
_STATUS = {"firing": b'{"status":"firing",', "resolved": b'{"status":"resolved",'}


def _quoted(text: str) -> bytes:
    """A JSON string: ids and Alertmanager's hex fingerprints as they are, anything else
    escaped."""
    if text.isascii() and text.replace("-", "").isalnum():
        return b'"' + text.encode() + b'"'
    return json.dumps(text, ensure_ascii=False).encode()


def encode_records(
    alerts: list[Alert], group: GroupContext, request_id: str, received_at: datetime
) -> list[tuple[bytes, bytes, Received]]:
    """Key and value of each alert's record, the bytes ``AlertRecord.build(...).to_bytes()``
    gives, but with the request's fields and group serialised once, not once per alert; and
    what decoding the value would give the router. ``group`` may be the whole
    :class:`WebhookPayload`: its alerts are left out."""
    middle = b"".join((
        b'","request_id":', _quoted(request_id),
        b',"received_at":', _TIMESTAMP.dump_json(received_at), b',"alert":',
    ))
    group_json = group.__pydantic_serializer__.to_json(group, by_alias=True, exclude=_ALERTS)
    tail = b',"group":' + group_json + b"}"
    context = group if type(group) is GroupContext else GroupContext.model_construct(
        **{name: getattr(group, name) for name in GroupContext.model_fields})
    encoded = []
    to_json = _ALERT_JSON.to_json
    for alert in alerts:
        fingerprint = alert.fingerprint or label_fingerprint(alert.labels)
        quoted = _quoted(fingerprint)
        status = alert.effective_status(received_at)
        # the alert with its status and fingerprint stamped: those are its first and last
        # fields, so they are written around the rest instead of copying the model
        rest = to_json(alert, by_alias=True, exclude=_STAMPED)
        stamped = alert if alert.fingerprint and alert.status else alert.model_copy(
            update={"fingerprint": fingerprint, "status": status})
        encoded.append((fingerprint.encode(), b"".join((
            b'{"schema_version":1,"fingerprint":', quoted,
            _SENDER if alert.fingerprint else _COMPUTED, middle,
            _STATUS[status], rest[1:-1],
            b',"fingerprint":', quoted, b"}", tail,
        )), Received(fingerprint, stamped, received_at, context)))
    return encoded


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the ingest path uses."""
    return datetime.now(UTC)
