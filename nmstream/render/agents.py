"""Render: each flushed group → its notifications on ``nmstream-notify-<channel>``.

Templates follow notification-manager's precedence (see :func:`choose`); a template that fails
sends the group to ``nmstream-dlq-<channel>`` with the error and never stops the stage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from nmstream.app import app
from nmstream.config.agents import state
from nmstream.ingest.models import utcnow
from nmstream.metrics import NOTIFICATIONS_RENDERED, RENDER_FAILURES
from nmstream.render.engine import Renderer, TemplateError, choose
from nmstream.render.models import DeadLetter, Notification, notification_id
from nmstream.routing.models import AlertGroup, decode
from nmstream.stage import Batches, Stage, StageService
from nmstream.topics import GROUPS, NOTIFY, dlq_topics, send_batched

log = logging.getLogger(__name__)

_renderers: dict[tuple[str, ...], Renderer] = {}


def renderer_for(template_files: list[str]) -> Renderer:
    """A renderer over the user's template directories (a file stands for its directory)."""
    dirs = tuple(str(Path(p) if Path(p).is_dir() else Path(p).parent) for p in template_files)
    if dirs not in _renderers:
        _renderers[dirs] = Renderer(dirs)
    return _renderers[dirs]


def notifications(group: AlertGroup, receiver: Any = None) -> list[Notification]:
    """Render a group with the templates its receiver (by default the one in the view),
    channel and manager select."""
    manager = state.view.manager()
    options = manager.spec.receivers.options if manager is not None else None
    files = options.global_.template_files if options and options.global_ else []
    if receiver is None:
        receiver = state.view.get(group.receiver.kind, group.receiver.name)
    channel = group.receiver.channel
    choice = choose(channel, receiver.spec if receiver is not None else None, manager)
    messages = renderer_for(files).render(channel, choice, group)
    now = utcnow()
    out = []
    for part, message in enumerate(messages, start=1):
        statuses = {a.fingerprint: a.status or "firing" for a in message.alerts}
        out.append(Notification(
            id=notification_id(group.group_id, sorted(statuses.items()), part),
            channel=channel,
            receiver=group.receiver,
            group_id=group.group_id,
            group_labels=group.group_labels,
            subject=message.subject,
            body=message.body,
            text=message.text,
            fingerprints=list(statuses),
            statuses=statuses,
            part=part,
            parts=len(messages),
            created_at=now,
            received_at=group.received_at,
        ))
    return out


class Render(Stage):
    """Groups → notifications (or a dead letter when a group's template fails), a fetched
    batch at a time, the notifications written as one record batch per partition."""

    #: Small batches: a batch's notifications leave when all of them are rendered.
    fetch_records = 200

    def __init__(self) -> None:
        super().__init__("render", [GROUPS.name])

    async def handle(self, batches: Batches) -> None:
        """Render every group of the batch and wait until Kafka has the notifications."""
        now_ms = int(time.time() * 1000)
        out: dict[str, list[tuple[bytes, bytes, int]]] = defaultdict(list)
        for records in batches.values():
            for record in records:
                group = decode(AlertGroup, record.value, GROUPS.name) if record.value else None
                if group is None:
                    continue
                channel = group.receiver.channel
                try:
                    rendered = notifications(group)
                except Exception as exc:  # a template's error, or a bug: never a lost group
                    RENDER_FAILURES.labels(channel=channel).inc()
                    log.log(logging.WARNING if isinstance(exc, TemplateError) else logging.ERROR,
                            "group %s for %s: %s", group.group_id, group.receiver.key, exc)
                    letter = DeadLetter(stage="render", channel=channel, error=str(exc),
                                        group=group, failed_at=utcnow())
                    await dlq_topics[channel].send(key=group.group_id.encode(),
                                                   value=letter.to_bytes())
                    continue
                out[channel] += [(n.id.encode(), n.to_bytes(), now_ms) for n in rendered]
        futures = []
        for channel, notes in out.items():
            futures += await send_batched(NOTIFY[channel].name, notes)
            NOTIFICATIONS_RENDERED.labels(channel=channel).inc(len(notes))
        await asyncio.gather(*futures)


@app.service
class RenderService(StageService):
    """Runs the render stage."""

    stage = Render()
