"""Route, group and render: ``nmstream-alerts`` → ``nmstream-notify-<channel>``, in one stage.

Ingest writes every alert to the partition of its group labels (:func:`group_partition`), so
each group of every receiver lives on one partition of ``nmstream-alerts``. The router reads
that topic in batches with its own consumer group (``<app id>-route``) and, per alert:

- routes it: the receivers that get it (tenant, receiver selectors, alertSelector); an alert
  no receiver takes is a ``filtered`` outcome on ``nmstream-sent``;
- drops a repeat within ``dedupWindow`` (see :mod:`nmstream.routing.dedup`): a
  ``deduplicated`` outcome;
- adds it to its receiver's group (by the NotificationManager's ``groupLabels``), which is
  rendered (:mod:`nmstream.render`) and its notifications written to
  ``nmstream-notify-<channel>`` when it holds ``batchMaxSize`` alerts or ``batchMaxWait``
  after its oldest alert was received. Rendering where the group is flushed spares every
  group a topic hop (an encoding, a write, a read and a decoding).

A group is made of the alerts received within ``batchMaxWait``, not of those the router read
in time: a router behind on its partition (started after the alerts came, catching up after a
restart, or slower than a burst) keeps a due group open until it read the alerts received
before the group fell due (:meth:`Router.read_past`), ``batchMaxWait`` longer at most.

The alerts ingest wrote in this worker are handed to it as decoded (see
:class:`~nmstream.stage.ReadBack`), so a record is parsed only by a router in another worker
or when read again; likewise the router hands its notifications to this worker's dispatcher.
The router gives way to ingest while posts wait for Kafka (:meth:`Router.give_way`), and
renders the groups due soon while it is idle (:meth:`Router.render_ahead`): when a burst's
groups fall due, they are only written.

It is a :class:`~nmstream.stage.Stage`: offsets are never committed past an alert whose
notifications are not yet in Kafka, so after a crash or a rebalance the owner of the partition
reads the pending alerts again and rebuilds their groups. No table state is needed (and none
can be lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import mode
from aiokafka import TopicPartition

from nmstream.app import app
from nmstream.audit.history import record_outcome
from nmstream.config.agents import state
from nmstream.config.selection import Selected, Skipped, channel_of, select
from nmstream.ingest.models import Alert, AlertRecord, Received, utcnow
from nmstream.metrics import (
    ALERTS_DEDUPLICATED,
    ALERTS_ROUTED,
    ALERTS_UNROUTED,
    GROUPS_FLUSHED,
    GROUPS_KEPT_OPEN,
)
from nmstream.render.agents import Rendered, render_ahead, write_notifications
from nmstream.render.models import SentRecord
from nmstream.routing.batching import Batching, batching
from nmstream.routing.dedup import Dedup
from nmstream.routing.models import AlertGroup, ReceiverRef, decode, group_id
from nmstream.stage import Batches, ReadBack, Stage, StageService
from nmstream.topics import ALERTS, NOTIFY

log = logging.getLogger(__name__)

FLUSH_TICK = 0.02
#: The router gives way to ingest's posts until this share of ``batchMaxWait``, and at most
#: :data:`GIVE_WAY_MAX` seconds, after a batch's oldest alert was received (see
#: :meth:`Router.give_way`).
GIVE_WAY = 0.5
GIVE_WAY_MAX = 0.5
#: When idle, the groups due within this many seconds are rendered ahead, at most
#: :data:`AHEAD_SLICE` seconds at a time before the loop gets its turn.
RENDER_AHEAD = 0.5
AHEAD_SLICE = 0.002
#: Bytes of alert records ingest keeps for the router (:class:`~nmstream.stage.ReadBack`):
#: ~30,000 of the benchmark's, whose router, giving way, may lag its whole 20,000-alert burst.
READ_BACK_BYTES = 24 << 20
_TARGET_EXCLUDED = ("alertSelector", "template", "subjectTemplate")


def receiver_ref(selected: Selected) -> ReceiverRef:
    """The receiver as groups carry it: identity, config by name, targets."""
    spec = selected.receiver.spec.model_dump(by_alias=True, exclude_none=True)
    targets = {
        k: v for k, v in spec.items()
        if k not in _TARGET_EXCLUDED and not k.endswith("ConfigSelector")
    }
    return ReceiverRef(
        kind=selected.receiver.kind,
        name=selected.receiver.metadata.name,
        channel=channel_of(selected.receiver),
        tenant=selected.tenant,
        config_kind=selected.config.kind,
        config_name=selected.config.metadata.name,
        targets=targets,
    )


_refs: tuple[int, dict[tuple[int, int, str | None], ReceiverRef]] | None = None


def cached_ref(selected: Selected) -> ReceiverRef:
    """:func:`receiver_ref`, built once per receiver and view version (the snapshot holding
    the receiver and config objects lives as long as that version)."""
    global _refs
    version = state.view.version
    if _refs is None or _refs[0] != version:
        _refs = (version, {})
    key = (id(selected.receiver), id(selected.config), selected.tenant)
    if (ref := _refs[1].get(key)) is None:
        ref = _refs[1][key] = receiver_ref(selected)
    return ref


@dataclass(eq=False)
class Pending:
    """A group being collected: its alerts, and the lowest offset of them per partition."""

    group_id: str
    receiver: ReceiverRef
    group_labels: dict[str, str]
    partition: int
    record: Received
    due: float
    alerts: dict[str, Alert] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)
    #: The group's entry in the router's timers (older entries of it are stale).
    timer: int = -1
    #: Its notifications, when rendered ahead since its last alert arrived.
    rendered: Rendered | None = None

    def add(self, record: Received, partition: int, offset: int, max_wait: float) -> bool:
        """Take one alert (the newest status of a fingerprint wins); the group is due
        ``max_wait`` after its oldest alert was received. True when that made it due earlier."""
        self.alerts[record.fingerprint] = record.alert
        self.offsets.setdefault(partition, offset)
        self.rendered = None
        if record.received_at < self.record.received_at:
            self.record = record
            self.due = record.received_at.timestamp() + max_wait
            return True
        return False

    def merge(self, newer: Pending) -> None:
        """Take what arrived for the same group while this one was being written."""
        self.alerts.update(newer.alerts)
        self.rendered = None
        for partition, offset in newer.offsets.items():
            self.offsets[partition] = min(self.offsets.get(partition, offset), offset)
        if newer.record.received_at < self.record.received_at:
            self.record, self.due = newer.record, newer.due

    def ready(self) -> AlertGroup | Rendered:
        """Its notifications if rendered ahead and still current, else the group to render."""
        if self.rendered is not None and self.rendered.current():
            return self.rendered
        return self.to_group()

    def to_group(self) -> AlertGroup:
        """The group as templates (and render dead letters) see it."""
        return AlertGroup(
            group_id=self.group_id,
            group_labels=self.group_labels,
            receiver=self.receiver,
            alerts=list(self.alerts.values()),
            source_receiver=self.record.group.receiver,
            external_url=self.record.group.external_url,
            received_at=self.record.received_at,
            flushed_at=utcnow(),
        )


class Router(Stage):
    """The route-and-group stage of one worker: pending groups and dedup state."""

    def __init__(self) -> None:
        super().__init__("route", [ALERTS.name])
        self.pending: dict[str, Pending] = {}
        #: ``(due, timer, group id)`` of the pending groups, soonest first; an entry whose
        #: timer is not its group's current one is stale and skipped.
        self.timers: list[tuple[float, int, str]] = []
        self._timer_ids = itertools.count()
        #: Per partition, due groups kept open while the router is behind on it (since when,
        #: and the group), and when the newest alert read from it was received.
        self.waiting: dict[int, deque[tuple[float, Pending]]] = {}
        self.read_until: dict[int, float] = {}
        #: Groups being written: their alerts are not committed until Kafka has their
        #: notifications.
        self.writing: set[Pending] = set()
        #: Pending groups whose alerts changed since they were rendered ahead (or that were
        #: not yet), and ``(due, group id)`` of them, soonest first (an entry of a group not
        #: in the set is stale).
        self.unrendered: set[str] = set()
        self.ahead: list[tuple[float, str]] = []
        #: Whether Kafka refused the last write: the next is tried a tick later.
        self.refused = False
        #: When the last fetched batch was handled (``time.monotonic``).
        self.handled_at = 0.0
        #: Posts ingest is answering, and whether there are none.
        self.posts = 0
        self.no_posts = asyncio.Event()
        self.no_posts.set()
        self.dedup = Dedup()
        #: What ingest in this worker wrote to the alerts partitions this router owns.
        self.read_back: ReadBack[Received] = ReadBack(READ_BACK_BYTES)

    @contextlib.contextmanager
    def post(self) -> Iterator[None]:
        """Ingest answering a post: the router gives way meanwhile (see :meth:`give_way`)."""
        self.posts += 1
        self.no_posts.clear()
        try:
            yield
        finally:
            self.posts -= 1
            if not self.posts:
                self.no_posts.set()

    async def give_way(self, batches: Batches) -> None:
        """Let ingest answer the posts in flight first (an acknowledgement is what Alertmanager
        waits for): wait until there are none, or until the batch's oldest alert was received
        a :data:`GIVE_WAY` share of ``batchMaxWait`` ago (:data:`GIVE_WAY_MAX` at most). That
        delays no notification but those of full groups: a group is due ``batchMaxWait``
        after its oldest alert was received, not routed."""
        if not self.posts:
            return
        oldest = min(records[0].timestamp for records in batches.values()) / 1000
        wait = oldest + min(GIVE_WAY * batching().max_wait, GIVE_WAY_MAX) - time.time()
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.no_posts.wait(), wait)

    async def handle(self, batches: Batches) -> None:
        """Route, deduplicate and group a fetched batch (once ingest had its turn); write the
        groups it filled."""
        await self.give_way(batches)
        snapshot, grouping = state.view.snapshot(), batching()
        outcomes: list[SentRecord] = []
        full: list[Pending] = []
        routed: Counter[str] = Counter()
        for tp, records in batches.items():
            newest = self.read_until.get(tp.partition, 0.0)
            for r in records:
                if not r.value:
                    continue
                record = self.read_back.take(r.value)
                if record is None:
                    decoded = decode(AlertRecord, r.value, ALERTS.name)
                    if decoded is None:
                        continue
                    record = decoded.received()
                newest = max(newest, record.received_at.timestamp())
                try:
                    self.take(record, tp.partition, r.offset, snapshot, grouping, outcomes,
                              full, routed)
                except Exception:  # a bug must cost one alert, not stop the stage
                    log.exception("routing: skipping alert %s", record.fingerprint)
            self.read_until[tp.partition] = newest
        for channel, count in routed.items():
            ALERTS_ROUTED.labels(channel=channel).inc(count)
        for outcome in outcomes:
            await record_outcome(outcome)
        if full:
            await self.write(full)
        self.handled_at = time.monotonic()

    def take(self, record: Received, partition: int, offset: int, snapshot: Any,
             grouping: Batching, outcomes: list[SentRecord], full: list[Pending],
             routed: Counter[str]) -> None:
        """One alert: to each receiver's group, or an outcome saying why it goes nowhere."""
        alert = record.alert
        selection = select(alert.labels, snapshot)
        if not selection.selected:
            outcomes.append(unrouted(record, selection.skipped))
            return
        labels = grouping.group_labels(alert.labels)
        status = alert.status or "firing"
        for selected in selection.selected:
            ref = cached_ref(selected)
            if not self.dedup.admit(partition, ref.key, record.fingerprint, status,
                                    (partition, offset), grouping.dedup_window):
                ALERTS_DEDUPLICATED.inc()
                outcomes.append(SentRecord(
                    notification_id=None, status="deduplicated", channel=ref.channel,
                    receiver=ref, tenant=ref.tenant, fingerprints=[record.fingerprint],
                    error=f"{status} again within dedupWindow {grouping.dedup_window:g}s",
                    received_at=record.received_at, at=utcnow(),
                ))
                continue
            routed[ref.channel] += 1
            gid = group_id(ref, labels)
            group = self.pending.get(gid)
            if group is None:
                group = self.pending[gid] = Pending(
                    gid, ref, labels, partition, record,
                    record.received_at.timestamp() + grouping.max_wait,
                )
                self.schedule(group)
            if group.add(record, partition, offset, grouping.max_wait):
                self.schedule(group)
            self.changed(group)
            if len(group.alerts) >= grouping.max_size:
                full.append(self.pop(gid))

    def pop(self, gid: str) -> Pending:
        """Take a group out of the pending ones, to write it."""
        self.unrendered.discard(gid)
        return self.pending.pop(gid)

    def changed(self, group: Pending) -> None:
        """Mark a group to be rendered (again) ahead of its due time (the entries are rebuilt
        from the marked groups once stale ones outnumber them)."""
        if group.group_id in self.unrendered:
            return
        if len(self.ahead) > 2 * len(self.unrendered) + 1024:
            self.ahead = [(self.pending[g].due, g) for g in self.unrendered]
            heapq.heapify(self.ahead)
        self.unrendered.add(group.group_id)
        heapq.heappush(self.ahead, (group.due, group.group_id))

    def schedule(self, group: Pending) -> None:
        """Set the group's timer to its due time (the entries are rebuilt from the pending
        groups once stale ones, of groups written when full, outnumber them)."""
        if len(self.timers) > 2 * len(self.pending) + 1024:
            self.timers = [(g.due, g.timer, g.group_id) for g in self.pending.values()
                           if g is not group]
            heapq.heapify(self.timers)
        group.timer = next(self._timer_ids)
        heapq.heappush(self.timers, (group.due, group.timer, group.group_id))

    async def flush_due(self, now: float | None = None) -> None:
        """Write every group whose oldest alert was received ``batchMaxWait`` ago, once the
        alerts received before then were read (:meth:`read_past`), or after waiting for them
        ``batchMaxWait`` more."""
        now, due = time.time() if now is None else now, []
        given_up = now - batching().max_wait
        read: dict[int, float] = {}

        def read_past(partition: int) -> float:
            if partition not in read:
                read[partition] = self.read_past(partition, now)
            return read[partition]

        for partition, waiting in list(self.waiting.items()):
            until = read_past(partition)
            while waiting and (waiting[0][1].due <= until or waiting[0][0] <= given_up):
                _, held = waiting.popleft()
                if self.pending.get(held.group_id) is held:  # not written when full
                    due.append(self.pop(held.group_id))
            if not waiting:
                del self.waiting[partition]
        while self.timers and self.timers[0][0] <= now:
            _, timer, gid = heapq.heappop(self.timers)
            group = self.pending.get(gid)
            if group is None or group.timer != timer:
                continue
            if group.due <= read_past(group.partition):
                due.append(self.pop(gid))
            else:
                self.waiting.setdefault(group.partition, deque()).append((now, group))
                GROUPS_KEPT_OPEN.inc()
        if due:
            await self.write(due)

    def read_past(self, partition: int, now: float) -> float:
        """Until when the alerts a partition received were read: ``now`` once the router read
        what Kafka had of it; while it is behind, when the newest alert it read was received
        (ingest writes alerts in about the order they are received)."""
        if not self.behind(TopicPartition(ALERTS.name, partition)):
            return now
        return self.read_until.get(partition, 0.0)

    def until_due(self, most: float) -> float:
        """Seconds until the soonest timer (perhaps of a group written since), ``most`` at
        most; ``most`` after Kafka refused a write (its groups are due already), and
        :data:`FLUSH_TICK` at most while due groups wait for alerts to be read."""
        if self.waiting:
            most = min(most, FLUSH_TICK)
        if not self.timers or self.refused:
            return most
        return min(max(self.timers[0][0] - time.time(), 0.0), most)

    def idle(self) -> bool:
        """Whether ingest answers no post and no alerts were handled for a flush tick."""
        return not self.posts and time.monotonic() - self.handled_at >= FLUSH_TICK

    def render_ahead(self, horizon: float, budget: float) -> bool:
        """Render the groups due within ``horizon`` seconds whose alerts changed since they
        were last rendered, soonest due first, for ``budget`` seconds at most; True when some
        are left. When due, a group is written as rendered if the view and its templates are
        still the same."""
        stop, until = time.perf_counter() + budget, time.time() + horizon
        while self.ahead and self.ahead[0][0] <= until:
            _, gid = heapq.heappop(self.ahead)
            if gid not in self.unrendered:
                continue
            self.unrendered.discard(gid)
            group = self.pending[gid]
            group.rendered = render_ahead(group.to_group())
            if time.perf_counter() >= stop:
                return bool(self.ahead) and self.ahead[0][0] <= until
        return False

    async def write(self, groups: list[Pending]) -> None:
        """Render groups and write their notifications (to the partition number of their
        alerts, where the dedup state is rebuilt from) and wait for Kafka; groups Kafka did not
        take go back to pending, merged with what arrived for them meanwhile, for the next tick
        (a notification written twice has the same id, and is delivered once)."""
        self.writing.update(groups)
        try:
            await write_notifications([(g.ready(), g.partition) for g in groups])
        except Exception as exc:  # Kafka failed: keep the groups, retry on the next tick
            self.refused = True
            log.warning("cannot write %d groups (%s); retrying", len(groups), exc)
            for group in groups:
                newer = self.pending.get(group.group_id)
                if newer is not None:
                    group.merge(newer)
                self.pending[group.group_id] = group
                self.schedule(group)
                self.changed(group)
        else:
            self.refused = False
            GROUPS_FLUSHED.inc(len(groups))
        finally:
            self.writing.difference_update(groups)

    def held(self) -> Iterable[tuple[TopicPartition, int]]:
        """The lowest alert offsets of the groups not yet in Kafka."""
        for group in (*self.pending.values(), *self.writing):
            for partition, offset in group.offsets.items():
                yield TopicPartition(ALERTS.name, partition), offset

    async def released(self, partitions: set[TopicPartition]) -> None:
        """Forget the groups and dedup state of lost partitions: the new owner reads their
        pending alerts again."""
        lost = {tp.partition for tp in partitions}
        self.read_back.disown(lost)
        for partition in lost:
            self.waiting.pop(partition, None)
            self.read_until.pop(partition, None)
        for gid in [g for g, p in self.pending.items() if p.partition in lost]:
            self.pop(gid)
        self.dedup.forget(lost)

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        """Load what was sent within the window for the partitions this worker now owns."""
        self.read_back.own({tp.partition for tp in partitions})
        try:
            await self.dedup.rebuild([spec.name for spec in NOTIFY.values()],
                                     {tp.partition for tp in partitions},
                                     batching().dedup_window)
        except Exception as exc:  # Kafka trouble: start empty (a repeat may be sent, none lost)
            log.warning("cannot rebuild dedup state (%s); starting empty", exc)


