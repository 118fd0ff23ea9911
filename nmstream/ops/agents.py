"""Background work of every worker: keep nmstream's topics declared."""

from __future__ import annotations

import logging

import mode

from nmstream.app import app, settings
from nmstream.topics import guard

log = logging.getLogger(__name__)


@app.service
class TopicKeeper(mode.Service):
    """Declares the topics at start (retrying while Kafka is away), then re-checks them."""

    async def on_stop(self) -> None:
        """Release the admin connection."""
        await guard.close()

    @mode.Service.task
    async def _keep_declared(self) -> None:
        delay = 0.5
        while not self.should_stop:
            try:
                await guard.ensure()
            except Exception as exc:  # any broker error: keep trying, the worker stays up
                log.warning("topics not verified (%s); retrying in %.1fs", exc, delay)
                await self.sleep(delay)
                delay = min(delay * 2, settings.topic_check_interval)
            else:
                delay = 0.5
                await self.sleep(settings.topic_check_interval)
