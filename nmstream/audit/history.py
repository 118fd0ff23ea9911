"""Writing the history: every outcome becomes one record on ``nmstream-sent``."""

from __future__ import annotations

from nmstream.metrics import NOTIFICATION_OUTCOMES
from nmstream.render.models import SentRecord
from nmstream.topics import sent_topic


async def record_outcome(record: SentRecord) -> None:
    """Publish one outcome, keyed by notification id (by the first fingerprint when none)."""
    key = record.notification_id or (record.fingerprints[0] if record.fingerprints else "")
    await sent_topic.send(key=key.encode(), value=record.to_bytes())
    NOTIFICATION_OUTCOMES.labels(channel=record.channel or "", status=record.status).inc()
