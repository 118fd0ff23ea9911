"""The router's group timers: groups are written when due, once, soonest first; a write Kafka
refused is tried again; groups are rendered ahead while the router is idle, and it gives way to
ingest's posts. Without a broker: writes are recorded instead of sent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError
from aiokafka.structs import ConsumerRecord

from nmstream.config.agents import state
from nmstream.ingest.models import Alert, AlertRecord, GroupContext, Received
from nmstream.render.agents import Rendered
from nmstream.routing import agents
from nmstream.routing.agents import (
    FLUSH_TICK,
    GIVE_WAY,
    GIVE_WAY_MAX,
    RENDER_AHEAD,
    Pending,
    Router,
)
from nmstream.routing.batching import batching
from nmstream.routing.models import AlertGroup, ReceiverRef
from nmstream.topics import ALERTS

REF = ReceiverRef(kind="Receiver", name="hook", channel="webhook", tenant=None,
                  config_kind="Config", config_name="default", targets={})
WAIT = 10.0


class RecordingRouter(Router):
    """A router whose writes are recorded: the ids of each write, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[list[str]] = []

    async def write(self, groups: list[Pending]) -> None:
        self.written.append([g.group_id for g in groups])


def record(name: str, received: float, **labels: str) -> Received:
    return AlertRecord.build(Alert(labels={"alertname": name, **labels}), GroupContext(), "req",
                             datetime.fromtimestamp(received, UTC)).received()


def pend(router: Router, gid: str, received: float, offset: int = 0) -> Pending:
    """A new pending group, as the router starts one for its first alert."""
    first = record(gid, received)
    group = router.pending[gid] = Pending(gid, REF, {}, 0, first, received + WAIT)
    router.schedule(group)
    group.add(first, 0, offset, WAIT)
    router.changed(group)
    return group


def flush(router: RecordingRouter, now: float) -> list[str]:
    router.written.clear()
    asyncio.run(router.flush_due(now))
    return [gid for write in router.written for gid in write]


def test_groups_are_written_when_due_soonest_first_and_once() -> None:
    router = RecordingRouter()
    pend(router, "late", 1020)
    pend(router, "early", 1000)
    pend(router, "middle", 1010)
    assert flush(router, 1009.9) == []
    assert flush(router, 1025) == ["early", "middle"]
    assert flush(router, 1025) == []
    assert set(router.pending) == {"late"}
    assert flush(router, 1030) == ["late"]
    assert router.pending == {}


def test_an_older_alert_makes_its_group_due_earlier_and_it_is_written_once() -> None:
    router = RecordingRouter()
    group = pend(router, "g", 1000)
    assert group.add(record("g", 995), 0, 1, WAIT)
    router.schedule(group)
    assert flush(router, 1005) == ["g"]
    assert flush(router, 1010) == []  # the entry of the first due time is stale


def test_a_group_written_when_full_is_not_written_again_by_its_old_timer() -> None:
    router = RecordingRouter()
    pend(router, "g", 1000)
    router.pending.pop("g")  # written when it filled up
    pend(router, "g", 1008)  # the next group of the same id
    assert flush(router, 1010) == []
    assert flush(router, 1018) == ["g"]


def test_the_flush_waits_until_the_soonest_due_group_a_tick_at_most() -> None:
    router = RecordingRouter()
    assert router.until_due(FLUSH_TICK) == FLUSH_TICK  # nothing pending
    now = time.time()
    pend(router, "later", now + 60 - WAIT)  # beyond the tick
    assert router.until_due(FLUSH_TICK) == FLUSH_TICK
    pend(router, "soon", now + 5 - WAIT)
    assert 4 < router.until_due(30.0) <= 5
    pend(router, "overdue", now - 1 - WAIT)
    assert router.until_due(30.0) == 0
    assert flush(router, time.time()) == ["overdue"]
    assert 4 < router.until_due(30.0) <= 5


class BehindRouter(RecordingRouter):
    """A recording router behind on the partitions in :attr:`unread`."""

    def __init__(self) -> None:
        super().__init__()
        self.unread: set[int] = set()

    def behind(self, tp: TopicPartition) -> bool:
        return tp.partition in self.unread


def test_a_router_behind_keeps_due_groups_open_until_it_read_past_them() -> None:
    assert batching().max_wait == 1.0
    router = BehindRouter()
    router.unread = {0}
    group = pend(router, "g", 1000)  # due at 1010
    router.read_until[0] = 1001
    assert flush(router, 1012) == [] and router.pending["g"] is group
    assert router.until_due(30.0) == FLUSH_TICK  # checked again every tick
    group.add(record("g", 1009, pod="2"), 0, 7, WAIT)  # read late, received in time
    router.read_until[0] = 1009
    assert flush(router, 1012.3) == []
    router.read_until[0] = 1010.5  # read past its due time (before batchMaxWait more)
    assert flush(router, 1012.6) == ["g"] and len(group.alerts) == 2
    assert router.waiting == {}

    pend(router, "caught up", 1005)  # due at 1015
    assert flush(router, 1016) == []
    router.unread = set()  # read what Kafka had
    assert flush(router, 1016.1) == ["caught up"]


def test_a_router_behind_waits_batch_max_wait_at_most_and_not_for_written_groups() -> None:
    router = BehindRouter()
    router.unread = {0}
    pend(router, "g", 1000)
    pend(router, "full", 1000)
    assert flush(router, 1012) == []
    router.pop("full")  # written when it filled up
    wait = batching().max_wait
    assert flush(router, 1012 + wait - 0.01) == []
    assert flush(router, 1012 + wait) == ["g"]
    assert router.pending == {} and router.waiting == {}


