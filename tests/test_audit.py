"""``nmstream replay`` and ``nmstream tap`` against the real broker: exact time ranges across
partitions, filters, re-injection of dead letters after an outage, following a topic live,
and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from nmstream.audit.replay import Filter, parse_time
from nmstream.broker import EmbeddedBroker, free_port
from tests.helpers import (
    Recorder,
    alerts,
    cli,
    configured,
    nm,
    read_topic,
    wait_until,
    wait_usable,
    webhook,
)

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def sent_record(i: int, tenant: str, receiver: str) -> bytes:
    return json.dumps({"schema_version": 1, "notification_id": f"n{i:03d}", "status": "delivered",
                       "channel": "webhook", "tenant": tenant,
                       "receiver": {"kind": "WebhookReceiver", "name": receiver,
                                    "tenant": tenant}}).encode()


@pytest.fixture
def stamped(broker: EmbeddedBroker, prefix: str) -> str:
    """``<prefix>-sent`` with 4 partitions holding 60 records one second apart from T0,
    written to the partitions round-robin; tenants a/b and receivers r0/r1/r2 alternate."""
    topic = f"{prefix}-sent"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(topic, 4, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    start = int(T0.timestamp() * 1000)
    for i in range(60):
        producer.send(topic, key=f"n{i:03d}".encode(), partition=i % 4,
                      timestamp_ms=start + i * 1000, value=sent_record(i, "ab"[i % 2], f"r{i % 3}"))
    producer.flush()
    producer.close()
    return topic


@pytest.mark.timeout(120)
def test_replay_returns_exactly_the_records_of_a_time_range_across_partitions(
    broker: EmbeddedBroker, prefix: str, stamped: str
) -> None:
    since, until = T0 + timedelta(seconds=17), T0 + timedelta(seconds=43)
    result = cli(broker, prefix, "replay", "--topic", "sent",
                 "--from", since.isoformat(), "--to", until.isoformat().replace("+00:00", "Z"))
    assert result.returncode == 0, result.stderr
    got = lines(result.stdout)
    # [17 s, 43 s): records 17..42, from all four partitions, in time order
    assert [r["value"]["notification_id"] for r in got] == [f"n{i:03d}" for i in range(17, 43)]
    assert {r["partition"] for r in got} == {0, 1, 2, 3}
    assert all(r["topic"] == stamped for r in got)
    assert got[0]["timestamp"] == since.isoformat()
    assert "26 record(s)" in result.stderr

    only = cli(broker, prefix, "replay", "--topic", "sent", "--from", str(T0.timestamp()),
               "--tenant", "a", "--receiver", "r0")
    assert only.returncode == 0, only.stderr
    # tenant a = even i, receiver r0 = i divisible by 3: i divisible by 6
    assert [r["value"]["notification_id"] for r in lines(only.stdout)] == [
        f"n{i:03d}" for i in range(0, 60, 6)]


def test_a_range_after_every_record_is_empty(
    broker: EmbeddedBroker, prefix: str, stamped: str
) -> None:
    result = cli(broker, prefix, "replay", "--topic", "sent",
                 "--from", (T0 + timedelta(minutes=5)).isoformat())
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


@pytest.mark.timeout(120)
def test_tap_follows_new_records_only(broker: EmbeddedBroker, prefix: str, stamped: str) -> None:
    env = {**os.environ, "NMSTREAM_BROKER": broker.url, "NMSTREAM_TOPIC_PREFIX": prefix}
    tap = subprocess.Popen([sys.executable, "-m", "nmstream", "tap", "sent", "--tenant", "b"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[dict[str, Any]] = []
    assert tap.stdout is not None
    reader = threading.Thread(target=lambda: seen.extend(json.loads(x) for x in tap.stdout or []),
                              daemon=True)
    reader.start()
    try:
        time.sleep(4)  # the tap is connected and at the end of every partition
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        for i in range(100, 106):
            producer.send(stamped, key=f"n{i}".encode(), value=sent_record(i, "ab"[i % 2], "r"))
        producer.flush()
        producer.close()
        wait_until(lambda: len(seen) >= 3, "the tap printed the new records of tenant b")
        time.sleep(1)
    finally:
        tap.terminate()
        tap.wait(timeout=20)
    reader.join(timeout=5)
    assert tap.returncode == 0
    assert sorted(r["value"]["notification_id"] for r in seen) == ["n101", "n103", "n105"]


@pytest.mark.timeout(180)
def test_dead_letters_replayed_with_reprocess_are_delivered_once_the_receiver_is_back(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str, recorder: int
) -> None:
    Recorder.status["/outage"] = 503
    docs = [*nm(batchMaxWait="100ms"), webhook("ops", f"http://127.0.0.1:{recorder}/outage")]
    worker = configured(broker, tmp_path, prefix, docs, NMSTREAM_RETRY_INITIAL="0.2",
                        NMSTREAM_RETRY_MAX_ATTEMPTS="3").start()
    try:
        wait_usable(worker, 1)
        started = datetime.now(UTC)
        assert worker.post("/api/v2/alerts", alerts(["DiskFull", "NodeDown"])).status_code == 200
        letters = read_topic(broker, f"{prefix}-dlq-webhook", expect=2, settle=0.5)
        assert len(letters) == 2 and len(Recorder.got) == 6  # 3 attempts each, all refused
        dead = {r["value"]["notification"]["id"] for r in letters}

        Recorder.status["/outage"] = 200  # the receiver is back
        result = cli(broker, prefix, "replay", "--topic", "dlq-webhook",
                     "--from", started.isoformat(), "--receiver", "ops", "--reprocess")
        assert result.returncode == 0, result.stderr
        assert {r["value"]["notification"]["id"] for r in lines(result.stdout)} == dead
        assert "re-injected 2 of 2" in result.stderr

        def delivered() -> list[dict[str, Any]]:
            return [r["value"] for r in read_topic(broker, f"{prefix}-sent", 0, 2, settle=0)
                    if r["value"]["status"] == "delivered"]
        wait_until(lambda: len(delivered()) == 2, "both re-injected notifications delivered")
        time.sleep(2)  # a second delivery would show now
    finally:
        worker.stop()
    names = sorted(b["alerts"][0]["labels"]["alertname"] for _, _, b, _ in Recorder.got[6:])
    assert names == ["DiskFull", "NodeDown"]  # each once, after the outage
    fresh = {r["notification_id"] for r in delivered()}
    assert len(fresh) == 2 and not fresh & dead


def test_replay_errors_are_clear_messages(broker: EmbeddedBroker, prefix: str) -> None:
    cases = {
        ("--topic", "nope", "--from", "1h"): "--topic: 'nope' is not one of nmstream's topics",
        ("--topic", "sent", "--from", "yesterday"): "--from: 'yesterday' is not a time",
        ("--topic", "sent", "--from", "1h", "--to", "2h"): "--to: must be later than --from",
        ("--topic", "alerts", "--from", "1h", "--receiver", "x"): "--receiver: alerts have no",
        ("--topic", "sent", "--from", "1h", "--reprocess"): "--reprocess: only alerts and dlq",
    }
    for args, message in cases.items():
        result = cli(broker, prefix, "replay", *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    missing = cli(broker, prefix, "replay", "--topic", "sent", "--from", "1h")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    env = {**os.environ, "NMSTREAM_BROKER": f"127.0.0.1:{free_port()}"}
    down = subprocess.run([sys.executable, "-m", "nmstream", "replay", "--topic", "sent",
                           "--from", "1h"], env=env, capture_output=True, text=True, timeout=60)
    assert down.returncode == 2 and "Kafka at 127.0.0.1" in down.stderr, down.stderr
    assert "Traceback" not in down.stderr


def test_times_and_filters() -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert parse_time("15m", "--from", now) == now - timedelta(minutes=15)
    assert parse_time("2026-11-30T08:00:00", "--from") == T0  # naive means UTC
    assert parse_time("2026-11-30T09:00:00+01:00", "--from") == T0
    assert parse_time(str(T0.timestamp()), "--from") == T0
    alert = {"alert": {"labels": {"namespace": "shop"}}}
    assert Filter(tenant="shop").matches("alerts", alert)
    assert not Filter(tenant="bank").matches("alerts", alert)
    letter = {"notification": {"receiver": {"name": "ops", "tenant": "shop"}}}
    assert Filter("shop", "ops").matches("dlq-webhook", letter)
    assert not Filter(receiver="dev").matches("dlq-webhook", letter)
