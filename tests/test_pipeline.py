"""Route → group → render through a running worker and the real broker."""

from __future__ import annotations

import json
import shutil
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.partitioner.default import murmur2
from kafka.structs import OffsetAndMetadata

from nmstream.broker import EmbeddedBroker
from nmstream.ingest.models import Alert, AlertRecord, GroupContext, utcnow
from tests.helpers import (
    EXAMPLES,
    Worker,
    cli,
    make_worker,
    payload,
    read_topic,
    wait_usable,
)

MANAGER = EXAMPLES / "notification-manager.yaml"


def config_with(tmp_path: Path, **spec: Any) -> Path:
    """A copy of ``examples/`` whose NotificationManager spec gets ``spec`` merged in."""
    directory = tmp_path / "config"
    shutil.copytree(EXAMPLES, directory)
    manager = yaml.safe_load(MANAGER.read_text())
    manager["spec"].update(spec)
    (directory / MANAGER.name).write_text(yaml.safe_dump(manager))
    return directory


def start(broker: EmbeddedBroker, tmp_path: Path, prefix: str, directory: Path) -> Worker:
    worker = make_worker(broker, tmp_path, prefix, NMSTREAM_CONFIG_DIR=str(directory)).start()
    wait_usable(worker, 4)
    return worker


def notifications(broker: EmbeddedBroker, prefix: str, channel: str, expect: int,
                  timeout: float = 30.0) -> list[dict[str, Any]]:
    return [r["value"] for r in read_topic(broker, f"{prefix}-notify-{channel}", expect,
                                           timeout=timeout)]


def test_alert_json_becomes_email_slack_and_webhook_notifications(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str
) -> None:
    worker = start(broker, tmp_path, prefix, config_with(tmp_path))
    try:
        assert worker.post("/api/v2/alerts", payload("alert.json")).status_code == 200
        fingerprints = {a["fingerprint"] for a in json.loads(payload("alert.json"))["alerts"]}

        (email,) = notifications(broker, prefix, "email", 1)
        assert email["receiver"]["name"] == "global-email-receiver"  # auditing one filtered
        assert email["receiver"]["targets"] == {"to": ["oncall@example.org"]}
        assert email["subject"] == (
            "9 alerts for  alertname=CPUThrottlingHigh  namespace=kube-system ")
        assert email["body"].startswith("<!DOCTYPE html>")
        assert set(email["fingerprints"]) == fingerprints

        (slack,) = notifications(broker, prefix, "slack", 1)
        assert slack["receiver"]["tenant"] == "kube-system"
        assert slack["receiver"]["config_name"] == "default-slack-config"
        assert slack["body"].startswith("9 alerts for  alertname=CPUThrottlingHigh")
        assert slack["body"].count("Labels:") == 9

        (webhook,) = notifications(broker, prefix, "webhook", 1)
        body = json.loads(webhook["body"])
        assert body["version"] == "4" and len(body["alerts"]) == 9
        assert {a["fingerprint"] for a in body["alerts"]} == fingerprints

        for record in (email, slack, webhook):
            assert record["schema_version"] == 1 and len(record["id"]) == 32
            assert (record["part"], record["parts"], record["attempt"]) == (1, 1, 0)
    finally:
        worker.stop()


def test_alert_selector_and_no_namespace_routing(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str
) -> None:
    worker = start(broker, tmp_path, prefix, config_with(tmp_path))
    try:
        assert worker.post("/api/v2/alerts", payload("alert-auditing.json")).status_code == 200
        emails = notifications(broker, prefix, "email", 2)
        by_receiver = {e["receiver"]["name"]: e for e in emails}
        assert set(by_receiver) == {"global-email-receiver", "auditing-email-receiver"}
        assert len(by_receiver["auditing-email-receiver"]["fingerprints"]) == 6
        assert notifications(broker, prefix, "slack", 0, timeout=3) == []  # no namespace
    finally:
        worker.stop()


def test_groups_flush_at_batch_max_wait_and_batch_max_size(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str
) -> None:
    directory = config_with(tmp_path, batchMaxWait="2s", batchMaxSize=3)
    worker = start(broker, tmp_path, prefix, directory)

    def alerts(*names: str) -> bytes:
        return json.dumps({"alerts": [
            {"labels": {"alertname": "Grouped", "namespace": "team", "pod": n}}
            for n in names]}).encode()

    try:
        started = time.monotonic()
        assert worker.post("/api/v2/alerts", alerts("a")).status_code == 200
        time.sleep(0.5)
        assert worker.post("/api/v2/alerts", alerts("b")).status_code == 200
        found = notifications(broker, prefix, "webhook", 1)
        waited = time.monotonic() - started
        assert len(found) == 1, "one group expected, found: " + "; ".join(
            f"{n['id']} {n['fingerprints']} received {n['received_at']} created {n['created_at']}"
            for n in found)
        (first,) = found
        assert len(first["fingerprints"]) == 2, "alerts within batchMaxWait are one group"
        assert waited >= 2.0

        assert worker.post("/api/v2/alerts", alerts(*"cdefghi")).status_code == 200
        # the topic has 4 partitions: records come back in partition order, not time order
        sizes = sorted(len(n["fingerprints"]) for n in notifications(broker, prefix, "webhook", 4)
                       if n["id"] != first["id"])
        assert sizes == [1, 3, 3]
    finally:
        worker.stop()


