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
from nmstream.config.selection import DEFAULT_CONFIGS, Snapshot, Tenancy

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

    objects: dict[str, Any] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    def apply(self, key: str, value: bytes | None) -> None:
        """Apply one topic record (last one per key wins; None deletes)."""
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

    def snapshot(self) -> Snapshot:
        """The view in the shape selection reads."""
        from nmstream.config.models import CONFIG_KINDS, RECEIVER_KINDS

        managers = sorted(self._of((NotificationManager,)), key=lambda m: m.metadata.name)
        tenancy = Tenancy()
        if managers:
            spec = managers[0].spec
            tenancy = Tenancy(
                tenant_key=spec.receivers.tenant_key,
                global_receivers=spec.receivers.global_receiver_selector,
                tenant_receivers=spec.receivers.tenant_receiver_selector,
                default_configs=spec.default_config_selector or DEFAULT_CONFIGS,
            )
        bindings: dict[str, list[RoleBinding]] = {}
        for rb in self._of((RoleBinding,)):
            bindings.setdefault(rb.metadata.namespace or "", []).append(rb)
        return Snapshot(
            tenancy=tenancy,
            receivers=self._of(tuple(RECEIVER_KINDS.values())),
            configs=self._of(tuple(CONFIG_KINDS.values())),
            role_bindings=bindings,
        )


class ConfigReader:
    """Follows ``nmstream-config`` from the beginning with a group-less consumer."""

    def __init__(self, bootstrap: list[str], topic: str, view: ConfigView) -> None:
        self.bootstrap, self.topic, self.view = bootstrap, topic, view
        self.synced = asyncio.Event()

    async def run(self) -> None:
        """Read forever; ``synced`` is set once every partition reached its high watermark."""
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
            while True:
                batches = await consumer.getmany(*tps, timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        self.view.apply(record.key.decode(), record.value)
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
