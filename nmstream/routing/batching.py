"""How alerts are grouped: the NotificationManager's ``groupLabels``, ``batchMaxSize``,
``batchMaxWait`` and ``dedupWindow``, and the partition a group lives on."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache

from aiokafka.partitioner import murmur2

from nmstream.app import settings
from nmstream.config.agents import state
from nmstream.config.models import NotificationManager

log = logging.getLogger(__name__)

DEFAULT_GROUP_LABELS = ("alertname", "namespace")
DEFAULT_BATCH_MAX_SIZE = 100
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


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

    def group_labels(self, labels: dict[str, str]) -> dict[str, str]:
        """The alert's values of the group labels it has."""
        return {k: labels[k] for k in self.labels if k in labels}


_batching: tuple[int, Batching] | None = None


def batching() -> Batching:
    """The NotificationManager's batching, recomputed only when the view changed."""
    global _batching
    version = state.view.version
    if _batching is None or _batching[0] != version:
        _batching = (version, Batching.of(state.view.manager()))
    return _batching[1]


@lru_cache(maxsize=65536)
def _partition(group: tuple[str, ...], partitions: int) -> int:
    digest: int = murmur2("\xff".join(group).encode())
    return (digest & 0x7FFFFFFF) % partitions


def group_partition(labels: dict[str, str], grouping: Batching, partitions: int) -> int:
    """The partition of ``nmstream-alerts`` an alert goes to: one per value of its group
    labels (Kafka's default partitioner over them), so that each group of every receiver
    lives on one partition, and one alert's updates stay in order."""
    return _partition(tuple([labels.get(k, "") for k in grouping.labels]), partitions)
