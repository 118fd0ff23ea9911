"""``nmstream replay`` and ``nmstream tap``: read nmstream's topics by time, follow them live,
and re-inject alerts or dead letters into the pipeline.

Both talk to Kafka with kafka-python and need no worker. ``replay`` reads every partition of a
topic from ``--from`` (by ``offsets_for_times``) up to the end each partition had when the
replay started, keeps the records whose timestamp lies in ``[--from, --to)`` and match the
filters, and prints them as JSON lines in timestamp order. With ``--reprocess`` it also sends
them back into the pipeline with fresh ids: alerts to ``nmstream-alerts``, dead letters of the
deliver stage to ``nmstream-notify-<channel>`` (attempt 0), of the render stage to
``nmstream-groups``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from pydantic import ValidationError

from nmstream.config.models import CHANNELS
from nmstream.ingest.models import AlertRecord
from nmstream.render.models import DeadLetter
from nmstream.settings import Settings

#: Topics a replay or a tap may read (``dlq-<channel>`` and the other per-channel ones too).
TOPICS = ("alerts", "groups", "sent", "config",
          *(f"{kind}-{c}" for kind in ("notify", "retry", "dlq") for c in CHANNELS))
#: How long a replay waits for a partition's next fetch before it gives up on the broker.
STALL_TIMEOUT = 30.0
#: How long the commands try to reach Kafka before they say it is unreachable.
BOOTSTRAP_TIMEOUT_MS = 10_000
_AGO = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class UsageError(Exception):
    """A command-line mistake, reported as ``nmstream: <message>`` with exit status 2."""


def parse_time(value: str, option: str, now: datetime | None = None) -> datetime:
    """``--from``/``--to``: an ISO 8601 time (UTC unless it says otherwise), Unix seconds, or
    a duration ago such as ``90s``, ``15m``, ``2h``, ``1d``."""
    now = now or datetime.now(UTC)
    if m := _AGO.match(value):
        return now - timedelta(seconds=float(m[1]) * _UNIT[m[2]])
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{option}: {value!r} is not a time (ISO 8601 such as "
                         "2026-11-30T08:00:00Z, Unix seconds, or a duration ago such as 15m)"
                         ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def check_topic(name: str) -> str:
    """A topic argument: one of :data:`TOPICS` (the name without ``NMSTREAM_TOPIC_PREFIX``)."""
    if name not in TOPICS:
        raise UsageError(f"--topic: {name!r} is not one of nmstream's topics: "
                         + ", ".join(TOPICS))
    return name


@dataclass(frozen=True)
class Filter:
    """``--tenant`` and ``--receiver``, applied to a record's JSON value."""

    tenant: str | None = None
    receiver: str | None = None

    def matches(self, topic: str, value: Any) -> bool:
        """Whether a record of ``topic`` (by short name) passes. An alert's tenant is its
        ``namespace`` label; other records name their receiver and its tenant."""
        if self.tenant is None and self.receiver is None:
            return True
        if not isinstance(value, dict):
            return False
        if topic == "alerts":
            labels = (value.get("alert") or {}).get("labels") or {}
            return self.tenant is None or labels.get("namespace") == self.tenant
        receiver = _receiver_of(value)
        tenant = value.get("tenant") if topic == "sent" else receiver.get("tenant")
        return ((self.tenant is None or tenant == self.tenant)
                and (self.receiver is None or receiver.get("name") == self.receiver))


def _receiver_of(value: dict[str, Any]) -> dict[str, Any]:
    for holder in (value, value.get("notification"), value.get("group")):
        if isinstance(holder, dict) and isinstance(holder.get("receiver"), dict):
            receiver: dict[str, Any] = holder["receiver"]
            return receiver
    return {}


@dataclass(frozen=True)
class Entry:
    """One record read from Kafka, as printed."""

    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None

    def as_json(self, topic: str) -> dict[str, Any]:
        """The JSON line: where it is, when, its key and its parsed value."""
        try:
            value: Any = None if self.value is None else json.loads(self.value)
        except ValueError:
            value = self.value.decode(errors="replace") if self.value else None
        return {
            "topic": topic, "partition": self.partition, "offset": self.offset,
            "timestamp": datetime.fromtimestamp(self.timestamp / 1000, UTC).isoformat(),
            "key": self.key.decode(errors="replace") if self.key is not None else None,
            "value": value,
        }


