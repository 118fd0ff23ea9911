"""nmstream's Kafka topics, and the guard that keeps them declared.

Every stage of the pipeline is one of these topics. nmstream creates them itself (with
their partitions and cleanup policy) and checks them again whenever Kafka misbehaved:
a broker that lost its storage must get the topics back *before* anything is produced,
because some brokers (Tansu on memory://) acknowledge writes to a topic that no longer
exists and the record is then unreadable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from nmstream.app import app, settings
from nmstream.config.models import CHANNELS

log = logging.getLogger(__name__)

TOPIC_ALREADY_EXISTS = 36
ADMIN_TIMEOUT_MS = 5000
#: How long :func:`read_window` may take before it settles for what it read.
READ_WINDOW_TIMEOUT = 30.0
#: Up to this many records, :func:`send_batched` adds them to the batches being filled (shared
#: with other senders) instead of bringing its own: a partition's batches leave one at a time.
SMALL_SEND = 16


@dataclass(frozen=True)
class TopicSpec:
    """Name, size and cleanup policy of one topic."""

    name: str
    partitions: int
    replicas: int
    compacted: bool = False

    def new_topic(self) -> NewTopic:
        """The admin request that creates it."""
        configs = {"cleanup.policy": "compact"} if self.compacted else {}
        return NewTopic(self.name, self.partitions, self.replicas, topic_configs=configs)


def _spec(name: str, *, partitions: int | None = None, compacted: bool = False) -> TopicSpec:
    return TopicSpec(
        settings.topic(name),
        partitions or settings.partitions,
        settings.replication_factor,
        compacted,
    )


#: One record per alert, key = fingerprint, partition by group labels (see ingest).
ALERTS = _spec("alerts")
#: Groups to render again (render dead letters replayed), key = group id.
GROUPS = _spec("groups")
#: Rendered notifications per channel, key = notification id, on the partition number of
#: their group's alerts (so these topics need the partition count of ``nmstream-alerts``);
#: and what failed, per channel.
NOTIFY = {c: _spec(f"notify-{c}") for c in CHANNELS}
DLQ = {c: _spec(f"dlq-{c}") for c in CHANNELS}
#: Notifications waiting for another attempt, per channel, key = notification id.
RETRY = {c: _spec(f"retry-{c}") for c in CHANNELS}
#: Every delivery outcome (history, audit), key = notification id.
SENT = _spec("sent")
#: Receivers and configs, key ``kind/namespace/name``, null value deletes. One partition:
#: every worker reads all of it, and one total order keeps re-publication simple.
CONFIG = _spec("config", partitions=1, compacted=True)


def raw_topic(spec: TopicSpec) -> Any:
    """The Faust topic of a spec, carrying raw bytes (records are pydantic JSON)."""
    return app.topic(
        spec.name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=spec.partitions,
    )


retry_topics = {c: raw_topic(spec) for c, spec in RETRY.items()}


def kafka_producer() -> Any:
    """The aiokafka producer under Faust's (one producer, one flush, for both paths)."""
    faust_producer: Any = app.producer
    return faust_producer._ensure_producer()


async def partition_count(topic: str) -> int:
    """How many partitions the producer knows ``topic`` to have."""
    return len(await kafka_producer().partitions_for(topic))


def _report_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.warning("Kafka did not take a record: %s", exc)


async def send_keyed(topic: str, key: bytes, value: bytes) -> asyncio.Future[Any]:
    """Queue one record on the partition of its key (the partitioner Faust's sends use) and
    return its acknowledgement, which need not be awaited: what is queued is flushed before any
    offset is committed (see :meth:`~nmstream.stage.Stage.commit`), and a failure is logged.
    Faust's send path (channel, future message, callbacks) cost three times the write itself:
    63-68 against 19-22 µs of CPU a record on the embedded broker."""
    future: asyncio.Future[Any] = await kafka_producer().send(topic, value, key=key)
    future.add_done_callback(_report_failure)
    return future


