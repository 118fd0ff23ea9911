"""Dispatch: the :class:`Dispatch` stage delivers ``nmstream-notify-<channel>`` records and, per
channel, an agent re-delivers ``nmstream-retry-<channel>`` records when due (so retries never
hold up fresh notifications); every outcome goes to ``nmstream-sent``, exhausted or permanent
failures to ``nmstream-dlq-<channel>`` with the history of their attempts. An attempt whose
outcome is already recorded (read again after a crash) is skipped: see
:mod:`nmstream.channels.delivered`.

Each worker resolves secret references from its own :class:`SecretStore` (fed by a
Secret-only source of its own: secret values never travel on a topic). A send is bounded by
the channel's ``notificationTimeout`` and, per channel and worker, by
``NMSTREAM_DISPATCH_CONCURRENCY`` sends in flight.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, Literal

import mode
from aiokafka import TopicPartition
from faust.types import TP

from nmstream.app import app, settings
from nmstream.audit.history import record_outcome
from nmstream.channels.base import (
    DEFAULT_TIMEOUT,
    Notifier,
    Outcome,
    Secrets,
    SendContext,
    Verdict,
    bounded_send,
)
from nmstream.channels.delivered import Delivered
from nmstream.channels.dingtalk import DingTalkNotifier
from nmstream.channels.email import EmailNotifier
from nmstream.channels.slack import SlackNotifier
from nmstream.channels.webhook import WebhookNotifier
from nmstream.channels.wechat import WechatNotifier
from nmstream.config.agents import state
from nmstream.config.events import SECRET
from nmstream.config.models import CHANNELS
from nmstream.config.secrets import MissingSecret, SecretStore
from nmstream.ingest.models import utcnow
from nmstream.metrics import (
    DELIVERY_LATENCY,
    NOTIFICATIONS_SENT,
    REDELIVERIES_SKIPPED,
    SEND_SECONDS,
    child,
)
from nmstream.render.models import DeadLetter, Notification, SentRecord
from nmstream.routing.models import decode
from nmstream.stage import Batches, ReadBack, Stage, StageService
from nmstream.topics import DLQ, NOTIFY, RETRY, SENT, retry_topics, send_keyed

log = logging.getLogger(__name__)

#: Bytes of notifications the router keeps for the dispatcher, per channel
#: (:class:`~nmstream.stage.ReadBack`): ~500 of the benchmark's webhook notifications.
READ_BACK_BYTES = 4 << 20

secret_store = SecretStore(settings.namespace)
delivered = Delivered()
notifiers: dict[str, Notifier] = {
    "email": EmailNotifier(),
    "webhook": WebhookNotifier(),
    "slack": SlackNotifier(settings.slack_api_url),
    "wechat": WechatNotifier(),
    "dingtalk": DingTalkNotifier(settings.dingtalk_api_url),
}


def send_context(notification: Notification, config: Any = None) -> SendContext | Outcome:
    """Config (by default the one in the view), secrets, timeout and options for a
    notification, or why it cannot be sent."""
    ref = notification.receiver
    if config is None:
        config = state.view.get(ref.config_kind, ref.config_name)
    if config is None and ref.channel != "webhook":
        return Outcome.permanent(f"{ref.config_kind} {ref.config_name} no longer exists")
    manager = state.view.manager()
    options = manager.spec.receivers.options if manager is not None else None
    channel_options = getattr(options, ref.channel, None) if options is not None else None
    timeout = getattr(channel_options, "notification_timeout", None) or DEFAULT_TIMEOUT
    return SendContext(config, Secrets(secret_store.get), float(timeout), channel_options)


async def deliver(notification: Notification, config: Any = None) -> Outcome:
    """One delivery attempt, measured; a missing secret is a permanent failure."""
    ctx = send_context(notification, config)
    if isinstance(ctx, Outcome):
        return ctx
    started = time.perf_counter()
    try:
        return await bounded_send(notifiers[notification.channel], notification, ctx)
    except MissingSecret as exc:
        return Outcome.permanent(str(exc))
    finally:
        child(SEND_SECONDS, notification.channel).observe(time.perf_counter() - started)


def backoff(attempts: int, retry_after: float | None) -> float:
    """Seconds before the next attempt: exponential with jitter, capped, never sooner than
    the server's ``Retry-After``."""
    base = min(settings.retry_initial * settings.retry_factor ** (attempts - 1),
               settings.retry_max_backoff)
    return max(base * random.uniform(0.5, 1.0), retry_after or 0.0)


