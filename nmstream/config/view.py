"""The receivers view every worker builds from the compacted ``nmstream-config`` topic.

Records are keyed ``kind/namespace/name``; the value is the object as JSON, a tombstone
(null value) deletes it. The broker may not compact (Tansu never does), so the view applies
"last record per key wins" itself. Secret *values* never travel on the topic: a Secret's
record carries its metadata and a digest of its data, and each worker resolves values from
its own local secret store.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from nmstream.config.events import ResourceEvent
from nmstream.config.models import (
    NotificationManager,
    RoleBinding,
    parse_resource,
)
from nmstream.config.selection import (
    DEFAULT_CONFIGS,
    Snapshot,
    Tenancy,
    receiver_scope,
    usable_config,
)

log = logging.getLogger(__name__)


def redact_secret(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A Secret without its values: metadata plus a digest of each key, for the topic."""
    data: Mapping[str, str] = obj.get("data") or {}
    return {
        "apiVersion": obj.get("apiVersion", "v1"),
        "kind": "Secret",
        "metadata": obj.get("metadata", {}),
        "type": obj.get("type"),
        "dataDigest": {
            key: hashlib.sha256(value.encode()).hexdigest()[:16] for key, value in data.items()
        },
    }


def topic_value(event: ResourceEvent) -> bytes | None:
    """What the publisher writes for an event: the object's JSON, or None (tombstone)."""
    if event.type == "DELETED" or event.obj is None:
        return None
    obj = redact_secret(event.obj) if event.kind == "Secret" else event.obj
    return json.dumps(obj, sort_keys=True).encode()


