"""Pipeline stages that read Kafka in batches, each with a consumer group of its own.

A Faust agent takes one record at a time through Faust's consumer thread, conductor, stream
and acknowledgement; on the busy topics (alerts, groups, notifications, outcomes) that
machinery cost more CPU than the stage's own work. A :class:`Stage` reads its topics with an
aiokafka consumer, up to ``fetch_records`` at a time, and commits, every ``commit_interval`` and
when partitions move, the offsets below every record it still holds (:meth:`Stage.held`), after
flushing the producer: what a stage wrote for a record is in Kafka before the record is
committed, and after a crash or a rebalance the new owner reads what was still held again.

Stages start once the receivers view is in sync. Each stage's group is ``<app id>-<name>``; a
group that has committed nothing yet starts where Faust's group (the app id, which read these
topics before the stages existed) left them, so an upgraded worker does not handle again what
Kafka retains.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

import mode
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient

from nmstream.app import app, settings
from nmstream.config.agents import state

log = logging.getLogger(__name__)

Batches = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]

T = TypeVar("T")


class ReadBack(Generic[T]):
    """Records this worker wrote for a stage of its own, decoded, by their exact bytes.

    The stage reads every record from Kafka as usual; for one whose bytes were written here it
    takes the object kept instead of parsing them again (the same bytes decode to an equal
    object). Only records of partitions the stage owns are kept, each until it is read back;
    losing partitions forgets them all. With ``max_bytes`` of records kept, a new one is not:
    the stage reads the kept ones first, so under a backlog a record kept is one read back
    soon (dropping the oldest instead would drop each just before it is read). Records kept
    longer than ``stale`` seconds (written, but never read: a write Kafka did not take, offsets
    moved past them) make room for new ones.
    """

    def __init__(self, max_bytes: int, stale: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes, self.stale, self.clock = max_bytes, stale, clock
        #: Partition numbers the stage owns.
        self.owned: set[int] = set()
        #: Oldest first (popping the first entry of a plain dict slows down as entries before
        #: it are deleted): the decoded record and when it was kept.
        self._kept: OrderedDict[bytes, tuple[T, float]] = OrderedDict()
        self._bytes = 0

    def keep(self, partition: int, value: bytes, decoded: T) -> None:
        """Keep what ``value`` decodes to, when it goes to a partition the stage owns and
        there is room."""
        kept = self._kept
        if partition not in self.owned or value in kept:
            return
        now = self.clock()
        while self._bytes + len(value) > self.max_bytes:
            if not kept or now - next(iter(kept.values()))[1] < self.stale:
                return
            oldest, _ = kept.popitem(last=False)
            self._bytes -= len(oldest)
        kept[value] = (decoded, now)
        self._bytes += len(value)

    def take(self, value: bytes) -> T | None:
        """What a record with these bytes decodes to, if kept (then forgotten)."""
        entry = self._kept.pop(value, None)
        if entry is None:
            return None
        self._bytes -= len(value)
        return entry[0]

    def own(self, partitions: set[int]) -> None:
        """The stage now owns these partitions too."""
        self.owned |= partitions

    def disown(self, partitions: set[int]) -> None:
        """The stage no longer owns these partitions: forget everything kept."""
        self.owned -= partitions
        self._kept.clear()
        self._bytes = 0


#: Every stage of this worker (for the lag metric).
stages: list[Stage] = []


class Stage:
    """Reads ``topics`` in batches as consumer group ``<app id>-<name>``; subclasses handle
    the batches."""

    #: Records taken from Kafka at a time.
    fetch_records = 1000
    #: Whether a fetch answers as soon as Kafka has a record, instead of waiting for
    #: ``fetch_min_bytes`` (up to ``fetch_max_wait``).
    eager = False

    def __init__(self, name: str, topics: Sequence[str]) -> None:
        self.name = name
        self.group = f"{settings.app_id}-{name}"
        self.topics = list(topics)
        self.consumer: AIOKafkaConsumer | None = None
        #: Per partition owned, the offset after the last record handed to :meth:`handle`:
        #: once it returned (``consumed``: what may be committed), and once it was called
        #: (``fetched``: what :meth:`behind` counts, also while ``handle`` waits for Kafka).
        self.consumed: dict[TopicPartition, int] = {}
        self.fetched: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        #: Partitions revoked so far: a batch handled across a revocation is not counted.
        self.rebalances = 0
        stages.append(self)

    async def handle(self, batches: Batches) -> None:
        """Handle fetched records (only of partitions this worker owns)."""
        raise NotImplementedError

    def behind(self, tp: TopicPartition) -> bool:
        """Whether Kafka had records of a partition, when it last answered a fetch, that were
        not handed to :meth:`handle` yet."""
        consumer, fetched = self.consumer, self.fetched.get(tp)
        if consumer is None or fetched is None or tp not in consumer.assignment():
            return False
        end: int | None = consumer.highwater(tp)
        return end is not None and end > fetched

    def held(self) -> Iterable[tuple[TopicPartition, int]]:
        """Offsets of records handed to :meth:`handle` whose work is not in Kafka yet: nothing
        at or after the lowest of them per partition is committed."""
        return ()

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        """Partitions this worker now owns, before any of their records is fetched."""

    async def released(self, partitions: set[TopicPartition]) -> None:
        """Partitions this worker no longer owns, after what was safe is committed."""

    def new_consumer(self) -> AIOKafkaConsumer:
        """The stage's consumer: its group, no auto-commit, from the earliest record."""
        return AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            group_id=self.group,
            client_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=int(settings.fetch_max_wait * 1000),
            fetch_min_bytes=1 if self.eager else settings.fetch_min_bytes,
            session_timeout_ms=int(settings.session_timeout * 1000),
            heartbeat_interval_ms=int(settings.heartbeat_interval * 1000),
            rebalance_timeout_ms=int(settings.rebalance_timeout * 1000),
        )

    async def run(self) -> None:
        """Consume once the receivers view is in sync, until cancelled."""
        await state.reader.synced.wait()
        try:
            await adopt_faust_offsets(self.group, self.topics)
        except Exception as exc:  # Kafka trouble: the group's own offsets, or the earliest
            log.warning("%s: cannot read the Faust group's offsets (%s)", self.name, exc)
        consumer = self.new_consumer()
        consumer.subscribe(self.topics, listener=_Rebalance(self))
        while True:
            try:
                await consumer.start()
                break
            except Exception as exc:  # Kafka away at start: keep trying, the worker stays up
                log.warning("%s: cannot start the consumer (%s); retrying in 1s", self.name, exc)
                await asyncio.sleep(1.0)
        self.consumer = consumer
        while self.consumer is consumer:
            batches: Batches = {}
            try:
                fetched = await consumer.getmany(timeout_ms=1000, max_records=self.fetch_records)
                owned = consumer.assignment()
                batches = {tp: records for tp, records in fetched.items()
                           if records and tp in owned}  # not revoked while on its way
                rebalances = self.rebalances
                for tp, records in batches.items():
                    self.fetched[tp] = records[-1].offset + 1
                if batches:
                    await self.handle(batches)
                if self.rebalances != rebalances:
                    continue  # partitions moved meanwhile: their owners read from the commits
                for tp, records in batches.items():
                    self.consumed[tp] = records[-1].offset + 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kafka trouble: read the batch again in a second
                log.warning("%s: %s; retrying in 1s", self.name, exc)
                for tp, records in batches.items():
                    if tp in consumer.assignment():
                        consumer.seek(tp, records[0].offset)
                        self.fetched[tp] = records[0].offset
                await asyncio.sleep(1.0)

    def safe_offsets(self) -> dict[TopicPartition, int]:
        """Per partition owned, the offset to commit: below every record held, else after the
        last record handled."""
        safe = dict(self.consumed)
        for tp, offset in self.held():
            if tp in safe and offset < safe[tp]:
                safe[tp] = offset
        return safe

    async def commit(self) -> None:
        """Commit what is safe, once what was written for it is in Kafka."""
        consumer = self.consumer
        offsets = {tp: o for tp, o in self.safe_offsets().items() if self.committed.get(tp) != o}
        if consumer is None or not offsets:
            return
        try:
            await app.producer.flush()
            await consumer.commit(offsets)
        except Exception as exc:  # Kafka trouble or a rebalance: committed later, or the
            log.warning("%s: cannot commit offsets (%s)", self.name, exc)  # new owner reads
            return  # them again
        self.committed.update(offsets)

    async def lag(self) -> Counter[str]:
        """Per topic, records in Kafka this worker has not fetched yet, over its partitions
        (the end of a paused partition, which fetches do not report, is asked for)."""
        consumer, lag = self.consumer, Counter[str]()
        if consumer is None:
            return lag
        paused = consumer.paused()
        ends = await consumer.end_offsets(list(paused)) if paused else {}
        for tp in consumer.assignment():
            end = ends.get(tp) if tp in paused else consumer.highwater(tp)
            position = self.consumed.get(tp)
            if end is not None and position is not None:
                lag[tp.topic] += max(end - position, 0)
        return lag

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        """Commit what is safe, then let the subclass forget the partitions."""
        self.rebalances += 1
        await self.commit()
        await self.released(partitions)
        for tp in partitions:
            self.consumed.pop(tp, None)
            self.fetched.pop(tp, None)
            self.committed.pop(tp, None)

    async def stop(self) -> None:
        """Commit what is safe and leave the group."""
        consumer = self.consumer
        if consumer is None:
            return
        try:
            await self.commit()
        finally:
            self.consumer = None
            await consumer.stop()


