"""Route and group.

``route``: each alert of ``nmstream-alerts`` → one record per receiver that gets it on
``nmstream-routed``, keyed by the receiver's group id so that a group lives on one partition.

``group``: drops repeats within ``dedupWindow`` (see :mod:`nmstream.routing.dedup`), collects
a receiver's alerts by the NotificationManager's ``groupLabels`` and
flushes a group to ``nmstream-groups`` when it reaches ``batchMaxSize`` or ``batchMaxWait``
after its first alert. Its events are acknowledged only once the group is in Kafka, so the
committed offset never passes a pending alert: after a crash or a rebalance the worker that
owns the partition reads the pending alerts again and rebuilds the group. No table state is
needed (and none can be lost).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from faust.types import TP

from nmstream.app import app, settings
from nmstream.audit.history import record_outcome
from nmstream.config.agents import state
from nmstream.config.models import NotificationManager
from nmstream.config.selection import Selected, Skipped, channel_of, select
from nmstream.ingest.models import Alert, AlertRecord, utcnow
from nmstream.metrics import (
    ALERTS_DEDUPLICATED,
    ALERTS_ROUTED,
    ALERTS_UNROUTED,
    GROUPS_FLUSHED,
)
from nmstream.render.models import SentRecord
from nmstream.routing.dedup import Dedup
from nmstream.routing.models import AlertGroup, ReceiverRef, RoutedAlert, decode, group_id
from nmstream.topics import GROUPS, ROUTED, alerts_topic, groups_topic, routed_topic, send_batched

log = logging.getLogger(__name__)

DEFAULT_GROUP_LABELS = ("alertname", "namespace")
DEFAULT_BATCH_MAX_SIZE = 100
FLUSH_TICK = 0.05
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_TARGET_EXCLUDED = ("alertSelector", "template", "subjectTemplate")


def go_duration(text: str) -> float:
    """Seconds of a Go duration such as ``1s``, ``500ms`` or ``1m30s``."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ValueError(f"invalid duration {text!r}")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def _seconds(value: str | None, name: str, default: float) -> float:
    if not value:
        return default
    try:
        return go_duration(value)
    except ValueError as exc:
        log.warning("NotificationManager %s: %s; using %ss", name, exc, default)
        return default


@dataclass(frozen=True)
class Batching:
    """How a NotificationManager groups and deduplicates: labels, size, wait, window."""

    labels: tuple[str, ...]
    max_size: int
    max_wait: float
    dedup_window: float

    @classmethod
    def of(cls, manager: NotificationManager | None) -> Batching:
        """The manager's settings, nmstream's defaults where it sets none (or sets garbage)."""
        spec = manager.spec if manager is not None else None
        labels = spec.group_labels if spec and spec.group_labels else DEFAULT_GROUP_LABELS
        size = spec.batch_max_size if spec and spec.batch_max_size else DEFAULT_BATCH_MAX_SIZE
        return cls(
            labels=tuple(labels),
            max_size=size,
            max_wait=_seconds(spec.batch_max_wait if spec else None, "batchMaxWait",
                              settings.batch_max_wait),
            dedup_window=_seconds(spec.dedup_window if spec else None, "dedupWindow",
                                  settings.dedup_window),
        )


def receiver_ref(selected: Selected) -> ReceiverRef:
    """The receiver as routed records carry it: identity, config by name, targets."""
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


#: The route agent takes alerts in batches of up to this many, waiting at most this long.
ROUTE_BATCH = 500
ROUTE_BATCH_WAIT = 0.005
_batching: tuple[int, Batching] | None = None
_refs: tuple[int, dict[tuple[int, int, str | None], tuple[ReceiverRef, bytes]]] | None = None


def batching() -> Batching:
    """The NotificationManager's batching, recomputed only when the view changed."""
    global _batching
    version = state.view.version
    if _batching is None or _batching[0] != version:
        _batching = (version, Batching.of(state.view.manager()))
    return _batching[1]


def cached_ref(selected: Selected) -> tuple[ReceiverRef, bytes]:
    """:func:`receiver_ref` and its JSON, built once per receiver and view version (the
    snapshot holding the receiver and config objects lives as long as that version)."""
    global _refs
    version = state.view.version
    if _refs is None or _refs[0] != version:
        _refs = (version, {})
    key = (id(selected.receiver), id(selected.config), selected.tenant)
    if (hit := _refs[1].get(key)) is None:
        ref = receiver_ref(selected)
        hit = _refs[1][key] = (ref, ref.to_bytes())
    return hit


