"""Delivery guarantees: retries with backoff on their own topic, dead letters with the
history of attempts, and every outcome on ``nmstream-sent``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from nmstream.broker import EmbeddedBroker
from tests.helpers import Sink, Worker, make_worker, payload, read_topic, wait_usable

API = "notification.kubesphere.io/v2alpha1"


def webhook_worker(broker: EmbeddedBroker, tmp_path: Path, prefix: str, port: int, path: str,
                   **env: str) -> Worker:
    directory = tmp_path / "config"
    directory.mkdir()
    docs: list[dict[str, Any]] = [
        {"apiVersion": API, "kind": "NotificationManager", "metadata": {"name": "nm"},
         "spec": {"receivers": {"tenantKey": "namespace"}, "batchMaxWait": "200ms"}},
        {"apiVersion": API, "kind": "WebhookConfig",
         "metadata": {"name": "hook", "labels": {"type": "default"}}},
        {"apiVersion": API, "kind": "WebhookReceiver",
         "metadata": {"name": "sink", "labels": {"type": "global"}},
         "spec": {"url": f"http://127.0.0.1:{port}{path}"}},
    ]
    (directory / "config.yaml").write_text(yaml.safe_dump_all(docs))
    worker = make_worker(broker, tmp_path, prefix, NMSTREAM_CONFIG_DIR=str(directory),
                         NMSTREAM_RETRY_INITIAL="0.3", NMSTREAM_RETRY_FACTOR="2", **env).start()
    wait_usable(worker, 1)
    return worker


def test_a_flaky_receiver_gets_the_notification_exactly_once_after_retries(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str, sinks: tuple[int, Any, Any]
) -> None:
    Sink.flaky_failures = 2
    worker = webhook_worker(broker, tmp_path, prefix, sinks[0], "/flaky")
    try:
        started = time.monotonic()
        assert worker.post("/api/v2/alerts", payload("alert1.json")).status_code == 200
        history = read_topic(broker, f"{prefix}-sent", expect=3, timeout=40)
        took = time.monotonic() - started
    finally:
        worker.stop()
    assert [(r["value"]["status"], r["value"]["attempts"]) for r in history] == [
        ("retrying", 1), ("retrying", 2), ("delivered", 3)]
    assert "HTTP 500" in history[0]["value"]["error"]
    assert len({r["value"]["notification_id"] for r in history}) == 1
    assert len(Sink.received) == 3  # two refused, one accepted: delivered exactly once
    assert took >= 0.3 * 0.5 + 0.6 * 0.5  # the backoff was waited
    assert read_topic(broker, f"{prefix}-dlq-webhook", expect=0, timeout=1, settle=0.5) == []


def test_a_receiver_down_past_the_budget_ends_in_the_dead_letter_topic(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str, sinks: tuple[int, Any, Any]
) -> None:
    worker = webhook_worker(broker, tmp_path, prefix, sinks[0], "/fail",
                            NMSTREAM_RETRY_MAX_ATTEMPTS="3")
    try:
        assert worker.post("/api/v2/alerts", payload("alert1.json")).status_code == 200
        (letter,) = [r["value"] for r in read_topic(broker, f"{prefix}-dlq-webhook", 1, 40)]
        history = read_topic(broker, f"{prefix}-sent", expect=3, timeout=10)
    finally:
        worker.stop()
    assert letter["stage"] == "deliver"
    assert letter["notification"]["attempt"] == 3
    assert [f.split(":")[0] for f in letter["notification"]["failures"]] == [
        "attempt 1", "attempt 2", "attempt 3"]
    assert [r["value"]["status"] for r in history] == ["retrying", "retrying", "dead-lettered"]
    assert len(Sink.received) == 3
