"""Writing the history: every outcome becomes one record on ``nmstream-sent``."""

from __future__ import annotations

from nmstream.metrics import NOTIFICATION_OUTCOMES, child
from nmstream.render.models import SentRecord
from nmstream.topics import SENT, send_keyed


async def record_outcome(record: SentRecord) -> None:
    """Publish one outcome, keyed by notification id (by the first fingerprint when none)."""
    key = record.notification_id or (record.fingerprints[0] if record.fingerprints else "")
    await send_keyed(SENT.name, key.encode(), record.to_bytes())
    child(NOTIFICATION_OUTCOMES, record.channel or "", record.status).inc()