def _consumer(settings: Settings) -> KafkaConsumer:
    return KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                         enable_auto_commit=False, client_id="nmstream-replay",
                         bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS)


def _partitions(consumer: KafkaConsumer, topic: str) -> list[TopicPartition]:
    if topic not in consumer.topics():  # fresh metadata, not the cached guess
        raise UsageError(f"topic {topic} does not exist on this Kafka")
    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]


def _seek_to_time(consumer: KafkaConsumer, tps: list[TopicPartition], since_ms: int) -> None:
    """Each partition at its first record at or after ``since_ms``, or at its end."""
    found = consumer.offsets_for_times({tp: since_ms for tp in tps})
    ends = consumer.end_offsets(tps)
    for tp in tps:
        hit = found.get(tp)
        # some brokers answer offset 0 with timestamp -1 instead of "none" (broker.md)
        if hit is not None and hit.timestamp >= 0:
            consumer.seek(tp, hit.offset)
        else:
            consumer.seek(tp, ends[tp])


def read_range(settings: Settings, topic: str, since: datetime,
               until: datetime | None) -> list[Entry]:
    """Every record of ``topic`` (full name) stamped in ``[since, until)``, in timestamp order,
    read up to the end each partition had when the read started."""
    since_ms = int(since.timestamp() * 1000)
    until_ms = int(until.timestamp() * 1000) if until else None
    consumer = _consumer(settings)
    try:
        tps = _partitions(consumer, topic)
        consumer.assign(tps)
        _seek_to_time(consumer, tps, since_ms)
        # the end is the high watermark of a fetch: some brokers answer ListOffsets too small
        ends: dict[TopicPartition, int] = {}
        done: set[TopicPartition] = set()
        entries: list[Entry] = []
        last_progress = time.monotonic()
        while len(done) < len(tps):
            batch = consumer.poll(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    if r.timestamp >= since_ms and (until_ms is None or r.timestamp < until_ms):
                        entries.append(Entry(r.partition, r.offset, r.timestamp, r.key, r.value))
            for tp in tps:
                if tp in done or (high := consumer.highwater(tp)) is None:
                    continue
                end = ends.setdefault(tp, high)
                if consumer.position(tp) >= end:
                    done.add(tp)
                    consumer.pause(tp)
                    last_progress = time.monotonic()
            if batch:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > STALL_TIMEOUT:
                raise KafkaError(f"no records from {topic} for {STALL_TIMEOUT:.0f}s")
    finally:
        consumer.close()
    entries.sort(key=lambda e: (e.timestamp, e.partition, e.offset))
    return entries


def follow(settings: Settings, topic: str, since: datetime | None,
           emit: Callable[[Entry], None], stop: Callable[[], bool]) -> None:
    """Call ``emit`` for each record of ``topic`` from ``since`` (default: from now) as it
    arrives, until ``stop()``."""
    start_ms = int((since or datetime.now(UTC)).timestamp() * 1000)
    consumer = _consumer(settings)
    try:
        tps = _partitions(consumer, topic)
        consumer.assign(tps)
        _seek_to_time(consumer, tps, start_ms)
        while not stop():
            for records in consumer.poll(timeout_ms=200).values():
                for r in records:
                    # an end answered too small shows some older records: hide them
                    if r.timestamp >= start_ms:
                        emit(Entry(r.partition, r.offset, r.timestamp, r.key, r.value))
    finally:
        consumer.close()


def _fresh_id(old: str) -> str:
    return hashlib.sha256(f"{old}:{uuid.uuid4().hex}".encode()).hexdigest()[:32]


def reinjection(settings: Settings, topic: str, entry: Entry,
                now: datetime) -> tuple[str, bytes, bytes, int | None] | None:
    """Where and what to send so the pipeline handles ``entry`` again: ``(topic, key, value,
    partition)`` with fresh ids, or None for a record that is not an alert or a dead letter.
    An alert goes back to its own partition (ingest chose it by the alert's group labels)."""
    if entry.value is None:
        return None
    try:
        if topic == "alerts":
            alert = AlertRecord.model_validate_json(entry.value)
            again = alert.model_copy(update={"request_id": uuid.uuid4().hex, "received_at": now})
            return (settings.topic("alerts"), alert.fingerprint.encode(),
                    again.model_dump_json(by_alias=True).encode(), entry.partition)
        letter = DeadLetter.model_validate_json(entry.value)
    except ValidationError:
        return None
    if letter.stage == "deliver" and letter.notification is not None:
        n = letter.notification
        fresh = n.model_copy(update={"id": _fresh_id(n.id), "attempt": 0, "failures": [],
                                     "not_before": None, "created_at": now})
        return settings.topic(f"notify-{n.channel}"), fresh.id.encode(), fresh.to_bytes(), None
    if letter.stage == "render" and letter.group is not None:
        group = letter.group.model_copy(update={"flushed_at": now})
        return settings.topic("groups"), group.group_id.encode(), group.to_bytes(), None
    return None


def _reinject(settings: Settings, topic: str, entries: list[Entry]) -> int:
    now = datetime.now(UTC)
    sends = [s for e in entries if (s := reinjection(settings, topic, e, now)) is not None]
    if not sends:
        return 0
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                             client_id="nmstream-replay")
    try:
        for target, key, value, partition in sends:
            producer.send(target, key=key, value=value, partition=partition)
        producer.flush(timeout=60)
    finally:
        producer.close()
    return len(sends)


