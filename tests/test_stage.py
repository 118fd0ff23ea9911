"""ReadBack: what a worker wrote for its own stages, handed back instead of parsed again."""

from __future__ import annotations

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


def test_the_oldest_are_forgotten_beyond_the_bytes_and_all_when_partitions_are_lost() -> None:
    kept: ReadBack[int] = ReadBack(max_bytes=30)  # three records of 10 bytes
    kept.own({0, 1})
    for i in range(5):
        kept.keep(0, b"record %03d" % i, i)
    kept.keep(0, b"record 004", 4)  # the same bytes again: still one record
    assert [kept.take(b"record %03d" % i) for i in range(5)] == [None, None, 2, 3, 4]
    for i in range(3):  # taken records no longer count
        kept.keep(0, b"again! %03d" % i, i)
    assert [kept.take(b"again! %03d" % i) for i in range(3)] == [0, 1, 2]

    kept.keep(0, b"on 0", 0)
    kept.keep(1, b"on 1", 1)
    kept.disown({1})
    assert kept.take(b"on 0") is None and kept.take(b"on 1") is None
    kept.keep(1, b"on 1 again", 1)
    kept.keep(0, b"on 0 again", 0)
    assert kept.take(b"on 1 again") is None
    assert kept.take(b"on 0 again") == 0