async def settle(notification: Notification, outcome: Outcome) -> None:
    """Record the outcome on ``nmstream-sent``; a retryable failure within the budget goes to
    ``nmstream-retry-<channel>``, anything else that failed to ``nmstream-dlq-<channel>``."""
    channel, now = notification.channel, utcnow()
    attempts = notification.attempt + 1
    child(NOTIFICATIONS_SENT, channel, outcome.verdict.value).inc()
    status: Literal["delivered", "retrying", "dead-lettered"] = "delivered"
    if outcome.verdict != Verdict.DELIVERED:
        failures = [*notification.failures,
                    f"attempt {attempts}: {outcome.verdict.value}: {outcome.reason}"]
        failed = notification.model_copy(update={"attempt": attempts, "failures": failures})
        age = (now - notification.created_at).total_seconds()
        if (outcome.verdict == Verdict.RETRYABLE and attempts < settings.retry_max_attempts
                and age < settings.retry_max_age):
            wait = backoff(attempts, outcome.retry_after)
            retry = failed.model_copy(update={"not_before": now + timedelta(seconds=wait)})
            await send_keyed(RETRY[channel].name, notification.id.encode(), retry.to_bytes())
            status = "retrying"
        else:
            letter = DeadLetter(stage="deliver", channel=channel, error=outcome.reason,
                                notification=failed, failed_at=now)
            await send_keyed(DLQ[channel].name, notification.id.encode(), letter.to_bytes())
            status = "dead-lettered"
    elif notification.received_at is not None:
        latency = (now - notification.received_at).total_seconds()
        child(DELIVERY_LATENCY, channel).observe(max(latency, 0.0))
    await record_outcome(SentRecord(
        notification_id=notification.id, status=status, channel=channel,
        receiver=notification.receiver, tenant=notification.receiver.tenant,
        fingerprints=notification.fingerprints, attempts=attempts, error=outcome.reason,
        failed_targets=list(outcome.failed_targets), received_at=notification.received_at,
        created_at=notification.created_at, at=now,
    ))
    delivered.add(notification.id, attempts)
    level = logging.INFO if status == "delivered" and not outcome.reason else logging.WARNING
    log.log(level, "%s notification %s to %s: %s after %d attempt(s)%s", channel,
            notification.id, notification.receiver.key, status, attempts,
            f" ({outcome.reason})" if outcome.reason else "")


#: Notifications being sent now, by id: a second copy (a group rendered again after a crash)
#: waits for the first one's outcome instead of being sent alongside it.
in_flight: dict[str, asyncio.Event] = {}


async def attempt(notification: Notification) -> None:
    """Deliver and settle, unless this attempt's outcome is already recorded (a record read
    again after a crash or rebalance, or a second copy of the notification)."""
    await delivered.ready.wait()
    while (busy := in_flight.get(notification.id)) is not None:
        await busy.wait()
    if delivered.has(notification.id, notification.attempt):
        REDELIVERIES_SKIPPED.labels(channel=notification.channel).inc()
        log.info("%s notification %s attempt %d already has an outcome; not sent again",
                 notification.channel, notification.id, notification.attempt + 1)
        return
    done = in_flight[notification.id] = asyncio.Event()
    try:
        await settle(notification, await deliver(notification))
    finally:
        del in_flight[notification.id]
        done.set()