def routed_value(gid: str, labels: dict[str, str], ref: bytes, record: bytes) -> bytes:
    """A :class:`RoutedAlert` as JSON, spliced from the receiver's and the alert record's own
    JSON (the record as read from ``nmstream-alerts``, validated) instead of re-serialised."""
    return b"".join((
        b'{"schema_version":1,"group_id":', json.dumps(gid).encode(),
        b',"group_labels":', json.dumps(labels, ensure_ascii=False).encode(),
        b',"receiver":', ref, b',"record":', record,
        b',"routed_at":', json.dumps(utcnow().isoformat().replace("+00:00", "Z")).encode(), b"}",
    ))


async def publish(records: list[tuple[bytes, bytes, int]]) -> None:
    """Write routed records and wait for Kafka's acks; retry until Kafka takes them (the
    alerts' offsets are committed only after this returns)."""
    while True:
        try:
            await asyncio.gather(*await send_batched(ROUTED.name, records))
            return
        except Exception as exc:
            log.warning("cannot write %d routed alerts (%s); retrying", len(records), exc)
            await asyncio.sleep(1.0)


@app.agent(alerts_topic)
async def route(stream: Any) -> None:
    """Alert → one routed record per receiver that gets it, a batch of alerts at a time."""
    await state.reader.synced.wait()
    async for values in stream.take(ROUTE_BATCH, within=ROUTE_BATCH_WAIT):
        snapshot, grouping = state.view.snapshot(), batching()
        now_ms = int(time.time() * 1000)
        out: list[tuple[bytes, bytes, int]] = []
        for value in values:
            record = decode(AlertRecord, value, alerts_topic)
            if record is None:
                continue
            selection = select(record.alert.labels, snapshot)
            if not selection.selected:
                await unrouted(record, selection.skipped)
                continue
            labels = {k: record.alert.labels[k] for k in grouping.labels
                      if k in record.alert.labels}
            for selected in selection.selected:
                ref, ref_json = cached_ref(selected)
                gid = group_id(ref, labels)
                out.append((gid.encode(), routed_value(gid, labels, ref_json, value), now_ms))
                ALERTS_ROUTED.labels(channel=ref.channel).inc()
        if out:
            await publish(out)


async def unrouted(record: AlertRecord, skipped: Sequence[Skipped]) -> None:
    """An alert no receiver takes: counted, and a ``filtered`` outcome with the reasons."""
    ALERTS_UNROUTED.inc()
    for skip in skipped:
        log.debug("alert %s: receiver %s skipped: %s", record.fingerprint,
                  skip.receiver.metadata.name, skip.reason)
    reasons = sorted({s.reason for s in skipped})
    await record_outcome(SentRecord(
        notification_id=None, status="filtered", channel=None, receiver=None,
        tenant=None, fingerprints=[record.fingerprint],
        error="; ".join(reasons) or "no receiver matches",
        received_at=record.received_at, at=utcnow(),
    ))


@dataclass
class Pending:
    """A group being collected, with the events to acknowledge once it is flushed."""

    first: RoutedAlert
    tp: TP
    started: float
    alerts: dict[str, Alert] = field(default_factory=dict)
    events: list[Any] = field(default_factory=list)
    received_at: datetime | None = None

    def add(self, routed: RoutedAlert, event: Any) -> None:
        """Take one routed alert (the newest status of a fingerprint wins)."""
        self.alerts[routed.record.fingerprint] = routed.record.alert
        self.events.append(event)
        received = routed.record.received_at
        if self.received_at is None or received < self.received_at:
            self.received_at = received

    def to_group(self) -> AlertGroup:
        """The record written to ``nmstream-groups``."""
        return AlertGroup(
            group_id=self.first.group_id,
            group_labels=self.first.group_labels,
            receiver=self.first.receiver,
            alerts=list(self.alerts.values()),
            source_receiver=self.first.record.group.receiver,
            external_url=self.first.record.group.external_url,
            received_at=self.received_at,
            flushed_at=utcnow(),
        )


pending: dict[str, Pending] = {}
dedup = Dedup()
#: Cleared while partitions move: no alert is admitted before the dedup state is rebuilt.
dedup_ready = asyncio.Event()


