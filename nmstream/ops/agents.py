"""Background work of every worker: keep nmstream's topics declared, measure consumer lag."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import Counter
from collections.abc import Callable

import mode

from nmstream.app import app, settings
from nmstream.metrics import CONSUMER_LAG
from nmstream.routing.agents import router
from nmstream.stage import stages
from nmstream.topics import guard

log = logging.getLogger(__name__)
#: Allocations between two young-generation collections (Python: 700).
GC_THRESHOLD = 10_000
#: Full collections are left to :func:`collect_when_idle` (Python's own start after ten
#: middle-generation ones once the heap grew by a quarter: in a burst, which holds its alerts).
NO_FULL_COLLECTIONS = 1 << 30
#: A full collection runs once the worker is idle at least this many seconds after the last,
#: and after :data:`FULL_GC_MAX` seconds even when it never is.
FULL_GC_IDLE, FULL_GC_MAX = 10.0, 120.0
#: Idle means no posts, no alerts to route, and no group due within this many seconds.
FULL_GC_HEADROOM = 0.5


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


#: Topics whose lag was exported: one that is no longer assigned drops to 0, not stale.
CONSUMER_LAG_TOPICS: set[str] = set()


@app.timer(5.0)  # type: ignore[untyped-decorator]
async def measure_lag() -> None:
    """``nmstream_consumer_lag``: per topic, records in Kafka this worker has not fetched yet
    (high watermark minus position, over its assigned partitions), by Faust's consumer and by
    the stages; for notifications also those fetched and not yet being sent."""
    consumer = app.consumer
    lag: Counter[str] = Counter({topic: 0 for topic in CONSUMER_LAG_TOPICS})
    try:
        for tp in consumer.assignment():
            highwater, position = consumer.highwater(tp), await consumer.position(tp)
            if highwater is not None and position is not None:
                lag[tp.topic] += max(highwater - position, 0)
        for stage in stages:
            lag.update(await stage.lag())
    except Exception as exc:  # a rebalance under way, Kafka trouble: measure next time
        log.debug("consumer lag not measured: %s", exc)
        return
    CONSUMER_LAG_TOPICS.update(lag)
    for topic, value in lag.items():
        CONSUMER_LAG.labels(topic=topic).set(value)


@app.task  # type: ignore[untyped-decorator]
async def log_event_loop() -> None:
    """Say which event loop runs the worker (``NMSTREAM_EVENT_LOOP``)."""
    loop = type(asyncio.get_running_loop())
    log.info("event loop: %s.%s", loop.__module__, loop.__qualname__)


@app.task  # type: ignore[untyped-decorator]
async def freeze_startup_objects() -> None:
    """Exempt the objects of a started worker (modules, app, models) from garbage collection:
    a full collection then walks only what the pipeline allocated since."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, gc.get_threshold()[1], NO_FULL_COLLECTIONS)


class FullCollections:
    """Python's full garbage collection, run when the worker is idle: it walks every object
    the pipeline holds (~0.1 s with a 20,000-alert burst's), which would otherwise stall a
    burst or its deliveries."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last = clock()

    def tick(self, idle: bool) -> bool:
        """Collect if idle :data:`FULL_GC_IDLE` seconds after the last collection, or anyway
        :data:`FULL_GC_MAX` seconds after it; True when it did."""
        since = self.clock() - self.last
        if since < FULL_GC_MAX and not (idle and since >= FULL_GC_IDLE):
            return False
        gc.collect()
        self.last = self.clock()
        return True


full_collections = FullCollections()


@app.timer(1.0)  # type: ignore[untyped-decorator]
async def collect_when_idle() -> None:
    """The full garbage collection, when due (see :class:`FullCollections`)."""
    full_collections.tick(worker_idle())


def worker_idle() -> bool:
    """No posts, no alerts to route, and no group due within :data:`FULL_GC_HEADROOM` (the
    worker waits for its groups after a burst: a collection must not delay them)."""
    return router.idle() and router.until_due(FULL_GC_HEADROOM) >= FULL_GC_HEADROOM