class Dispatch(Stage):
    """Delivers ``nmstream-notify-<channel>`` records: per channel, a queue and
    ``NMSTREAM_DISPATCH_CONCURRENCY`` senders taking from it. A channel with
    ``NMSTREAM_DISPATCH_QUEUE`` notifications queued has its partitions paused until half of
    them are taken, so a slow channel neither holds up another nor fills the memory. A record
    counts as handled once its outcome is written (see :class:`~nmstream.stage.Stage`)."""

    #: A notification leaves as soon as it is in Kafka.
    eager = True

    def __init__(self) -> None:
        super().__init__("dispatch", [spec.name for spec in NOTIFY.values()])
        self.channels = {spec.name: channel for channel, spec in NOTIFY.items()}
        self.queues: dict[str, asyncio.Queue[tuple[TopicPartition, int, int, Notification]]] = {
            channel: asyncio.Queue() for channel in NOTIFY
        }
        self.paused: set[str] = set()
        #: Per topic, notifications queued and not yet taken by a sender.
        self.waiting: Counter[str] = Counter()
        #: Per partition, the offsets fetched whose outcome is not written yet.
        self.holding: dict[TopicPartition, set[int]] = {}
        #: Per partition, bumped when it is revoked: what was queued before is dropped.
        self.generation: dict[TopicPartition, int] = {}
        #: Per topic, what the router of this worker wrote to the partitions this one owns.
        self.read_back: dict[str, ReadBack[Notification]] = {
            spec.name: ReadBack(READ_BACK_BYTES) for spec in NOTIFY.values()
        }

    async def handle(self, batches: Batches) -> None:
        """Queue the notifications; pause the channels whose queue is full."""
        for tp, records in batches.items():
            queue, generation = self.queues[self.channels[tp.topic]], self.generation.get(tp, 0)
            holding = self.holding.setdefault(tp, set())
            read_back = self.read_back[tp.topic]
            for record in records:
                value = record.value
                notification = (read_back.take(value) or decode(Notification, value, tp.topic)
                                if value else None)
                if notification is not None:
                    holding.add(record.offset)
                    queue.put_nowait((tp, generation, record.offset, notification))
                    self.waiting[tp.topic] += 1
        for channel, queue in self.queues.items():
            if queue.qsize() >= settings.dispatch_queue:
                self._pause(channel)

    def held(self) -> Iterable[tuple[TopicPartition, int]]:
        """The lowest offset per partition whose outcome is not written yet."""
        return [(tp, min(offsets)) for tp, offsets in self.holding.items() if offsets]

    async def lag(self) -> Counter[str]:
        """Records not fetched yet, and notifications fetched but not yet being sent."""
        return await super().lag() + self.waiting

    async def send(self, channel: str) -> None:
        """One sender of a channel: attempts queued notifications, until cancelled."""
        queue = self.queues[channel]
        while True:
            tp, generation, offset, notification = await queue.get()
            self.waiting[tp.topic] -= 1
            if channel in self.paused and queue.qsize() <= settings.dispatch_queue // 2:
                self._resume(channel)
            if generation != self.generation.get(tp, 0):
                continue  # revoked since it was fetched: its new owner reads it again
            try:
                await attempt(notification)
            except Exception:  # a bug must cost one notification, not a sender
                log.exception("%s notification %s: not delivered", channel, notification.id)
            if generation == self.generation.get(tp, 0):
                self.holding[tp].discard(offset)

    def _partitions(self, channel: str) -> list[TopicPartition]:
        consumer = self.consumer
        owned = consumer.assignment() if consumer is not None else set()
        return [tp for tp in owned if self.channels[tp.topic] == channel]

    def _pause(self, channel: str) -> None:
        if self.consumer is not None:
            self.consumer.pause(*self._partitions(channel))  # again: new partitions too
        if channel not in self.paused:
            self.paused.add(channel)
            log.info("dispatch: %d %s notifications wait for a sender; not fetching more until "
                     "half of them are sent", self.queues[channel].qsize(), channel)

    def _resume(self, channel: str) -> None:
        self.paused.discard(channel)
        if self.consumer is not None:
            self.consumer.resume(*self._partitions(channel))
        log.info("dispatch: fetching %s notifications again", channel)

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        """Before sending what may be read again, learn which outcomes are already recorded."""
        for tp in partitions:
            self.read_back[tp.topic].own({tp.partition})
        await rebuild_delivered()

    async def released(self, partitions: set[TopicPartition]) -> None:
        """Drop what was queued from lost partitions: the new owner reads it again."""
        for tp in partitions:
            self.generation[tp] = self.generation.get(tp, 0) + 1
            self.holding.pop(tp, None)
            self.read_back[tp.topic].disown({tp.partition})