async def flush(*gids: str) -> None:
    """Write pending groups to Kafka (all sent, then all acks awaited), then acknowledge
    their events; a group Kafka did not take stays pending for the next tick."""
    groups = [(gid, group) for gid in gids if (group := pending.pop(gid, None)) is not None]
    sends = []
    for gid, group in groups:
        try:
            sends.append(await groups_topic.send(key=gid.encode(),
                                                 value=group.to_group().to_bytes()))
        except Exception as exc:
            sends.append(exc)
    for (gid, group), sent in zip(groups, sends, strict=True):
        try:
            if isinstance(sent, Exception):
                raise sent
            await sent
        except Exception as exc:  # Kafka failed: keep the group, retry on the next tick
            log.warning("cannot flush group %s (%s); retrying", gid, exc)
            _keep(gid, group)
            continue
        for event in group.events:
            event.ack()
        GROUPS_FLUSHED.inc()


def _keep(gid: str, group: Pending) -> None:
    """Put an unflushed group back, merged with what arrived for it meanwhile."""
    newer = pending.get(gid)
    if newer is not None:
        group.alerts.update(newer.alerts)
        group.events.extend(newer.events)
        if newer.received_at is not None:
            group.received_at = min(group.received_at or newer.received_at, newer.received_at)
    pending[gid] = group


@app.agent(routed_topic)
async def group(stream: Any) -> None:
    """Collect routed alerts into groups; flush on size here, on time in :func:`flusher`."""
    async for event in stream.noack().events():
        await dedup_ready.wait()
        routed = decode(RoutedAlert, event.value, routed_topic)
        if routed is None:
            event.ack()
            continue
        grouping = batching()
        partition, offset = event.message.partition, event.message.offset
        alert = routed.record.alert
        if not dedup.admit(partition, routed.receiver.key, alert.fingerprint,
                           alert.status or "firing", (partition, offset), grouping.dedup_window):
            ALERTS_DEDUPLICATED.inc()
            await record_outcome(SentRecord(
                notification_id=None, status="deduplicated", channel=routed.receiver.channel,
                receiver=routed.receiver, tenant=routed.receiver.tenant,
                fingerprints=[alert.fingerprint], error=f"{alert.status or 'firing'} again within "
                f"dedupWindow {grouping.dedup_window:g}s", received_at=routed.record.received_at,
                at=utcnow(),
            ))
            event.ack()
            continue
        current = pending.get(routed.group_id)
        if current is None:
            current = pending[routed.group_id] = Pending(
                routed, event.message.tp, time.monotonic()
            )
        current.add(routed, event)
        if len(current.alerts) >= grouping.max_size:
            await flush(routed.group_id)


@app.timer(FLUSH_TICK)  # type: ignore[untyped-decorator]
async def flusher() -> None:
    """Flush every group whose first alert waited ``batchMaxWait``."""
    max_wait = batching().max_wait
    now = time.monotonic()
    await flush(*[g for g, p in pending.items() if now - p.started >= max_wait])


@app.timer(1.0)  # type: ignore[untyped-decorator]
async def expire_dedup() -> None:
    """Forget alerts sent longer than ``dedupWindow`` ago."""
    dedup.purge(batching().dedup_window)


def _routed_partitions(tps: set[TP]) -> set[int]:
    return {tp.partition for tp in tps if tp.topic == ROUTED.name}


@app.on_partitions_revoked.connect
async def drop_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
    """Forget groups and dedup state of partitions this worker lost: the new owner rebuilds."""
    revoked: set[TP] = args[0]
    dedup_ready.clear()
    for gid in [g for g, p in pending.items() if p.tp in revoked]:
        del pending[gid]
    dedup.forget(_routed_partitions(revoked))


@app.on_partitions_assigned.connect
async def rebuild_dedup(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
    """Load what was sent within the window for the partitions this worker now owns."""
    assigned: set[TP] = args[0]
    partitions = _routed_partitions(assigned)
    window = batching().dedup_window
    try:
        await dedup.rebuild(GROUPS.name, partitions, window)
    except Exception as exc:  # Kafka trouble: start empty (a repeat may be sent, none lost)
        log.warning("cannot rebuild dedup state (%s); starting empty", exc)
    finally:
        dedup_ready.set()
