"""Stages: what a worker wrote for its own stages, handed back instead of parsed again
(ReadBack); how each stage's consumer fetches."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer

from nmstream.app import settings
from nmstream.channels.agents import dispatch
from nmstream.routing.agents import router
from nmstream.stage import ReadBack


def test_only_records_of_owned_partitions_are_kept_and_each_is_taken_once() -> None:
    kept: ReadBack[str] = ReadBack(max_bytes=100)
    kept.own({0, 2})
    kept.keep(0, b"first", "decoded first")
    kept.keep(1, b"elsewhere", "another worker's partition")
    kept.keep(2, b"second", "decoded second")

    assert kept.take(b"elsewhere") is None
    assert kept.take(bytes(bytearray(b"second"))) == "decoded second"  # equal bytes, new object
    assert kept.take(b"first") == "decoded first"
    assert kept.take(b"first") is None  # read again (a rebalance, a replay): parsed
    assert kept.take(b"never written") is None


def test_beyond_the_bytes_new_records_wait_for_room_and_stale_ones_make_room() -> None:
    now = [0.0]
    kept: ReadBack[int] = ReadBack(max_bytes=30, stale=60.0, clock=lambda: now[0])
    kept.own({0})
    for i in range(5):  # three records of 10 bytes fit: the stage reads those first
        kept.keep(0, b"record %03d" % i, i)
    kept.keep(0, b"record 002", 2)  # the same bytes again: still one record
    assert kept.take(b"record 000") == 0
    kept.keep(0, b"record 005", 5)  # room again
    assert [kept.take(b"record %03d" % i) for i in range(1, 6)] == [1, 2, None, None, 5]

    for i in range(3):  # never read (a write Kafka did not take)
        kept.keep(0, b"lost %05d" % i, i)
    now[0] = 59.0
    kept.keep(0, b"fresh 0000", 10)
    assert kept.take(b"fresh 0000") is None  # no room yet
    now[0] = 61.0
    kept.keep(0, b"fresh 0001", 11)  # the oldest stale record made room
    assert kept.take(b"fresh 0001") == 11
    assert [kept.take(b"lost %05d" % i) for i in range(3)] == [None, 1, 2]


def test_all_are_forgotten_when_partitions_are_lost() -> None:
    kept: ReadBack[int] = ReadBack(max_bytes=100)
    kept.own({0, 1})
    kept.keep(0, b"on 0", 0)
    kept.keep(1, b"on 1", 1)
    kept.disown({1})
    assert kept.take(b"on 0") is None and kept.take(b"on 1") is None
    kept.keep(1, b"on 1 again", 1)
    kept.keep(0, b"on 0 again", 0)
    assert kept.take(b"on 1 again") is None
    assert kept.take(b"on 0 again") == 0


def test_dispatch_fetches_at_once_and_the_router_fetches_fuller_batches() -> None:
    async def consumers() -> tuple[AIOKafkaConsumer, AIOKafkaConsumer]:
        made = dispatch.new_consumer(), router.new_consumer()
        for consumer in made:
            await consumer.stop()  # never started: nothing to close but the warning
        return made

    eager, batched = asyncio.run(consumers())
    assert settings.fetch_min_bytes > 1
    assert eager._fetch_min_bytes == 1
    assert batched._fetch_min_bytes == settings.fetch_min_bytes
    for consumer in (eager, batched):
        assert consumer._fetch_max_wait_ms == int(settings.fetch_max_wait * 1000)
