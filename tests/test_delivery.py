"""Delivery end to end: alerts → worker → real SMTP server and loopback webhook; verify API,
``nmstream send-test``; and no secret value in any log or topic record."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from aiosmtpd.controller import Controller
from kafka import KafkaConsumer

from nmstream.broker import EmbeddedBroker
from tests.helpers import (
    SMTP_PASSWORD,
    Inbox,
    Sink,
    Worker,
    make_worker,
    payload,
    wait_until,
    wait_usable,
)

BEARER = "bearer-token-8d2e7"
API = "notification.kubesphere.io/v2alpha1"


def write_config(directory: Path, webhook_port: int, smtp_port: int) -> None:
    directory.mkdir()
    docs: list[dict[str, Any]] = [
        {"apiVersion": API, "kind": "NotificationManager", "metadata": {"name": "nm"},
         "spec": {"receivers": {"tenantKey": "namespace"}, "batchMaxWait": "500ms"}},
        {"apiVersion": API, "kind": "EmailConfig",
         "metadata": {"name": "mail", "labels": {"type": "default"}},
         "spec": {"from": "nm@example.org", "authUsername": "nm",
                  "authPassword": {"name": "mail-secret", "key": "password"},
                  "smartHost": {"host": "127.0.0.1", "port": smtp_port}}},
        {"apiVersion": API, "kind": "WebhookConfig",
         "metadata": {"name": "hook", "labels": {"type": "default"}}},
        {"apiVersion": API, "kind": "EmailReceiver",
         "metadata": {"name": "oncall", "labels": {"type": "global"}},
         "spec": {"to": ["oncall@example.org"]}},
        {"apiVersion": API, "kind": "WebhookReceiver",
         "metadata": {"name": "sink", "labels": {"type": "tenant", "namespace": "kube-system"}},
         "spec": {"url": f"http://127.0.0.1:{webhook_port}/alerts",
                  "httpConfig": {"bearerToken": {"name": "hook-secret", "key": "token"}}}},
        {"apiVersion": API, "kind": "WebhookReceiver",
         "metadata": {"name": "broken-sink", "labels": {"type": "global"}},
         "spec": {"url": f"http://127.0.0.1:{webhook_port}/fail",
                  "httpConfig": {"bearerToken": {"name": "hook-secret", "key": "token"}}}},
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": "mail-secret", "namespace": "kubesphere-monitoring-system"},
         "stringData": {"password": SMTP_PASSWORD}},
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": "hook-secret", "namespace": "kubesphere-monitoring-system"},
         "stringData": {"token": BEARER}},
    ]
    (directory / "config.yaml").write_text(yaml.safe_dump_all(docs))


def started(broker: EmbeddedBroker, tmp_path: Path, prefix: str,
            sinks: tuple[int, Controller, Inbox]) -> Worker:
    webhook_port, smtp, _ = sinks
    write_config(tmp_path / "config", webhook_port, smtp.port)
    worker = make_worker(broker, tmp_path, prefix,
                         NMSTREAM_CONFIG_DIR=str(tmp_path / "config")).start()
    wait_usable(worker, 3)
    return worker


def test_alerts_reach_the_smtp_server_and_the_webhook(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str, sinks: tuple[int, Controller, Inbox]
) -> None:
    _, _, inbox = sinks
    worker = started(broker, tmp_path, prefix, sinks)
    try:
        assert worker.post("/api/v2/alerts", payload("alert.json")).status_code == 200
        wait_until(lambda: inbox.messages and any(p == "/alerts" for p, _, _ in Sink.received),
                   "email and webhook delivered")
        (mail,) = inbox.messages
        assert b"Subject: 9 alerts for  alertname=CPUThrottlingHigh" in mail
        (_, headers, body) = next(r for r in Sink.received if r[0] == "/alerts")
        assert headers["Authorization"] == f"Bearer {BEARER}"
        assert len(json.loads(body)["alerts"]) == 9
        wait_until(lambda: "retrying after 1 attempt(s) (HTTP 500" in worker.log_text(),
                   "the failure logged and scheduled for a retry")
        metrics = worker.get("/metrics").text
        assert 'nmstream_notifications_sent_total{channel="email",outcome="delivered"} 1.0' in (
            metrics)
        retried = next(line for line in metrics.splitlines() if line.startswith(
            'nmstream_notifications_sent_total{channel="webhook",outcome="retryable"}'))
        assert float(retried.split()[1]) >= 1
    finally:
        worker.stop()
    assert_no_secret_anywhere(broker, prefix, worker)


def test_verify_api_and_send_test_command(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str, sinks: tuple[int, Controller, Inbox]
) -> None:
    _, smtp, inbox = sinks
    worker = started(broker, tmp_path, prefix, sinks)
    try:
        answer = worker.post("/api/v2/verify", json.dumps({"receiver": "sink"}).encode())
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "delivered"
        (path, _, body) = Sink.received[-1]
        assert path == "/alerts"
        assert json.loads(body)["alerts"][0]["labels"]["alertname"] == "NotificationVerify"

        failing = worker.post("/api/v2/verify", json.dumps({"receiver": "broken-sink"}).encode())
        assert failing.status_code == 502 and failing.json()["status"] == "retryable"
        missing = worker.post("/api/v2/verify", json.dumps({"receiver": "nobody"}).encode())
        assert missing.status_code == 404
        assert worker.post("/api/v2/verify", b"{").status_code == 400

        unsaved: dict[str, Any] = {"receiver": {"apiVersion": API, "kind": "EmailReceiver",
                                "metadata": {"name": "try-me"}, "spec": {"to": ["t@x.org"]}},
                   "config": {"apiVersion": API, "kind": "EmailConfig",
                              "metadata": {"name": "try"},
                              "spec": {"from": "a@x.org", "smartHost": {
                                  "host": "127.0.0.1", "port": smtp.port}}}}
        answer = worker.post("/api/v2/verify", json.dumps(unsaved).encode())
        assert answer.status_code == 200, answer.text
        assert b"NotificationVerify" in inbox.messages[-1]
        unsaved["config"]["spec"].pop("smartHost")
        bad = worker.post("/api/v2/verify", json.dumps(unsaved).encode())
        assert bad.status_code == 400 and "smartHost" in bad.json()["error"]

        result = subprocess.run(
            [sys.executable, "-m", "nmstream", "send-test", "--receiver", "oncall",
             "--url", worker.url], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(result.stdout)["status"] == "delivered"
        result = subprocess.run(
            [sys.executable, "-m", "nmstream", "send-test", "--receiver", "broken-sink",
             "--url", worker.url], capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and "HTTP 500" in result.stdout
    finally:
        worker.stop()
    assert_no_secret_anywhere(broker, prefix, worker)


def assert_no_secret_anywhere(broker: EmbeddedBroker, prefix: str, worker: Worker) -> None:
    """Neither the worker's log nor any record of the test's topics holds a secret value."""
    secrets = [s.encode() for s in (SMTP_PASSWORD, BEARER)]
    secrets += [base64.b64encode(s) for s in secrets]
    log = worker.log_text().encode()
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=3000, group_id=None)
    topics = sorted(t for t in consumer.topics() if t.startswith(prefix))
    assert f"{prefix}-notify-webhook" in topics and f"{prefix}-config" in topics
    consumer.subscribe(topics)
    records = [(m.key or b"") + (m.value or b"") for m in consumer]
    consumer.close()
    assert any(r.startswith(b"Secret/") for r in records)  # the config topic was read
    for secret in secrets:
        assert secret not in log
        assert not [r for r in records if secret in r]