def test_stale_timers_stay_bounded() -> None:
    router = RecordingRouter()
    for i in range(5000):  # every group fills up and is written before it is due
        pend(router, f"g{i}", 1000 + i)
        router.pop(f"g{i}")
    assert len(router.timers) <= 1025 and len(router.ahead) <= 1025
    pend(router, "kept", 2000)
    assert flush(router, 9000) == ["kept"]


def test_groups_kafka_refused_are_written_again_with_what_arrived_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    router = Router()
    written: list[list[tuple[str, int, list[str]]]] = []
    first = pend(router, "g", 1000, offset=3)

    async def refused_once(groups: Sequence[tuple[AlertGroup, int]]) -> None:
        written.append([(g.group_id, p, sorted(a.labels.get("pod", "") for a in g.alerts))
                        for g, p in groups])
        if len(written) == 1:
            # its alerts stay uncommitted while it is on its way...
            assert list(router.held()) == [(TopicPartition(ALERTS.name, 0), 3)]
            # ...and an alert of the same group arrives meanwhile
            newer = router.pending["g"] = Pending("g", REF, {}, 0, record("g", 1005), 1015)
            router.schedule(newer)
            newer.add(record("g", 1005, pod="2"), 0, 9, WAIT)
            raise KafkaTimeoutError

    monkeypatch.setattr(agents, "write_notifications", refused_once)
    asyncio.run(router.flush_due(1010))
    assert router.pending["g"] is first and not router.writing
    assert sorted(a.labels.get("pod", "") for a in first.alerts.values()) == ["", "2"]
    assert first.offsets == {0: 3} and first.due == 1010
    assert router.until_due(FLUSH_TICK) == FLUSH_TICK  # due already, but not tried at once
    asyncio.run(router.flush_due(1010.02))  # the next tick
    assert written == [[("g", 0, [""])], [("g", 0, ["", "2"])]]
    assert router.pending == {} and list(router.held()) == []
    assert not router.refused


def test_groups_due_soon_are_rendered_ahead_once_and_again_after_a_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    router = Router()
    now = time.time()
    soon = pend(router, "soon", now + 0.2 - WAIT)  # due in 0.2 s
    later = pend(router, "later", now + RENDER_AHEAD + 1 - WAIT)  # not within the horizon
    assert not router.render_ahead(RENDER_AHEAD, 1.0)
    assert soon.rendered is not None and later.rendered is None
    assert router.unrendered == {"later"}
    rendered = soon.rendered
    assert not router.render_ahead(RENDER_AHEAD, 1.0) and soon.rendered is rendered  # once

    soon.add(record("soon", now + 0.3 - WAIT, pod="2"), 0, 5, WAIT)  # a new alert
    router.changed(soon)
    assert soon.rendered is None
    router.render_ahead(RENDER_AHEAD, 1.0)
    assert soon.rendered is not None
    (notification, _), = soon.rendered.notifications
    assert len(notification.fingerprints) == 2

    written: list[tuple[AlertGroup | Rendered, int]] = []

    async def record_write(groups: Sequence[tuple[AlertGroup | Rendered, int]]) -> None:
        written.extend(groups)

    monkeypatch.setattr(agents, "write_notifications", record_write)
    asyncio.run(router.flush_due(now + 1))
    assert written == [(soon.rendered, 0)] and router.unrendered == {"later"}

    # rendered ahead, but the view changed since: rendered again when due
    router.render_ahead(RENDER_AHEAD + 2, 1.0)
    assert later.rendered is not None
    monkeypatch.setattr(state.view, "version", state.view.version + 1)
    assert isinstance(later.ready(), AlertGroup)


def test_rendering_ahead_yields_after_its_budget() -> None:
    router = Router()
    now = time.time()
    groups = [pend(router, f"g{i}", now + 0.1 - WAIT) for i in range(3)]
    assert router.render_ahead(RENDER_AHEAD, 0.0)  # one group, then the loop's turn
    assert [g.rendered is not None for g in groups] == [True, False, False]
    assert router.render_ahead(RENDER_AHEAD, 0.0)
    assert not router.render_ahead(RENDER_AHEAD, 0.0)
    assert all(g.rendered is not None for g in groups) and router.unrendered == set()


def batch(received: float) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
    tp = TopicPartition(ALERTS.name, 0)
    return {tp: [ConsumerRecord(ALERTS.name, 0, 0, int(received * 1000), 0, None, b"{}", None,
                                0, 2, [])]}


def test_the_router_gives_way_to_posts_in_flight_for_a_bounded_time() -> None:
    async def scenario() -> None:
        router = Router()
        started = time.monotonic()
        await router.give_way(batch(time.time()))  # no post in flight: no wait
        assert time.monotonic() - started < 0.05

        with router.post():  # a post answered after 0.1 s
            waiting = asyncio.create_task(router.give_way(batch(time.time())))
            await asyncio.sleep(0.1)
            assert not waiting.done() and not router.idle()
        await asyncio.wait_for(waiting, 1.0)

        # a post that takes long: the batch waits until GIVE_WAY of batchMaxWait (at most
        # GIVE_WAY_MAX) after its oldest alert was received, not longer
        received = time.time() - min(GIVE_WAY * batching().max_wait, GIVE_WAY_MAX) + 0.1
        with router.post():
            started = time.monotonic()
            await asyncio.wait_for(router.give_way(batch(received)), 1.0)
            assert 0.05 < time.monotonic() - started < 0.5
            router.handled_at = 0.0
            assert not router.idle()  # nor does it render ahead meanwhile
        assert router.idle()

    asyncio.run(scenario())