def _parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n\n")[0])


def replay(argv: list[str], settings: Settings) -> int:
    """Print the records of a topic in a time range as JSON lines; ``--reprocess`` sends the
    alerts or dead letters among them through the pipeline again."""
    parser = _parser("nmstream replay", replay.__doc__)
    parser.add_argument("--topic", required=True, help="alerts, sent, dlq-<channel>, ...")
    parser.add_argument("--from", dest="since", required=True, help="start time (inclusive)")
    parser.add_argument("--to", dest="until", help="end time (exclusive; default: now)")
    parser.add_argument("--tenant", help="only this tenant's records")
    parser.add_argument("--receiver", help="only this receiver's records")
    parser.add_argument("--reprocess", action="store_true",
                        help="re-inject the matching alerts or dead letters with fresh ids")
    args = parser.parse_args(argv)
    topic = check_topic(args.topic)
    since = parse_time(args.since, "--from")
    until = parse_time(args.until, "--to") if args.until else None
    if until is not None and until <= since:
        raise UsageError("--to: must be later than --from")
    if topic == "alerts" and args.receiver:
        raise UsageError("--receiver: alerts have no receiver yet; use --tenant (namespace)")
    if args.reprocess and topic != "alerts" and not topic.startswith("dlq-"):
        raise UsageError("--reprocess: only alerts and dlq-<channel> can be re-injected")
    wanted, name = Filter(args.tenant, args.receiver), settings.topic(topic)
    entries = []
    for entry in read_range(settings, name, since, until):
        line = entry.as_json(name)
        if wanted.matches(topic, line["value"]):
            entries.append(entry)
            print(json.dumps(line))
    print(f"nmstream: {len(entries)} record(s) of {settings.topic(topic)}", file=sys.stderr)
    if args.reprocess:
        sent = _reinject(settings, topic, entries)
        print(f"nmstream: re-injected {sent} of {len(entries)} record(s)", file=sys.stderr)
    return 0


def tap(argv: list[str], settings: Settings) -> int:
    """Follow a topic live and print its records as JSON lines until interrupted."""
    parser = _parser("nmstream tap", tap.__doc__)
    parser.add_argument("topic", help="alerts, sent, notify-<channel>, dlq-<channel>, ...")
    parser.add_argument("--from", dest="since", help="start time (default: now)")
    parser.add_argument("--tenant", help="only this tenant's records")
    parser.add_argument("--receiver", help="only this receiver's records")
    args = parser.parse_args(argv)
    topic = check_topic(args.topic)
    since = parse_time(args.since, "--from") if args.since else None
    wanted = Filter(args.tenant, args.receiver)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))

    def emit(entry: Entry) -> None:
        line = entry.as_json(settings.topic(topic))
        if wanted.matches(topic, line["value"]):
            print(json.dumps(line), flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        follow(settings, settings.topic(topic), since, emit, lambda: bool(stopping))
    return 0