async def send_batched(
    topic: str,
    records: Sequence[tuple[bytes, bytes, int]],
    numbers: Sequence[int],
    producer: AIOKafkaProducer | None = None,
) -> list[asyncio.Future[Any]]:
    """Queue ``(key, value, timestamp_ms)`` records as one record batch per partition (split
    where a batch is full) and return the batches' acknowledgement futures.

    ``numbers[i]`` is the partition of record ``i`` (see :func:`partition_count`). Many records
    cost a few batches instead of one Faust message, aiokafka message and future per record; a
    few (:data:`SMALL_SEND`) join the batches being filled, so that small posts arriving
    together leave together. ``producer`` is the worker's (Faust's) unless given.
    """
    producer = producer or kafka_producer()
    by_partition: dict[int, list[tuple[bytes, bytes, int]]] = {}
    for number, record in zip(numbers, records, strict=True):
        by_partition.setdefault(number, []).append(record)
    futures = []
    if len(records) <= SMALL_SEND:  # join the batches being filled, with other senders
        for number, batch_records in by_partition.items():
            futures += [await producer.send(topic, value, key=key, partition=number,
                                            timestamp_ms=timestamp)
                        for key, value, timestamp in batch_records]
        return futures
    for number, batch_records in by_partition.items():
        batch = producer.create_batch()
        for key, value, timestamp in batch_records:
            if batch.append(key=key, value=value, timestamp=timestamp) is None:
                batch.close()
                futures.append(await producer.send_batch(batch, topic, partition=number))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=timestamp)
        batch.close()
        futures.append(await producer.send_batch(batch, topic, partition=number))
    return futures


async def read_window(
    topics: Sequence[str],
    since: float,
    on_record: Callable[[int, float, bytes], None],
    partitions: set[int] | None = None,
) -> None:
    """Feed ``on_record(partition, timestamp, value)`` every record of ``topics`` (of these
    partition numbers, default all) written since the Unix time ``since``, up to the end of
    each partition. Starts by timestamp and stops at the fetch high watermark, and filters by
    timestamp too: some brokers answer both questions wrongly (``../shared/notes/broker.md``).
    """
    since_ms = int(since * 1000)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = []
        for topic in topics:
            numbers = partitions
            if numbers is None:
                numbers = consumer.partitions_for_topic(topic) or set()
                if not numbers:
                    await consumer.force_metadata_update()
                    numbers = consumer.partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in sorted(numbers)]
        if not tps:
            return
        consumer.assign(tps)
        starts = await consumer.offsets_for_times({tp: since_ms for tp in tps})
        for tp in tps:
            found = starts.get(tp)
            if found is None:
                await consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, found.offset)
        remaining = set(tps)
        deadline = time.monotonic() + READ_WINDOW_TIMEOUT
        while remaining and time.monotonic() < deadline:
            batches = await consumer.getmany(*remaining, timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    if record.timestamp >= since_ms and record.value is not None:
                        on_record(tp.partition, record.timestamp / 1000, record.value)
            for tp in list(remaining):
                highwater = consumer.highwater(tp)
                if highwater is not None and await consumer.position(tp) >= highwater:
                    remaining.discard(tp)
    finally:
        await consumer.stop()


class TopicGuard:
    """Creates missing topics; ``ready`` is set while they are known to exist."""

    def __init__(self, specs: tuple[TopicSpec, ...]) -> None:
        self.specs = specs
        self.ready = asyncio.Event()
        self._lock = asyncio.Lock()
        self._admin: AIOKafkaAdminClient | None = None

    def suspect(self) -> None:
        """Kafka failed us: verify the topics before the next write."""
        self.ready.clear()

    async def ensure(self) -> None:
        """Create whichever topics the cluster lacks; raises while Kafka is unreachable."""
        async with self._lock:
            try:
                admin = await self._client()
                existing = set(await admin.list_topics())
                missing = [s.new_topic() for s in self.specs if s.name not in existing]
                if missing:
                    response = await admin.create_topics(missing, timeout_ms=ADMIN_TIMEOUT_MS)
                    for name, code, *rest in response.topic_errors:
                        if code not in (0, TOPIC_ALREADY_EXISTS):
                            raise RuntimeError(f"cannot create topic {name}: error {code} {rest}")
                    log.info("created topics %s", ", ".join(t.name for t in missing))
            except BaseException:
                self.ready.clear()
                await self._drop_client()
                raise
            self.ready.set()

    async def close(self) -> None:
        """Release the admin connection."""
        async with self._lock:
            await self._drop_client()

    async def _client(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=ADMIN_TIMEOUT_MS
            )
            await admin.start()
            self._admin = admin
        return self._admin

    async def _drop_client(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            await admin.close()


guard = TopicGuard(
    (ALERTS, CONFIG, GROUPS, *NOTIFY.values(), *DLQ.values(), *RETRY.values(), SENT)
)