def _field_path(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    return f"{'.'.join(str(p) for p in err['loc']) or '(object)'}: {err['msg']}"


@dataclass
class ConfigView:
    """Objects by key, parsed; objects that fail validation are kept out with the reason."""

    secret_namespace: str = "kubesphere-monitoring-system"
    objects: dict[str, Any] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    version: int = 0
    _reported: dict[str, str] = field(default_factory=dict)
    _snapshot: tuple[int, Snapshot] | None = None
    _manager: tuple[int, NotificationManager | None] | None = None

    def apply(self, key: str, value: bytes | None) -> None:
        """Apply one topic record (last one per key wins; None deletes)."""
        self.version += 1
        self.problems.pop(key, None)
        if value is None:
            self.objects.pop(key, None)
            return
        try:
            raw = json.loads(value)
            if raw.get("kind") == "Secret":
                self.objects[key] = raw
                return
            self.objects[key] = parse_resource(raw)
        except ValidationError as exc:
            self.objects.pop(key, None)
            self.problems[key] = f"invalid {key}: {_field_path(exc)}"
            log.warning("configuration %s", self.problems[key])
        except ValueError as exc:
            self.objects.pop(key, None)
            self.problems[key] = f"invalid {key}: {exc}"
            log.warning("configuration %s", self.problems[key])

    def _of(self, kinds: tuple[type, ...]) -> list[Any]:
        return [o for o in self.objects.values() if isinstance(o, kinds)]

    def manager(self) -> NotificationManager | None:
        """The NotificationManager in force (the first by name), if any; looked up once per
        version (every render and send asks)."""
        if self._manager is None or self._manager[0] != self.version:
            managers = sorted(self._of((NotificationManager,)), key=lambda m: m.metadata.name)
            self._manager = (self.version, managers[0] if managers else None)
        return self._manager[1]

    def get(self, kind: str, name: str) -> Any:
        """A cluster-scoped object by kind and name, or None."""
        return self.objects.get(f"{kind}//{name}")

    def snapshot(self) -> Snapshot:
        """The view in the shape selection reads, rebuilt only after a change."""
        if self._snapshot is None or self._snapshot[0] != self.version:
            self._snapshot = (self.version, self._build_snapshot())
        return self._snapshot[1]

    def _build_snapshot(self) -> Snapshot:
        from nmstream.config.models import CONFIG_KINDS, RECEIVER_KINDS

        manager = self.manager()
        tenancy = Tenancy()
        secret_namespace = self.secret_namespace
        if manager is not None:
            spec = manager.spec
            secret_namespace = spec.default_secret_namespace or secret_namespace
            tenancy = Tenancy(
                tenant_key=spec.receivers.tenant_key,
                global_receivers=spec.receivers.global_receiver_selector,
                tenant_receivers=spec.receivers.tenant_receiver_selector,
                default_configs=spec.default_config_selector or DEFAULT_CONFIGS,
            )
        bindings: dict[str, list[RoleBinding]] = {}
        for rb in self._of((RoleBinding,)):
            bindings.setdefault(rb.metadata.namespace or "", []).append(rb)
        secrets = {
            f"{o['metadata'].get('namespace')}/{o['metadata']['name']}": frozenset(
                o.get("dataDigest") or {}
            )
            for o in self.objects.values()
            if isinstance(o, dict) and o.get("kind") == "Secret"
        }
        return Snapshot(
            tenancy=tenancy,
            receivers=self._of(tuple(RECEIVER_KINDS.values())),
            configs=self._of(tuple(CONFIG_KINDS.values())),
            role_bindings=bindings,
            secrets=secrets,
            secret_namespace=secret_namespace,
        )

    def receiver_states(self) -> list[ReceiverState]:
        """Every receiver with its scope, tenant, config and why it cannot send (if so)."""
        snapshot = self.snapshot()
        states = []
        for receiver in sorted(snapshot.receivers, key=lambda r: (r.kind, r.metadata.name)):
            scope, tenant = receiver_scope(receiver, snapshot.tenancy)
            config, problem = (
                usable_config(receiver, tenant, snapshot)
                if scope != "none"
                else (None, "matches neither the global nor the tenant receiver selector")
            )
            states.append(ReceiverState(receiver, scope, tenant, config, problem))
        return states

    def report(self) -> None:
        """Log each receiver's configuration error once, and when it is fixed."""
        current = {
            f"{s.receiver.kind}/{s.receiver.metadata.name}": s.problem
            for s in self.receiver_states()
            if s.problem
        }
        for name, problem in current.items():
            if self._reported.get(name) != problem:
                log.warning("receiver %s cannot send: %s", name, problem)
        for name in self._reported.keys() - current.keys():
            log.info("receiver %s is usable again", name)
        self._reported = current


@dataclass(frozen=True)
class ReceiverState:
    """One receiver as the view sees it."""

    receiver: Any
    scope: str
    tenant: str | None
    config: Any
    problem: str


#: Seconds between reports of the receivers that cannot send while changes keep coming.
REPORT_INTERVAL = 5.0


class ConfigReader:
    """Follows ``nmstream-config`` from the beginning with a group-less consumer."""

    def __init__(self, bootstrap: list[str], topic: str, view: ConfigView) -> None:
        self.bootstrap, self.topic, self.view = bootstrap, topic, view
        self.synced = asyncio.Event()

    async def run(self) -> None:
        """Read forever; ``synced`` is set once every partition reached its high watermark.
        Receivers that cannot send are logged when no change came for half a second, and every
        :data:`REPORT_INTERVAL` while changes keep coming."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False
        )
        await consumer.start()
        try:
            partitions: set[int] | None = None
            while not partitions:
                partitions = consumer.partitions_for_topic(self.topic)
                if not partitions:
                    await consumer._client.force_metadata_update()
                    await asyncio.sleep(0.2)
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            loop = asyncio.get_running_loop()
            changed, reported = False, loop.time()
            while True:
                batches = await consumer.getmany(*tps, timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        self.view.apply(record.key.decode(), record.value)
                changed = changed or bool(batches)
                # reported once the changes stop coming (a receiver read before its Secret, as
                # a source publishes every resource at start, is not reported broken), or
                # every REPORT_INTERVAL while they keep coming
                if changed and (not batches or loop.time() - reported > REPORT_INTERVAL):
                    self.view.report()
                    changed, reported = False, loop.time()
                if not self.synced.is_set() and await _caught_up(consumer, tps):
                    self.synced.set()
        finally:
            await consumer.stop()


async def _caught_up(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> bool:
    """Whether every partition was read up to the high watermark of the last fetch."""
    for tp in tps:
        highwater = consumer.highwater(tp)
        if highwater is None or await consumer.position(tp) < highwater:
            return False
    return True