def _retry_agent(channel: str) -> Any:
    retries = retry_topics[channel]

    async def retry(stream: Any) -> None:
        async for value in stream:
            notification = decode(Notification, value, retries)
            if notification is None:
                continue
            if notification.not_before is not None:
                await asyncio.sleep(max((notification.not_before - utcnow()).total_seconds(), 0))
            await attempt(notification)

    retry.__doc__ = f"Deliver ``{retries.get_topic_name()}`` records once they are due."
    return app.agent(retries, name=f"nmstream.retry.{channel}",
                     concurrency=settings.dispatch_concurrency)(retry)


retriers = {channel: _retry_agent(channel) for channel in CHANNELS}
_RETRIED = {spec.name for spec in RETRY.values()}


async def rebuild_delivered() -> None:
    """Rebuild the delivered table, holding sends meanwhile."""
    delivered.ready.clear()
    try:
        await delivered.rebuild(SENT.name, settings.delivered_window)
    except Exception as exc:  # Kafka trouble: a notification may be sent twice, none lost
        log.warning("cannot rebuild the delivered table (%s); starting with what it has", exc)
    finally:
        delivered.ready.set()


@app.on_partitions_revoked.connect
async def hold_delivered(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
    """Retry partitions are moving: hold sends until the table is rebuilt."""
    delivered.ready.clear()


@app.on_partitions_assigned.connect
async def delivered_for_retries(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
    """Before re-sending what may be read again, learn which outcomes are already recorded."""
    assigned: set[TP] = args[0]
    if any(tp.topic in _RETRIED for tp in assigned):
        await rebuild_delivered()
    else:
        delivered.ready.set()


@app.timer(10.0)  # type: ignore[untyped-decorator]
async def expire_delivered() -> None:
    """Forget outcomes older than ``NMSTREAM_DELIVERED_WINDOW``."""
    delivered.purge(settings.delivered_window)


dispatch = Dispatch()


@app.service
class DispatchService(StageService):
    """Runs :data:`dispatch`: consumption, commits and every channel's senders."""

    stage = dispatch

    @mode.Service.task
    async def _send(self) -> None:
        await asyncio.gather(*(dispatch.send(channel) for channel in CHANNELS
                               for _ in range(settings.dispatch_concurrency)))


@app.service
class SecretFollower(mode.Service):
    """Keeps this worker's secret store current from its own Secret-only source."""

    @mode.Service.task
    async def _follow(self) -> None:
        if settings.config_dir is not None:
            from nmstream.config.directory import DirectorySource

            await DirectorySource(settings.config_dir, secret_store).run()
        elif settings.kubernetes:
            from nmstream.config.kube import KubeWatcher, load_api_client

            await KubeWatcher(load_api_client(), secret_store, (SECRET,),
                              secret_namespace=settings.secret_namespace).run()

    async def on_stop(self) -> None:
        """Close the senders' pooled connections."""
        for notifier in notifiers.values():
            close = getattr(notifier, "close", None)
            if close is not None:
                await close()
