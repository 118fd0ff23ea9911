"""Python's full garbage collection runs when the worker is idle, not in the middle of a burst
(``nmstream.ops.agents``)."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterator

import pytest

from nmstream.ops.agents import (
    FULL_GC_HEADROOM,
    FULL_GC_IDLE,
    FULL_GC_MAX,
    GC_THRESHOLD,
    NO_FULL_COLLECTIONS,
    FullCollections,
    freeze_startup_objects,
    worker_idle,
)
from nmstream.routing.agents import router


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def full_collections_so_far() -> int:
    return int(gc.get_stats()[2]["collections"])


def test_a_full_collection_waits_for_idle_time_after_the_last() -> None:
    clock = Clock()
    collections = FullCollections(clock)
    before = full_collections_so_far()

    clock.now += FULL_GC_IDLE - 1
    assert not collections.tick(idle=True)  # idle, but too soon after the last
    clock.now += 2
    assert not collections.tick(idle=False)  # due, but alerts are coming in
    assert full_collections_so_far() == before

    assert collections.tick(idle=True)
    assert full_collections_so_far() == before + 1
    assert collections.last == clock.now
    assert not collections.tick(idle=True)  # the next one counts from this one


def test_a_busy_worker_still_collects_after_the_longest_interval() -> None:
    clock = Clock()
    collections = FullCollections(clock)
    before = full_collections_so_far()
    clock.now += FULL_GC_MAX - 1
    assert not collections.tick(idle=False)
    clock.now += 1
    assert collections.tick(idle=False)
    assert full_collections_so_far() == before + 1


def test_idle_means_no_posts_no_alerts_and_no_group_due_soon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(router, "handled_at", time.monotonic() - 1)
    monkeypatch.setattr(router, "timers", [])
    assert worker_idle()
    monkeypatch.setattr(router, "timers", [(time.time() + 2 * FULL_GC_HEADROOM, 0, "later")])
    assert worker_idle()
    monkeypatch.setattr(router, "timers", [(time.time() + FULL_GC_HEADROOM / 2, 0, "soon")])
    assert not worker_idle()  # a burst's groups are about to fall due
    monkeypatch.setattr(router, "timers", [])
    with router.post():
        assert not worker_idle()
    monkeypatch.setattr(router, "handled_at", time.monotonic())
    assert not worker_idle()  # alerts were routed just now


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_a_started_worker_leaves_full_collections_to_the_idle_collector() -> None:
    asyncio.run(freeze_startup_objects())
    young, middle, full = gc.get_threshold()
    assert (young, full) == (GC_THRESHOLD, NO_FULL_COLLECTIONS)
    assert gc.get_freeze_count() > 0
    gc.collect()  # Python starts a full collection once the heap grew a quarter since the last
    before, middles = full_collections_so_far(), gc.get_stats()[1]["collections"]
    # what a burst does: objects that live on, and enough allocations (here cycles, garbage at
    # once) for the middle-generation collections after which Python would start a full one
    held = [[i] for i in range(50_000)]
    for _ in range(20 * middle * GC_THRESHOLD):
        cycle: list[object] = []
        cycle.append(cycle)
    assert gc.get_stats()[1]["collections"] - middles > 10  # Python's own full threshold
    assert full_collections_so_far() == before
    del held