def test_a_router_reading_alerts_late_still_groups_those_received_within_batch_max_wait(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str
) -> None:
    """Alerts 0.5 s apart, read only once their group is long due, and in different fetches
    (1,200 alerts of another group lie between them): still one notification."""
    topic = f"{prefix}-alerts"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(topic, 4, 1)])
    admin.close()
    received = utcnow()

    def record(name: str, pod: str, later: float) -> AlertRecord:
        labels = {"alertname": name, "namespace": "team", "pod": pod}
        return AlertRecord.build(Alert(labels=labels), GroupContext(), "earlier",
                                 received + timedelta(seconds=later))

    first, last = record("Grouped", "a", 0.0), record("Grouped", "b", 0.5)
    others = [record("Other", str(i), 0.1) for i in range(1200)]
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for r in (first, *others, last):  # one partition: the router reads them in this order
        producer.send(topic, key=r.fingerprint.encode(), value=r.to_bytes(), partition=0)
    producer.flush(timeout=30)
    producer.close()

    worker = start(broker, tmp_path, prefix, config_with(tmp_path, batchMaxWait="2s"))
    try:
        webhooks = notifications(broker, prefix, "webhook", 1 + 12)
        kept_open = next(float(line.split()[1]) for line in worker.get("/metrics").text.splitlines()
                         if line.startswith("nmstream_groups_kept_open_total"))
    finally:
        worker.stop()
    assert kept_open >= 1
    grouped = [w for w in webhooks if w["group_labels"]["alertname"] == "Grouped"]
    assert [sorted(w["fingerprints"]) for w in grouped] == [
        sorted([first.fingerprint, last.fingerprint])]
    assert sum(len(w["fingerprints"]) for w in webhooks) == 2 + 1200


def test_group_pending_at_a_crash_is_delivered_after_restart(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str
) -> None:
    directory = config_with(tmp_path, batchMaxWait="4s")
    worker = start(broker, tmp_path, prefix, directory)
    assert worker.post("/api/v2/alerts", payload("alert1.json")).status_code == 200
    time.sleep(1.5)  # routed, waiting in its group
    worker.stop(signal.SIGKILL)
    assert notifications(broker, prefix, "webhook", 0, timeout=1) == []
    worker = start(broker, tmp_path, prefix, directory)
    try:
        (webhook,) = notifications(broker, prefix, "webhook", 1, timeout=40)
        assert webhook["fingerprints"] == ["a4c6c4f7a49ca0ae"]
    finally:
        worker.stop()


def test_a_broken_user_template_goes_to_the_dead_letter_topic(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "broken.j2").write_text("{{ no_such_thing.at_all }}")
    directory = config_with(tmp_path, receivers={
        **yaml.safe_load(MANAGER.read_text())["spec"]["receivers"],
        "options": {"global": {"templateFile": [str(templates)]},
                    "webhook": {"template": "broken"}},
    })
    worker = start(broker, tmp_path, prefix, directory)
    try:
        assert worker.post("/api/v2/alerts", payload("alert1.json")).status_code == 200
        (letter,) = [r["value"] for r in read_topic(broker, f"{prefix}-dlq-webhook", 1)]
        assert letter["stage"] == "render"
        assert "'broken'" in letter["error"] and "UndefinedError" in letter["error"]
        assert [a["fingerprint"] for a in letter["group"]["alerts"]] == ["a4c6c4f7a49ca0ae"]
        assert len(notifications(broker, prefix, "email", 1)) == 1  # other channels unharmed
        assert worker.get("/-/healthy").status_code == 200
        assert notifications(broker, prefix, "webhook", 0, timeout=1) == []

        # the template fixed, the dead letter replayed: rendered with the fixed template
        (templates / "broken.j2").write_text("fixed: {{ alerts | length }} alert(s)")
        replay = cli(broker, prefix, "replay", "--topic", "dlq-webhook", "--from", "1h",
                     "--reprocess")
        assert replay.returncode == 0 and "re-injected 1 of 1" in replay.stderr, replay.stderr
        (webhook,) = notifications(broker, prefix, "webhook", 1)
        assert webhook["body"] == "fixed: 1 alert(s)"
        assert webhook["fingerprints"] == ["a4c6c4f7a49ca0ae"]
    finally:
        worker.stop()


