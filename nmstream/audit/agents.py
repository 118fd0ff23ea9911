"""The NotificationManager's ``history.webhook``: each delivered notification's record of
``nmstream-sent`` is posted there, as notification-manager's history receiver does. It reads
the topic on its own, so a slow or absent history endpoint never holds up delivery; a post is
tried a few times with backoff, then logged and counted as failed."""

from __future__ import annotations

import asyncio
import logging

from nmstream.app import app
from nmstream.channels.agents import deliver
from nmstream.channels.base import Verdict
from nmstream.config.agents import state
from nmstream.config.models import WebhookReceiverSpec
from nmstream.ingest.models import utcnow
from nmstream.metrics import HISTORY_POSTS
from nmstream.render.models import Notification, SentRecord
from nmstream.routing.models import ReceiverRef, decode
from nmstream.stage import Batches, Stage, StageService
from nmstream.topics import SENT

log = logging.getLogger(__name__)

HISTORY_ATTEMPTS = 3
HISTORY_BACKOFF = 1.0


def history_notification(record: SentRecord, spec: WebhookReceiverSpec) -> Notification:
    """The record as a notification to the virtual history receiver."""
    receiver = ReceiverRef(
        kind="WebhookReceiver", name="history", channel="webhook", tenant=None,
        config_kind="WebhookConfig", config_name="",
        targets=spec.model_dump(by_alias=True, exclude_none=True),
    )
    return Notification(
        id=record.notification_id or "", channel="webhook", receiver=receiver,
        group_id="", group_labels={}, subject=None, body=record.model_dump_json(by_alias=True),
        fingerprints=record.fingerprints, statuses={}, created_at=utcnow(),
    )


class History(Stage):
    """Posts delivered-notification records of ``nmstream-sent`` to ``history.webhook`` when
    it is set, one at a time."""

    def __init__(self) -> None:
        super().__init__("history", [SENT.name])

    async def handle(self, batches: Batches) -> None:
        """Post each delivered record of the batch (nothing when no history is configured)."""
        for records in batches.values():
            for record in records:
                manager = state.view.manager()
                target = manager.spec.history if manager is not None else None
                if target is None or not record.value:
                    continue
                sent = decode(SentRecord, record.value, SENT.name)
                if sent is not None and sent.status == "delivered":
                    await post(history_notification(sent, target.webhook), sent)


async def post(notification: Notification, record: SentRecord) -> None:
    """Post one record, tried a few times with backoff."""
    for attempt in range(1, HISTORY_ATTEMPTS + 1):
        outcome = await deliver(notification)
        if outcome.verdict == Verdict.DELIVERED:
            HISTORY_POSTS.labels(outcome="delivered").inc()
            return
        if outcome.verdict == Verdict.PERMANENT or attempt == HISTORY_ATTEMPTS:
            HISTORY_POSTS.labels(outcome="failed").inc()
            log.warning("history webhook: record of %s not posted: %s",
                        record.notification_id, outcome.reason)
            return
        await asyncio.sleep(HISTORY_BACKOFF * 2 ** (attempt - 1))


@app.service
class HistoryService(StageService):
    """Runs the history stage."""

    stage = History()
