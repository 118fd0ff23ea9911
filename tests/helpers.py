"""Test helpers: nmstream workers as subprocesses, topic readers, the shared payloads."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import requests
import yaml
from aiosmtpd.smtp import AuthResult, LoginPassword
from kafka import KafkaConsumer, TopicPartition

from nmstream.broker import EmbeddedBroker, free_port
from nmstream.channels.webhook import IDEMPOTENCY_HEADER

SMTP_PASSWORD = "smtp-password-4f1c9"
TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"
FAST_GROUP = {
    "NMSTREAM_SESSION_TIMEOUT": "6",
    "NMSTREAM_HEARTBEAT_INTERVAL": "1",
    "NMSTREAM_REBALANCE_TIMEOUT": "6",
}


def payload(name: str) -> bytes:
    """One of the real Alertmanager payloads in ``../shared/testdata``."""
    return (TESTDATA / name).read_bytes()


class Worker:
    """One ``nmstream worker`` process with its own web port, log file and settings."""

    def __init__(self, broker: EmbeddedBroker, workdir: Path, **env: str) -> None:
        self.broker = broker
        self.workdir = workdir
        self.port = free_port()
        self.env = {
            **os.environ,
            **FAST_GROUP,
            "NMSTREAM_BROKER": broker.url,
            "NMSTREAM_WEB_PORT": str(self.port),
            "NMSTREAM_DATA_DIR": str(workdir / "data"),
            **env,
        }
        self.log_path = workdir / f"worker-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the worker's web server."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Worker:
        """Start the worker and wait for ``/-/ready``."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nmstream", "worker", "-l", "info"],
                env=self.env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker not ready in {timeout}s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the worker and wait for it to exit; returns its exit code."""
        process, self.process = self.process, None
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
                raise AssertionError(f"worker ignored signal {sig}:\n{self.log_tail()}") from None
        return process.returncode

    def log_tail(self, lines: int = 60) -> str:
        """The end of the worker's log, for failure messages."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        """The whole log."""
        return self.log_path.read_text(errors="replace")

    def post(self, path: str, body: Any, **kwargs: Any) -> requests.Response:
        """POST a body (bytes, or an iterator for a chunked upload) to the worker."""
        return requests.post(f"{self.url}{path}", data=body, timeout=30, **kwargs)

    def get(self, path: str) -> requests.Response:
        """GET from the worker."""
        return requests.get(f"{self.url}{path}", timeout=10)


def make_worker(broker: EmbeddedBroker, workdir: Path, prefix: str, **env: str) -> Worker:
    """A worker isolated by topic prefix and app id."""
    workdir.mkdir(parents=True, exist_ok=True)
    return Worker(
        broker, workdir, NMSTREAM_TOPIC_PREFIX=prefix, NMSTREAM_APP_ID=f"{prefix}-app", **env
    )