def test_an_ha_pair_posting_twice_gives_one_notification_even_across_a_restart(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str
) -> None:
    directory = config_with(tmp_path, batchMaxWait="1s")
    worker = start(broker, tmp_path, prefix, directory)
    try:
        # two Alertmanagers of an HA pair send the same group
        assert worker.post("/api/v2/alerts", payload("alert1.json")).status_code == 200
        assert worker.post("/api/v2/alerts", payload("alert1.json")).status_code == 200
        (first,) = notifications(broker, prefix, "webhook", 1)
        assert first["statuses"] == {"a4c6c4f7a49ca0ae": "firing"}
        # the second one of the pair is a few seconds late: still a repeat
        time.sleep(1.5)
        assert worker.post("/api/v2/alerts", payload("alert1.json")).status_code == 200

        def deduplicated() -> float:
            return float(next(
                line.split()[1] for line in worker.get("/metrics").text.splitlines()
                if line.startswith("nmstream_alerts_deduplicated_total")))

        deadline = time.monotonic() + 30
        while deduplicated() < 4:
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.2)
        time.sleep(1)
        assert deduplicated() == 2 * 2  # two repeats, each for the global email and webhook
        assert len(notifications(broker, prefix, "email", 1)) == 1
    finally:
        worker.stop()

    # a restarted worker rebuilds what was sent and still drops the repeat...
    worker = start(broker, tmp_path, prefix, directory)
    try:
        assert worker.post("/api/v2/alerts", payload("alert1.json")).status_code == 200
        # ...while a status change is new
        resolved = json.loads(payload("alert1.json"))
        resolved["alerts"][0]["status"] = "resolved"
        assert worker.post("/api/v2/alerts", json.dumps(resolved).encode()).status_code == 200
        webhooks = notifications(broker, prefix, "webhook", 2)
        # in partition order, not time order
        assert sorted((w["statuses"] for w in webhooks), key=json.dumps) == [
            {"a4c6c4f7a49ca0ae": "firing"}, {"a4c6c4f7a49ca0ae": "resolved"}]
    finally:
        worker.stop()


def test_group_labels_choose_the_partition_of_alerts_and_their_notifications(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str
) -> None:
    directory = config_with(tmp_path, groupLabels=["severity"], batchMaxWait="1s")
    worker = start(broker, tmp_path, prefix, directory)
    names = [f"Disk{i}" for i in range(8)]
    body = json.dumps({"alerts": [
        {"labels": {"alertname": n, "namespace": "team", "severity": s}}
        for n in names for s in ("critical", "warning")]}).encode()
    try:
        assert worker.post("/api/v2/alerts", body).status_code == 200
        webhooks = notifications(broker, prefix, "webhook", 2)
    finally:
        worker.stop()
    # one notification per severity, whatever the alertname
    assert sorted(len(n["fingerprints"]) for n in webhooks) == [8, 8]
    assert {n["group_labels"]["severity"] for n in webhooks} == {"critical", "warning"}
    alerts = read_topic(broker, f"{prefix}-alerts", 16, settle=0.5)
    partition_of: dict[str, int] = {}
    for r in alerts:
        severity = r["value"]["alert"]["labels"]["severity"]
        assert partition_of.setdefault(severity, r["partition"]) == r["partition"]
        # Kafka's default partitioner (kafka-python's murmur2) over the group label values,
        # among the 4 partitions of NMSTREAM_PARTITIONS' default
        assert r["partition"] == (murmur2(severity.encode()) & 0x7FFFFFFF) % 4
    by_fingerprint = {r["value"]["fingerprint"]: r["partition"] for r in alerts}
    # each notification on the partition number of its alerts (the router's dedup state of a
    # partition is rebuilt from there)
    written = read_topic(broker, f"{prefix}-notify-webhook", 2, settle=0.5)
    assert len(written) == 2
    for notification in written:
        assert {by_fingerprint[f] for f in notification["value"]["fingerprints"]} == {
            notification["partition"]}


def test_an_upgraded_worker_routes_from_where_the_faust_group_left_off(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str
) -> None:
    """Before the router had its own consumer group, Faust's (the app id) read the alerts:
    a router group without commits starts there, not at the alerts Kafka still retains."""
    topic = f"{prefix}-alerts"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(topic, 4, 1)])
    admin.close()
    handled = AlertRecord.build(Alert(labels={"alertname": "Handled", "namespace": "team"}),
                                GroupContext(), "earlier", utcnow())
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for partition in range(4):
        producer.send(topic, key=handled.fingerprint.encode(), value=handled.to_bytes(),
                      partition=partition).get(timeout=10)
    producer.close()
    faust_group = KafkaConsumer(bootstrap_servers=broker.bootstrap,
                                group_id=f"{prefix}-app", enable_auto_commit=False)
    faust_group.commit({TopicPartition(topic, p): OffsetAndMetadata(1, "", -1)
                        for p in range(4)})
    faust_group.close()

    worker = start(broker, tmp_path, prefix, config_with(tmp_path, batchMaxWait="1s"))
    try:
        new = {"alerts": [{"labels": {"alertname": "New", "namespace": "team"}}]}
        assert worker.post("/api/v2/alerts", json.dumps(new).encode()).status_code == 200
        webhooks = notifications(broker, prefix, "webhook", 1)
    finally:
        worker.stop()
    assert [w["group_labels"]["alertname"] for w in webhooks] == ["New"]
