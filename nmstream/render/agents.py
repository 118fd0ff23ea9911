"""Render: flushed groups → their notifications on ``nmstream-notify-<channel>``.

The router renders the groups it flushes (:func:`write_notifications`); the render stage
renders what reaches ``nmstream-groups``: groups of render dead letters replayed once their
template is fixed. Templates follow notification-manager's precedence (see :func:`choose`); a
template that fails sends the group to ``nmstream-dlq-<channel>`` with the error and never stops
the stage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nmstream.app import app
from nmstream.channels.agents import dispatch
from nmstream.config.agents import state
from nmstream.ingest.models import utcnow
from nmstream.metrics import NOTIFICATIONS_RENDERED, RENDER_FAILURES
from nmstream.render.engine import Renderer, TemplateError, choose
from nmstream.render.models import DeadLetter, Notification, notification_id
from nmstream.routing.models import AlertGroup, decode
from nmstream.stage import Batches, Stage, StageService
from nmstream.topics import DLQ, GROUPS, NOTIFY, partition_count, send_batched, send_keyed

log = logging.getLogger(__name__)

_renderers: dict[tuple[str, ...], Renderer] = {}


def renderer_for(template_files: list[str]) -> Renderer:
    """A renderer over the user's template directories (a file stands for its directory)."""
    dirs = tuple(str(Path(p) if Path(p).is_dir() else Path(p).parent) for p in template_files)
    if dirs not in _renderers:
        _renderers[dirs] = Renderer(dirs)
    return _renderers[dirs]


def _render(group: AlertGroup, receiver: Any = None) -> tuple[Renderer, list[Notification]]:
    manager = state.view.manager()
    options = manager.spec.receivers.options if manager is not None else None
    files = options.global_.template_files if options and options.global_ else []
    if receiver is None:
        receiver = state.view.get(group.receiver.kind, group.receiver.name)
    channel = group.receiver.channel
    choice = choose(channel, receiver.spec if receiver is not None else None, manager)
    renderer = renderer_for(files)
    messages = renderer.render(channel, choice, group)
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
    return renderer, out


def notifications(group: AlertGroup, receiver: Any = None) -> list[Notification]:
    """Render a group with the templates its receiver (by default the one in the view),
    channel and manager select."""
    return _render(group, receiver)[1]


@dataclass(frozen=True)
class Rendered:
    """A group's notifications and their records, rendered before the group was due, and
    what they were rendered with."""

    notifications: list[tuple[Notification, bytes]]
    version: int
    renderer: Renderer
    generation: int

    def current(self) -> bool:
        """Whether rendering now would give the same: neither the view nor a template
        changed since."""
        return (self.version == state.view.version
                and not self.renderer.changed_since(self.generation))


def render_ahead(group: AlertGroup) -> Rendered | None:
    """The group's notifications, for when it is due; None when its template fails (it is
    rendered again when due, and dead-lettered then)."""
    version = state.view.version
    try:
        renderer, rendered = _render(group)
    except Exception:  # reported when due
        return None
    return Rendered([(n, n.to_bytes()) for n in rendered], version, renderer, renderer.generation)


async def write_notifications(groups: Sequence[tuple[AlertGroup | Rendered, int]]) -> None:
    """Render ``(group, partition)`` pairs (a group rendered ahead is taken as it is) and
    write the notifications of each group to that partition number of
    ``nmstream-notify-<channel>`` (one record batch per partition), a group whose template
    fails to ``nmstream-dlq-<channel>``; returns once Kafka has them all. The dispatcher of
    this worker is handed the notifications of its partitions."""
    now_ms = int(time.time() * 1000)
    out: dict[str, list[tuple[int, Notification, bytes]]] = defaultdict(list)
    futures: list[Awaitable[Any]] = []
    for group, partition in groups:
        if isinstance(group, Rendered):
            for n, value in group.notifications:
                out[n.channel].append((partition, n, value))
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
            futures.append(await send_keyed(DLQ[channel].name, group.group_id.encode(),
                                            letter.to_bytes()))
            continue
        out[channel] += [(partition, n, n.to_bytes()) for n in rendered]
    for channel, notes in out.items():
        topic = NOTIFY[channel].name
        count, read_back = await partition_count(topic), dispatch.read_back[topic]
        numbers, records = [], []
        for partition, notification, value in notes:
            numbers.append(partition % count)
            records.append((notification.id.encode(), value, now_ms))
            read_back.keep(numbers[-1], value, notification)
        futures += await send_batched(topic, records, numbers)
        NOTIFICATIONS_RENDERED.labels(channel=channel).inc(len(notes))
    await asyncio.gather(*futures)


class Render(Stage):
    """Groups of ``nmstream-groups`` → notifications, a fetched batch at a time."""

    #: Small batches: a batch's notifications leave when all of them are rendered.
    fetch_records = 200

    def __init__(self) -> None:
        super().__init__("render", [GROUPS.name])

    async def handle(self, batches: Batches) -> None:
        """Render every group of the batch and wait until Kafka has the notifications."""
        groups = []
        for tp, records in batches.items():
            for record in records:
                group = decode(AlertGroup, record.value, GROUPS.name) if record.value else None
                if group is not None:
                    groups.append((group, tp.partition))
        await write_notifications(groups)


@app.service
class RenderService(StageService):
    """Runs the render stage."""

    stage = Render()