def cli(broker: EmbeddedBroker, prefix: str, *args: str,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the ``nmstream`` command against the test's broker and topics."""
    env = {**os.environ, "NMSTREAM_BROKER": broker.url, "NMSTREAM_TOPIC_PREFIX": prefix}
    return subprocess.run([sys.executable, "-m", "nmstream", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def read_topic(
    broker: EmbeddedBroker,
    topic: str,
    expect: int,
    timeout: float = 30.0,
    settle: float = 2.0,
    raw: bool = False,
) -> list[dict[str, Any]]:
    """Every record of ``topic`` from the beginning, as dicts with key, partition and value
    (parsed JSON, or with ``raw`` the bytes, None for a tombstone).

    Reads until ``expect`` records arrived (or ``timeout``), then keeps polling for
    ``settle`` seconds so that extra records (duplicates) would be seen too.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        group_id=None,
    )
    try:
        deadline = time.monotonic() + timeout
        partitions: set[int] | None = None
        while not partitions and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                time.sleep(0.2)
        assert partitions, f"topic {topic} does not exist"
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        records: list[dict[str, Any]] = []
        settle_until: float | None = None
        while True:
            now = time.monotonic()
            if settle_until is None and (len(records) >= expect or now > deadline):
                settle_until = now + settle
            if settle_until is not None and now > settle_until:
                return records
            for tp, batch in consumer.poll(timeout_ms=200).items():
                for msg in batch:
                    records.append(
                        {
                            "partition": tp.partition,
                            "offset": msg.offset,
                            "key": msg.key.decode() if msg.key else None,
                            "timestamp": msg.timestamp,
                            "value": msg.value if raw else json.loads(msg.value),
                        }
                    )
    finally:
        consumer.close()


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXAMPLE_RECEIVERS = {"global-email-receiver", "global-webhook-receiver",
                     "kube-system-slack-receiver", "auditing-email-receiver"}


def receivers(worker: Worker, tenant: str | None = None) -> dict[str, Any]:
    path = "/api/v2/receivers" + (f"?tenant={tenant}" if tenant else "")
    response = worker.get(path)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_for(worker: Worker, check: Callable[[dict[str, Any]], bool], timeout: float = 20.0,
             tenant: str | None = None) -> dict[str, Any]:
    """Poll /api/v2/receivers until ``check`` holds."""
    deadline = time.monotonic() + timeout
    body = receivers(worker, tenant)
    while not check(body):
        assert time.monotonic() < deadline, f"view never matched: {body}\n{worker.log_tail()}"
        time.sleep(0.2)
        body = receivers(worker, tenant)
    return body


def usable(body: dict[str, Any], expected: set[str] | int) -> bool:
    """Whether the view has exactly these receivers (or this many), each with a config and
    without problem: only then are alerts routed to all of them."""
    receivers = body["receivers"]
    found = names(body) == expected if isinstance(expected, set) else len(receivers) == expected
    return found and all(r["config"] and not r["problem"] for r in receivers)


def wait_usable(worker: Worker, expected: set[str] | int, timeout: float = 30.0) -> None:
    """Wait until :func:`usable` holds for the worker's view."""
    wait_for(worker, lambda b: usable(b, expected), timeout=timeout)


def names(body: dict[str, Any]) -> set[str]:
    return {r["name"] for r in body["receivers"]}


class Sink(BaseHTTPRequestHandler):
    """A webhook receiver that records what it got: it answers 500 for ``/fail``, and for
    ``/flaky`` 500 the first ``flaky_failures`` times, then 200."""

    received: ClassVar[list[tuple[str, dict[str, str], bytes]]] = []
    flaky_failures: ClassVar[int] = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Sink.received.append((self.path, dict(self.headers), body))
        failing = self.path == "/fail"
        if self.path == "/flaky" and Sink.flaky_failures > 0:
            Sink.flaky_failures -= 1
            failing = True
        self.send_response(500 if failing else 200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


class Inbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 OK"


def smtp_auth(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.password == SMTP_PASSWORD.encode()
    return AuthResult(success=ok, handled=False)


def wait_until(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.2)


API = "notification.kubesphere.io/v2alpha1"


class Recorder(BaseHTTPRequestHandler):
    """A webhook receiver that records (path, notification id, body, time) of each request
    as it arrives, and answers ``status[path]`` (default 200) after ``delay[path]`` seconds."""

    got: ClassVar[list[tuple[str, str, dict[str, Any], float]]] = []
    delay: ClassVar[dict[str, float]] = {}
    status: ClassVar[dict[str, int]] = {}
    lock: ClassVar[threading.Lock] = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with Recorder.lock:
            Recorder.got.append((self.path, self.headers.get(IDEMPOTENCY_HEADER, ""),
                                 json.loads(body), time.monotonic()))
        time.sleep(Recorder.delay.get(self.path, 0.0))
        try:
            self.send_response(Recorder.status.get(self.path, 200))
            self.end_headers()
        except OSError:  # the sender gave up (its timeout): the answer has nowhere to go
            pass

    def log_message(self, *args: Any) -> None:
        return


def nm(**spec: Any) -> list[dict[str, Any]]:
    """A NotificationManager (tenant key namespace) and a default webhook config."""
    return [
        {"apiVersion": API, "kind": "NotificationManager", "metadata": {"name": "nm"},
         "spec": {"receivers": {"tenantKey": "namespace"}, **spec}},
        {"apiVersion": API, "kind": "WebhookConfig",
         "metadata": {"name": "hook", "labels": {"type": "default"}}},
    ]


def webhook(name: str, url: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "WebhookReceiver",
            "metadata": {"name": name, "labels": {"type": "global", **labels}},
            "spec": {"url": url}}


def configured(broker: EmbeddedBroker, tmp_path: Path, prefix: str, docs: list[dict[str, Any]],
               **env: str) -> Worker:
    directory = tmp_path / "config"
    directory.mkdir(exist_ok=True)
    (directory / "config.yaml").write_text(yaml.safe_dump_all(docs))
    return make_worker(broker, tmp_path, prefix, NMSTREAM_CONFIG_DIR=str(directory), **env)


def alerts(names: list[str], namespace: str = "default") -> bytes:
    """One webhook post with one firing alert per name (each its own group)."""
    return json.dumps({
        "receiver": "nmstream", "status": "firing", "version": "4", "groupKey": "{}:{}",
        "alerts": [{"status": "firing", "labels": {"alertname": n, "namespace": namespace},
                    "annotations": {"summary": n}, "startsAt": "2026-11-24T00:00:00Z"}
                   for n in names],
    }).encode()


def metric(worker: Worker, name: str) -> float:
    """Sum of a counter's series in the worker's /metrics."""
    text = worker.get("/metrics").text
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))