def unrouted(record: Received, skipped: Sequence[Skipped]) -> SentRecord:
    """An alert no receiver takes: counted, and a ``filtered`` outcome with the reasons."""
    ALERTS_UNROUTED.inc()
    for skip in skipped:
        log.debug("alert %s: receiver %s skipped: %s", record.fingerprint,
                  skip.receiver.metadata.name, skip.reason)
    reasons = sorted({s.reason for s in skipped})
    return SentRecord(
        notification_id=None, status="filtered", channel=None, receiver=None,
        tenant=None, fingerprints=[record.fingerprint],
        error="; ".join(reasons) or "no receiver matches",
        received_at=record.received_at, at=utcnow(),
    )


router = Router()


@app.service
class RouterService(StageService):
    """Runs :data:`router`: consumption, commits, flushes on time, dedup expiry."""

    stage = router

    @mode.Service.task
    async def _flush(self) -> None:
        while not self.should_stop:
            await self.sleep(router.until_due(FLUSH_TICK))
            await router.flush_due()

    @mode.Service.task
    async def _render_ahead(self) -> None:
        """While no alerts arrive, render the groups that wait: when due, they are only
        written."""
        while not self.should_stop:
            await self.sleep(FLUSH_TICK)
            while router.idle():
                if not router.render_ahead(RENDER_AHEAD, AHEAD_SLICE):
                    break
                await asyncio.sleep(0)  # the loop's turn between slices

    @mode.Service.task
    async def _expire(self) -> None:
        """Forget alerts sent longer than ``dedupWindow`` ago."""
        while not self.should_stop:
            await self.sleep(1.0)
            router.dedup.purge(batching().dedup_window)
