"""Deduplication: the same alert (fingerprint and status) for the same receiver within
``dedupWindow`` is sent once — what Alertmanager HA pairs otherwise produce twice.

The state is a table kept in memory per partition of ``nmstream-alerts`` and expired after the
window. It is rebuilt when a partition is assigned from the last window of the
``nmstream-notify-<channel>`` topics: the router writes the notifications of the groups of
partition P of one to partition P of the others. Rebuilding from the topics by timestamp avoids
trusting the broker's end offsets (see ``../shared/notes/broker.md``). An alert that was routed
but not yet flushed when a worker died is *not* in the rebuilt state, so its replay is accepted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import ValidationError

from nmstream.render.models import Notification
from nmstream.topics import read_window

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Seen:
    """The last status of an alert for a receiver, when, and from which alert record."""

    status: str
    at: float
    source: tuple[int, int] | None = None  # (partition, offset) of nmstream-alerts


@dataclass
class Dedup:
    """``(partition, receiver, fingerprint) → Seen``, expiring after the window."""

    seen: dict[tuple[int, str, str], Seen] = field(default_factory=dict)

    def admit(
        self, partition: int, receiver: str, fingerprint: str, status: str,
        source: tuple[int, int], window: float, now: float | None = None,
    ) -> bool:
        """Whether to send this alert; a replay of the same record is always admitted."""
        now = time.time() if now is None else now
        key = (partition, receiver, fingerprint)
        last = self.seen.get(key)
        if (
            window > 0
            and last is not None
            and last.status == status
            and now - last.at < window
            and last.source != source
        ):
            return False
        # re-inserted at the end: the dict stays ordered by time, so purge stops early
        self.seen.pop(key, None)
        self.seen[key] = Seen(status, now, source)
        return True

    def purge(self, window: float, now: float | None = None) -> None:
        """Forget what is older than the window, oldest first, up to the first younger entry
        (entries are in admission order; the few loaded out of order at a rebuild only wait
        for the entries before them)."""
        now = time.time() if now is None else now
        expired = []
        for key, seen in self.seen.items():
            if now - seen.at < window:
                break
            expired.append(key)
        for key in expired:
            del self.seen[key]

    def forget(self, partitions: set[int]) -> None:
        """Drop the state of partitions this worker no longer owns."""
        for key in [k for k in self.seen if k[0] in partitions]:
            del self.seen[key]

    async def rebuild(self, notify_topics: Sequence[str], partitions: set[int],
                      window: float) -> None:
        """Load what was written within the window to ``nmstream-notify-<channel>``."""
        if window <= 0 or not partitions:
            return
        await read_window(notify_topics, time.time() - window, self._load, partitions)
        log.info("dedup state rebuilt for partitions %s: %d entries", sorted(partitions),
                 len(self.seen))

    def _load(self, partition: int, at: float, value: bytes) -> None:
        try:
            notification = Notification.model_validate_json(value)
        except ValidationError:
            return
        for fingerprint, status in notification.statuses.items():
            key = (partition, notification.receiver.key, fingerprint)
            last = self.seen.get(key)
            if last is None or last.at <= at:
                self.seen[key] = Seen(status, at)
