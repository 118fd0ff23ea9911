"""With a real Prometheus Alertmanager: alerts posted to its API flow through nmstream to a real
SMTP server and a loopback webhook, firing then resolved, for the right tenant only. And two
workers sharing the partitions: one is killed, nothing is lost."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from nmstream.broker import EmbeddedBroker, free_port
from tests.helpers import Inbox, Sink, Worker, make_worker, wait_until, wait_usable

API = "notification.kubesphere.io/v2alpha1"


def alertmanager_binary() -> str:
    """Debian's prometheus-alertmanager, installed on the fly where possible."""
    found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"],
                        ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                         "prometheus-alertmanager"]):
            subprocess.run(command, env=env, capture_output=True, timeout=300, check=False)
        found = shutil.which("prometheus-alertmanager")
        if found:
            return found
    pytest.skip("prometheus-alertmanager is not installed and cannot be installed here "
                "(needs root and Debian's apt); install it to run this test")


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """An Alertmanager on loopback; ``configure(url)`` points its webhook at nmstream."""
    binary = alertmanager_binary()
    port = free_port()
    config = tmp_path / "alertmanager.yml"
    process: subprocess.Popen[bytes] | None = None

    def configure(webhook_url: str) -> None:
        nonlocal process
        config.write_text(yaml.safe_dump({
            "route": {"receiver": "nmstream", "group_by": ["alertname", "namespace"],
                      "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "nmstream", "webhook_configs": [
                {"url": webhook_url, "send_resolved": True}]}],
        }))
        log = (tmp_path / "alertmanager.log").open("wb")
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.path={tmp_path / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/-/ready", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, (tmp_path / "alertmanager.log").read_text()
            time.sleep(0.2)

    yield f"http://127.0.0.1:{port}", configure
    if process is not None:
        process.terminate()
        process.wait(10)


def tenant_config(directory: Path, webhook_port: int, smtp_port: int) -> None:
    directory.mkdir()
    docs: list[dict[str, Any]] = [
        {"apiVersion": API, "kind": "NotificationManager", "metadata": {"name": "nm"},
         "spec": {"receivers": {"tenantKey": "namespace"}, "batchMaxWait": "500ms"}},
        {"apiVersion": API, "kind": "EmailConfig",
         "metadata": {"name": "mail", "labels": {"type": "default"}},
         "spec": {"from": "nm@example.org", "smartHost": {"host": "127.0.0.1",
                                                         "port": smtp_port}}},
        {"apiVersion": API, "kind": "WebhookConfig",
         "metadata": {"name": "hook", "labels": {"type": "default"}}},
        {"apiVersion": API, "kind": "WebhookReceiver",
         "metadata": {"name": "team-a", "labels": {"type": "tenant", "namespace": "team-a"}},
         "spec": {"url": f"http://127.0.0.1:{webhook_port}/team-a"}},
        {"apiVersion": API, "kind": "EmailReceiver",
         "metadata": {"name": "team-b", "labels": {"type": "tenant", "namespace": "team-b"}},
         "spec": {"to": ["team-b@example.org"]}},
    ]
    (directory / "tenants.yaml").write_text(yaml.safe_dump_all(docs))


def worker_for(broker: EmbeddedBroker, tmp_path: Path, prefix: str, directory: Path,
               name: str = "w") -> Worker:
    worker = make_worker(broker, tmp_path / name, prefix, NMSTREAM_CONFIG_DIR=str(directory))
    worker.start()
    wait_usable(worker, 2)
    return worker


def post_to_alertmanager(am: str, alerts: list[dict[str, Any]]) -> None:
    response = requests.post(f"{am}/api/v2/alerts", json=alerts, timeout=10)
    assert response.status_code == 200, response.text


@pytest.mark.timeout(600)  # may install Alertmanager with apt first
def test_real_alertmanager_firing_then_resolved_for_the_right_tenant(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str,
    sinks: tuple[int, Any, Inbox], alertmanager: tuple[str, Any],
) -> None:
    webhook_port, smtp, inbox = sinks
    tenant_config(tmp_path / "config", webhook_port, smtp.port)
    worker = worker_for(broker, tmp_path, prefix, tmp_path / "config")
    am, configure = alertmanager
    configure(f"{worker.url}/api/v2/alerts")
    try:
        start = datetime.now(UTC)
        firing = {"labels": {"alertname": "DiskFull", "namespace": "team-a", "pod": "db-0"},
                  "annotations": {"message": "disk 97% full"},
                  "startsAt": start.isoformat()}
        post_to_alertmanager(am, [firing])
        wait_until(lambda: Sink.received, "team-a's webhook got the firing alert", 30)
        (path, _, body) = Sink.received[0]
        assert path == "/team-a"
        sent = json.loads(body)
        assert sent["status"] == "firing"
        assert sent["alerts"][0]["labels"]["pod"] == "db-0"

        resolved = {**firing, "endsAt": (datetime.now(UTC) - timedelta(seconds=1)).isoformat()}
        post_to_alertmanager(am, [resolved])
        wait_until(lambda: len(Sink.received) >= 2, "the resolved notification", 30)
        assert json.loads(Sink.received[1][2])["status"] == "resolved"

        post_to_alertmanager(am, [{"labels": {"alertname": "Slow", "namespace": "team-b"},
                                   "startsAt": start.isoformat()}])
        wait_until(lambda: inbox.messages, "team-b's email", 30)
        assert b"alertname=Slow" in inbox.messages[0]
        time.sleep(1)
        assert all(p == "/team-a" for p, _, _ in Sink.received)  # team-b never reaches team-a
        assert len(Sink.received) == 2
        assert b"DiskFull" not in b"".join(inbox.messages)  # and team-a never reaches team-b
    finally:
        worker.stop()


def test_two_workers_share_the_work_and_a_killed_one_loses_nothing(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str, sinks: tuple[int, Any, Inbox],
) -> None:
    webhook_port, smtp, _ = sinks
    tenant_config(tmp_path / "config", webhook_port, smtp.port)
    first = worker_for(broker, tmp_path, prefix, tmp_path / "config", "a")
    second = worker_for(broker, tmp_path, prefix, tmp_path / "config", "b")
    expected: set[str] = set()
    try:
        time.sleep(8)  # let the group settle with both members
        for batch in range(20):
            alerts = [{"labels": {"alertname": f"Load{batch}", "namespace": "team-a",
                                  "pod": f"p{i}"}} for i in range(5)]
            target = second if batch < 10 and batch % 2 else first  # both ingest until the kill
            response = target.post("/api/v2/alerts", json.dumps({"alerts": alerts}).encode())
            assert response.status_code == 200
            expected |= {f"Load{batch}/p{i}" for i in range(5)}
            if batch == 9:
                second.stop(signal.SIGKILL)  # mid-stream: its partitions move to the first
        def delivered() -> set[str]:
            return {f"{a['labels']['alertname']}/{a['labels']['pod']}"
                    for _, _, body in list(Sink.received) for a in json.loads(body)["alerts"]}
        wait_until(lambda: delivered() >= expected, "every alert delivered", 90)
        assert delivered() == expected
    finally:
        first.stop()
        second.stop()