class StageService(mode.Service):
    """Runs a :class:`Stage`: consumption and periodic commits (a subclass per stage is
    registered with ``@app.service``)."""

    stage: Stage

    @mode.Service.task
    async def _consume(self) -> None:
        await self.stage.run()

    @mode.Service.task
    async def _commit(self) -> None:
        while not self.should_stop:
            await self.sleep(settings.commit_interval)
            await self.stage.commit()

    async def on_stop(self) -> None:
        """Commit and leave the consumer group."""
        await self.stage.stop()


async def adopt_faust_offsets(group: str, topics: Sequence[str]) -> None:
    """While ``group`` has committed nothing on ``topics``, give it the offsets Faust's group
    (the app id) committed there."""
    probe = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                             group_id=group, enable_auto_commit=False)
    await probe.start()
    try:
        tps = [TopicPartition(topic, p) for topic in topics
               for p in sorted(probe.partitions_for_topic(topic) or ())]
        committed = [await probe.committed(tp) for tp in tps]
        if not tps or any(offset is not None for offset in committed):
            return
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
        await admin.start()
        try:
            earlier = await admin.list_consumer_group_offsets(settings.app_id, partitions=tps)
        finally:
            await admin.close()
        offsets = {tp: meta.offset for tp, meta in earlier.items() if meta.offset >= 0}
        if offsets:
            probe.assign(list(offsets))
            await probe.commit(offsets)
            log.info("%s starts where the Faust group left off: %s", group,
                     {f"{tp.topic}/{tp.partition}": offset for tp, offset in offsets.items()})
    finally:
        await probe.stop()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, stage: Stage) -> None:
        self.stage = stage

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self.stage.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self.stage.assigned(set(assigned))

