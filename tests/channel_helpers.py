"""Helpers for the channel tests: secrets by key, notifications for a receiver."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from nmstream.channels.base import Secrets
from nmstream.config.models import SecretKeySelector
from nmstream.config.secrets import MissingSecret
from nmstream.render.models import Notification
from nmstream.routing.models import ReceiverRef


def secrets_of(values: dict[str, str]) -> Secrets:
    """Secrets that resolve a reference by its key alone."""

    def resolve(ref: SecretKeySelector) -> bytes:
        if ref.key not in values:
            raise MissingSecret(ref.key)
        return values[ref.key].encode()

    return Secrets(resolve)


def notification_for(channel: str, kind: str, targets: dict[str, Any], body: str = "hello",
                     config_kind: str = "", subject: str | None = None) -> Notification:
    """A notification for one receiver of ``kind`` with these targets."""
    ref = ReceiverRef(kind=kind, name="r", channel=channel, tenant=None,
                      config_kind=config_kind or kind.replace("Receiver", "Config"),
                      config_name="c", targets=targets)
    return Notification(id="1" * 32, channel=channel, receiver=ref, group_id="g",
                        group_labels={"alertname": "A"}, subject=subject, body=body,
                        fingerprints=["f1"], statuses={"f1": "firing"},
                        created_at=datetime(2026, 1, 1, tzinfo=UTC))
