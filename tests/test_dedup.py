"""Deduplication rules and Go durations, without a broker."""

from __future__ import annotations

import pytest

from nmstream.routing.batching import go_duration
from nmstream.routing.dedup import Dedup


def test_repeat_within_the_window_is_dropped_and_a_status_change_is_not() -> None:
    dedup = Dedup()
    assert dedup.admit(0, "r", "fp", "firing", (0, 1), window=60, now=1000)
    assert not dedup.admit(0, "r", "fp", "firing", (0, 2), window=60, now=1010)
    assert dedup.admit(0, "other-receiver", "fp", "firing", (0, 3), window=60, now=1010)
    assert dedup.admit(0, "r", "fp", "resolved", (0, 4), window=60, now=1011)
    assert dedup.admit(0, "r", "fp", "firing", (0, 5), window=60, now=1012)


def test_after_the_window_or_with_window_zero_everything_is_sent() -> None:
    dedup = Dedup()
    assert dedup.admit(0, "r", "fp", "firing", (0, 1), window=60, now=1000)
    assert dedup.admit(0, "r", "fp", "firing", (0, 2), window=60, now=1060)
    assert dedup.admit(0, "r", "fp", "firing", (0, 3), window=0, now=1061)


def test_a_replayed_record_is_admitted_again() -> None:
    dedup = Dedup()
    assert dedup.admit(3, "r", "fp", "firing", (3, 7), window=60, now=1000)
    assert dedup.admit(3, "r", "fp", "firing", (3, 7), window=60, now=1001)


def test_purge_and_forget_bound_the_state() -> None:
    dedup = Dedup()
    for i in range(100):
        dedup.admit(i % 4, "r", f"fp{i}", "firing", (i % 4, i), window=60, now=1000 + i)
    dedup.purge(window=60, now=1090)
    assert len(dedup.seen) == 69  # sent at 1031..1099: younger than 60 s at 1090
    dedup.forget({0, 1})
    assert {p for p, _, _ in dedup.seen} == {2, 3}


@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("500ms", 0.5), ("1m30s", 90.0), ("2h", 7200.0), ("0s", 0.0), ("1.5s", 1.5),
])
def test_go_durations(text: str, seconds: float) -> None:
    assert go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "5 s", "1x", "s1"])
def test_invalid_go_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        go_duration(text)
