"""The ingest answer when Kafka is gone or hangs: 503, never 200, and recovery afterwards."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import requests

from nmstream.broker import EmbeddedBroker
from tests.helpers import Worker, make_worker, read_topic

PRODUCE_TIMEOUT = 3.0


def marked_alert(marker: str) -> bytes:
    return json.dumps({"alerts": [{"labels": {"alertname": "Outage", "marker": marker}}]}).encode()


def post_until_accepted(worker: Worker, body: bytes, within: float = 60.0) -> int:
    """Retry like Alertmanager does until 200; returns how many 503s came first."""
    refusals = 0
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            response = worker.post("/api/v2/alerts", body)
        except requests.RequestException:
            response = None
        if response is not None and response.status_code == 200:
            return refusals
        if response is not None:
            assert response.status_code == 503, response.text
        refusals += 1
        time.sleep(0.5)
    raise AssertionError(f"never accepted in {within}s:\n{worker.log_tail()}")


def assert_refused_with_503(worker: Worker, body: bytes) -> None:
    started = time.monotonic()
    response = worker.post("/api/v2/alerts", body)
    elapsed = time.monotonic() - started
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "1"
    assert response.json()["retry"] is True
    assert "Kafka did not acknowledge" in response.json()["error"]
    assert elapsed < PRODUCE_TIMEOUT + 5


def started_worker(broker: EmbeddedBroker, tmp_path: Path, prefix: str) -> Worker:
    """A ready worker with a short produce timeout, so refusals come quickly."""
    return make_worker(
        broker, tmp_path, prefix, NMSTREAM_PRODUCE_TIMEOUT=str(PRODUCE_TIMEOUT)
    ).start()


def markers_on_topic(broker: EmbeddedBroker, topic: str, expect: int) -> list[str]:
    return [r["value"]["alert"]["labels"]["marker"] for r in read_topic(broker, topic, expect)]


def test_broker_stopped_gives_503_then_a_retry_lands(
    fresh_broker: EmbeddedBroker, tmp_path: Path, prefix: str
) -> None:
    worker = started_worker(fresh_broker, tmp_path, prefix)
    try:
        assert worker.post("/api/v2/alerts", marked_alert("before")).status_code == 200
        fresh_broker.stop()

        assert_refused_with_503(worker, marked_alert("during"))
        ready = worker.get("/-/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["broker"].startswith("unreachable")
        assert worker.get("/-/healthy").status_code == 200

        fresh_broker.start()  # same port, empty in-memory storage
        retried = marked_alert("retried")
        post_until_accepted(worker, retried)
        markers = markers_on_topic(fresh_broker, f"{prefix}-alerts", expect=1)
        assert "retried" in markers
        assert "before" not in markers  # the old broker's storage is gone: proves a new broker
        deadline = time.monotonic() + 30
        while worker.get("/-/ready").status_code != 200:
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.5)
    finally:
        worker.stop()


def test_hanging_broker_gives_503_and_nothing_is_lost_after_it_resumes(
    fresh_broker: EmbeddedBroker, tmp_path: Path, prefix: str
) -> None:
    worker = started_worker(fresh_broker, tmp_path, prefix)
    assert fresh_broker.process is not None
    pid = fresh_broker.process.pid
    try:
        assert worker.post("/api/v2/alerts", marked_alert("before")).status_code == 200
        os.kill(pid, signal.SIGSTOP)
        try:
            assert_refused_with_503(worker, marked_alert("during"))
        finally:
            os.kill(pid, signal.SIGCONT)
        post_until_accepted(worker, marked_alert("after"))
        markers = markers_on_topic(fresh_broker, f"{prefix}-alerts", expect=2)
        assert markers.count("before") == 1
        assert markers.count("after") == 1
        # "during" was refused; Kafka may still have it (at-least-once), at most once.
        assert markers.count("during") <= 1
        assert set(markers) <= {"before", "during", "after"}
    finally:
        worker.stop()
