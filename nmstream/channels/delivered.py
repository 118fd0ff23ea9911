"""The delivered-notification table: which attempts of which notifications have a recorded
outcome, so that a record read again after a crash is not sent twice.

A notification's offset is committed only after its outcome is on ``nmstream-sent`` (Faust
flushes the producer before it commits), so a worker that dies between the two reads the
notification again. Its outcome is then already recorded: this table, keyed by notification id
and rebuilt from ``nmstream-sent`` when partitions are assigned, says so and the attempt is
skipped. Sends wait while the table is being rebuilt. Entries expire after
``NMSTREAM_DELIVERED_WINDOW`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from pydantic import ValidationError

from nmstream.render.models import SentRecord
from nmstream.topics import read_window

log = logging.getLogger(__name__)


@dataclass
class Delivered:
    """``notification id → (attempts with a recorded outcome, when)``."""

    recorded: dict[str, tuple[int, float]] = field(default_factory=dict)
    #: Cleared while partitions move: nothing is sent before the table is rebuilt.
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def has(self, notification_id: str, attempt: int) -> bool:
        """Whether attempt ``attempt`` (0 for the first) already has a recorded outcome."""
        entry = self.recorded.get(notification_id)
        return entry is not None and entry[0] > attempt

    def add(self, notification_id: str, attempts: int, at: float | None = None) -> None:
        """Note that ``attempts`` attempts of a notification have a recorded outcome."""
        at = time.time() if at is None else at
        entry = self.recorded.get(notification_id)
        if entry is None or entry[0] < attempts:
            self.recorded[notification_id] = (attempts, at)

    def purge(self, window: float, now: float | None = None) -> None:
        """Forget outcomes older than the window."""
        now = time.time() if now is None else now
        for key in [k for k, (_, at) in self.recorded.items() if now - at >= window]:
            del self.recorded[key]

    async def rebuild(self, sent_topic: str, window: float) -> None:
        """Load the outcomes recorded within the window on ``nmstream-sent``."""
        before = len(self.recorded)
        await read_window([sent_topic], time.time() - window, self._load)
        log.info("delivered table rebuilt from %s: %d outcomes (%d new)", sent_topic,
                 len(self.recorded), len(self.recorded) - before)

    def _load(self, partition: int, at: float, value: bytes) -> None:
        try:
            record = SentRecord.model_validate_json(value)
        except ValidationError:
            return
        if record.notification_id and record.attempts:
            self.add(record.notification_id, record.attempts, at)
