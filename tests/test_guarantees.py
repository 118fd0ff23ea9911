"""Delivery guarantees under failure: a worker killed with SIGKILL mid-stream, a channel stuck
on its timeout, and the history (sent records of every kind, the history webhook)."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests

from nmstream.broker import EmbeddedBroker
from nmstream.channels.delivered import Delivered
from tests.helpers import (
    API,
    Inbox,
    Recorder,
    alerts,
    configured,
    metric,
    nm,
    read_topic,
    wait_until,
    wait_usable,
    webhook,
)


def test_the_delivered_table_knows_which_attempts_have_an_outcome() -> None:
    table = Delivered()
    table.add("n1", 1, at=1000)
    assert table.has("n1", 0) and not table.has("n1", 1) and not table.has("n2", 0)
    table.add("n1", 3, at=1010)
    table.add("n1", 2, at=1020)  # an older attempt's outcome read late changes nothing
    assert table.has("n1", 2) and not table.has("n1", 3)
    table.add("n2", 1, at=1100)
    table.purge(window=60, now=1075)
    assert set(table.recorded) == {"n2"}


@pytest.mark.timeout(180)
def test_kill_9_mid_stream_delivers_every_notification_and_none_twice(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str, recorder: int
) -> None:
    total, concurrency = 120, 8
    Recorder.delay["/slow"] = 0.15
    docs = [*nm(batchMaxWait="100ms"), webhook("sink", f"http://127.0.0.1:{recorder}/slow")]
    # commits every 30 s: the kill lands with outcomes recorded whose offsets are not committed
    env = {"NMSTREAM_COMMIT_INTERVAL": "30", "NMSTREAM_DISPATCH_CONCURRENCY": str(concurrency)}
    first = configured(broker, tmp_path, prefix, docs, **env).start()
    wait_usable(first, 1)
    names = [f"stream-{i:03d}" for i in range(total)]
    for chunk in range(0, total, 20):
        assert first.post("/api/v2/alerts", alerts(names[chunk:chunk + 20])).status_code == 200
    wait_until(lambda: len(Recorder.got) >= total // 3, "a third of the stream delivered")
    first.stop(signal.SIGKILL)
    before_kill = Counter(nid for _, nid, _, _ in Recorder.got)
    history = read_topic(broker, f"{prefix}-sent", expect=0, timeout=2, settle=1)
    recorded = {r["value"]["notification_id"] for r in history}
    second = configured(broker, tmp_path, prefix, docs, **env).start()
    try:
        def everything() -> bool:
            got = {b["alerts"][0]["labels"]["alertname"] for _, _, b, _ in Recorder.got}
            return got == set(names)
        wait_until(everything, "every notification of the stream delivered", timeout=90)
        time.sleep(3)  # anything sent twice would arrive now
        skipped = metric(second, "nmstream_redeliveries_skipped_total")
    finally:
        second.stop()
    per_id = Counter(nid for _, nid, _, _ in Recorder.got)
    twice = {nid for nid, n in per_id.items() if n > 1}
    print(f"\nkill -9 after {sum(before_kill.values())} of {total} deliveries; outcomes recorded "
          f"before the kill: {len(recorded)}; re-deliveries skipped by the delivered table after "
          f"restart: {skipped:.0f}; delivered twice: {len(twice)}; total received "
          f"{len(Recorder.got)} for {len(per_id)} notifications")
    assert len(per_id) == total and all(nid for nid in per_id)
    # what was recorded before the kill is never sent again; only a send in flight at the
    # kill (received, outcome not yet on Kafka) can repeat, at most one per concurrent send
    assert not twice & recorded
    assert twice <= set(before_kill) - recorded
    assert len(twice) <= concurrency
    assert skipped > 0, "the kill should have left recorded outcomes with uncommitted offsets"


@pytest.mark.timeout(120)
def test_a_channel_stuck_on_its_timeout_does_not_delay_another_channel(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str, recorder: int,
    sinks: tuple[int, Any, Inbox],
) -> None:
    _, smtp, inbox = sinks
    timeout = 3
    Recorder.delay["/hang"] = timeout + 1
    docs = [
        *nm(batchMaxWait="100ms", receivers={
            "tenantKey": "namespace", "options": {"webhook": {"notificationTimeout": timeout}}}),
        {"apiVersion": API, "kind": "EmailConfig",
         "metadata": {"name": "mail", "labels": {"type": "default"}},
         "spec": {"from": "nm@example.org", "smartHost": {"host": "127.0.0.1",
                                                         "port": smtp.port}}},
        webhook("stuck", f"http://127.0.0.1:{recorder}/hang"),
        {"apiVersion": API, "kind": "EmailReceiver",
         "metadata": {"name": "mail", "labels": {"type": "global"}},
         "spec": {"to": ["oncall@example.org"]}},
    ]
    worker = configured(broker, tmp_path, prefix, docs, NMSTREAM_DISPATCH_CONCURRENCY="4",
                        NMSTREAM_DISPATCH_QUEUE="4").start()
    try:
        wait_usable(worker, 2)
        # warm up: the pipeline has its partitions and state once a first email got through
        assert worker.post("/api/v2/alerts", alerts(["warmup"], "mail")).status_code == 200
        wait_until(lambda: len(inbox.messages) == 1, "the warm-up email")
        # 16 webhook sends in 4 slots, each held for the full 3 s timeout: 12 s of backlog
        posted = time.monotonic()
        assert worker.post("/api/v2/alerts",
                           alerts([f"slow-{i}" for i in range(16)])).status_code == 200
        time.sleep(1.0)  # the webhook channel is now saturated
        sent = time.monotonic()
        assert worker.post("/api/v2/alerts", alerts(["fast"], "mail")).status_code == 200
        wait_until(lambda: any(b"alertname=fast" in m for m in inbox.messages),
                   "the email of the fast alert")
        mail_latency = time.monotonic() - sent
        webhook_attempts = len(Recorder.got)
    finally:
        worker.stop()
    print(f"\nemail delivered {mail_latency:.2f}s after its post while the webhook channel was "
          f"stuck (the webhook receiver had got {webhook_attempts} of its 16 sends "
          f"{time.monotonic() - posted:.1f}s after their post)")
    # the webhook backlog needs ≥ 12 s; the email waits only for its batch (0.1 s) and SMTP
    assert mail_latency < 2.0
    assert webhook_attempts < 16
    # 12 of the 16 waited for a sender: the webhook partitions were paused, not the email's
    assert "webhook notifications wait for a sender; not fetching more" in worker.log_text()


@pytest.mark.timeout(120)
def test_history_records_every_kind_of_outcome_and_posts_deliveries_to_the_history_webhook(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str, recorder: int
) -> None:
    docs = [
        *nm(batchMaxWait="100ms", dedupWindow="1m",
            history={"webhook": {"url": f"http://127.0.0.1:{recorder}/history"}}),
        webhook("team", f"http://127.0.0.1:{recorder}/team", namespace="team-a"),
    ]
    docs[-1]["metadata"]["labels"]["type"] = "tenant"
    worker = configured(broker, tmp_path, prefix, docs).start()
    try:
        wait_usable(worker, 1)
        assert worker.post("/api/v2/alerts", alerts(["disk"], "team-a")).status_code == 200
        assert worker.post("/api/v2/alerts", alerts(["nobody"], "team-z")).status_code == 200
        wait_until(lambda: any(p == "/team" for p, *_ in Recorder.got), "the first delivery")
        assert worker.post("/api/v2/alerts", alerts(["disk"], "team-a")).status_code == 200
        wait_until(lambda: any(p == "/history" for p, *_ in Recorder.got), "the history post")
        history = read_topic(broker, f"{prefix}-sent", expect=3, timeout=20)
    finally:
        worker.stop()
    statuses = Counter(r["value"]["status"] for r in history)
    assert statuses == {"delivered": 1, "filtered": 1, "deduplicated": 1}
    by_status = {r["value"]["status"]: r["value"] for r in history}
    delivered, filtered, dedup = (by_status[s] for s in ("delivered", "filtered", "deduplicated"))
    assert delivered["tenant"] == "team-a" and delivered["received_at"] and delivered["attempts"]
    assert filtered["notification_id"] is None and filtered["receiver"] is None
    assert "dedupWindow" in dedup["error"] and dedup["receiver"]["name"] == "team"
    assert all(r["value"]["schema_version"] == 1 for r in history)
    team = [(nid, body) for path, nid, body, _ in Recorder.got if path == "/team"]
    posted = [body for path, _, body, _ in Recorder.got if path == "/history"]
    assert len(team) == 1 and team[0][0] == delivered["notification_id"]
    assert posted == [delivered]  # the history webhook gets the delivered record, only it


def test_consumer_lag_and_latency_are_exported(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str, recorder: int
) -> None:
    docs = [*nm(batchMaxWait="100ms"), webhook("sink", f"http://127.0.0.1:{recorder}/sink")]
    worker = configured(broker, tmp_path, prefix, docs).start()
    try:
        wait_usable(worker, 1)
        assert worker.post("/api/v2/alerts", alerts(["lag"])).status_code == 200
        wait_until(lambda: len(Recorder.got) == 1, "the delivery")

        def exported() -> bool:
            text = requests.get(f"{worker.url}/metrics", timeout=5).text
            return f'nmstream_consumer_lag{{topic="{prefix}-alerts"}}' in text
        wait_until(exported, "consumer lag of nmstream-alerts", timeout=15)
        count = metric(worker, "nmstream_delivery_latency_seconds_count")
        outcomes = metric(worker, "nmstream_notification_outcomes_total")
    finally:
        worker.stop()
    assert count == 1 and outcomes == 1
