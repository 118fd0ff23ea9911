"""Shared parts of the end-to-end benchmarks: a recording webhook sink, an nmstream worker with
one global webhook receiver, a real Alertmanager, the alert load and RSS readings.

Run as a script, this module is the sink: ``python bench/common.py PORT``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

API = "notification.kubesphere.io/v2alpha1"
RECEIVER = "bench-webhook"
SINK_PATH = "/hook"
FAST_GROUP = {"NMSTREAM_SESSION_TIMEOUT": "6", "NMSTREAM_HEARTBEAT_INTERVAL": "1",
              "NMSTREAM_REBALANCE_TIMEOUT": "6"}


# --- the sink -------------------------------------------------------------------------------


def sink_app() -> web.Application:
    """Records the first arrival (wall clock) of every alert, identified by its ``seq`` label."""
    arrivals: dict[str, float] = {}
    counts = {"notifications": 0, "deliveries": 0}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        alerts = json.loads(body)["alerts"]
        for alert in alerts:
            arrivals.setdefault(alert["labels"].get("seq", ""), now)
        counts["notifications"] += 1
        counts["deliveries"] += len(alerts)
        return web.json_response({})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"alerts": len(arrivals), **counts})

    async def dump(request: web.Request) -> web.Response:
        return web.json_response(arrivals)

    async def reset(request: web.Request) -> web.Response:
        arrivals.clear()
        counts.update(notifications=0, deliveries=0)
        return web.json_response({})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post(SINK_PATH, hook)
    app.router.add_get("/stats", stats)
    app.router.add_get("/arrivals", dump)
    app.router.add_post("/reset", reset)
    app.router.add_get("/-/ready", stats)
    return app


class Sink:
    """The sink as a child process on loopback."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.port = port
        self.log = workdir / "sink.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen([sys.executable, __file__, str(port)],
                                            stdout=log, stderr=subprocess.STDOUT)
        wait_ready(f"{self.base}/-/ready", self.process, self.log, 30)

    @property
    def base(self) -> str:
        """Base URL of the sink."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """Where webhooks are to post."""
        return self.base + SINK_PATH

    def stats(self) -> dict[str, int]:
        """Distinct alerts, notifications and alert deliveries so far."""
        return dict(get_json(f"{self.base}/stats"))

    def arrivals(self) -> dict[str, float]:
        """First arrival time of each alert by ``seq``."""
        return dict(get_json(f"{self.base}/arrivals"))

    def reset(self) -> None:
        """Forget everything received."""
        urllib.request.urlopen(urllib.request.Request(f"{self.base}/reset", method="POST"),
                               timeout=10).close()

    def wait_for(self, expected: int, timeout: float) -> float | None:
        """Wait until ``expected`` distinct alerts arrived; the time they all had, or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stats()["alerts"] >= expected:
                return time.monotonic()
            time.sleep(0.05)
        return None

    def stop(self) -> None:
        """Terminate the sink."""
        stop(self.process)


# --- processes ------------------------------------------------------------------------------


def get_json(url: str) -> Any:
    """GET ``url`` and parse its JSON answer."""
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Poll ``url`` until 200, or exit with the process log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"{url} not ready:\n{log.read_text(errors='replace')[-4000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then kill after 20 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def rss_mib(pid: int, field_name: str = "VmRSS") -> float:
    """Resident memory of a process from /proc (``VmHWM`` for its peak), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_config(directory: Path, sink_url: str, batch_wait: float, tenants: int = 0) -> None:
    """CRs for one global webhook receiver posting to the sink, grouping as nmstream defaults,
    and ``tenants`` tenant webhook receivers (namespaces ``tenant-<i>``, see
    :func:`tenant_namespace`), which the load's alerts (namespace ``bench``) never reach."""
    directory.mkdir(parents=True, exist_ok=True)
    docs: list[dict[str, Any]] = [
        {"apiVersion": API, "kind": "NotificationManager", "metadata": {"name": "nm"},
         "spec": {"receivers": {"tenantKey": "namespace"},
                  "groupLabels": ["alertname", "namespace"],
                  "batchMaxWait": f"{int(batch_wait * 1000)}ms"}},
        {"apiVersion": API, "kind": "WebhookConfig",
         "metadata": {"name": "hook", "labels": {"type": "default"}}},
        {"apiVersion": API, "kind": "WebhookReceiver",
         "metadata": {"name": RECEIVER, "labels": {"type": "global"}},
         "spec": {"url": sink_url}},
    ]
    docs += [{"apiVersion": API, "kind": "WebhookReceiver",
              "metadata": {"name": tenant_namespace(i),
                           "labels": {"type": "tenant", "namespace": tenant_namespace(i)}},
              "spec": {"url": sink_url}} for i in range(tenants)]
    (directory / "bench.yaml").write_text(yaml.safe_dump_all(docs))


def tenant_namespace(i: int) -> str:
    """The namespace of the benchmark's ``i``-th tenant (and its receiver's name)."""
    return f"tenant-{i}"


class Worker:
    """One ``nmstream worker`` process reading its receivers from a config directory."""

    def __init__(self, workdir: Path, broker_url: str, port: int, config_dir: Path) -> None:
        self.port = port
        self.log = workdir / "worker.log"
        env = {**os.environ, **FAST_GROUP, "NMSTREAM_BROKER": broker_url,
               "NMSTREAM_WEB_PORT": str(port), "NMSTREAM_DATA_DIR": str(workdir / "data"),
               "NMSTREAM_TOPIC_PREFIX": "bench", "NMSTREAM_CONFIG_DIR": str(config_dir)}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nmstream", "worker", "-l", "warn"],
                env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)

    @property
    def base(self) -> str:
        """Base URL of the worker."""
        return f"http://127.0.0.1:{self.port}"

    def wait_usable(self, timeout: float = 60.0) -> None:
        """Ready, and the bench receiver is in the view with a config and no problem."""
        wait_ready(f"{self.base}/-/ready", self.process, self.log, timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            view = get_json(f"{self.base}/api/v2/receivers")
            if any(r["name"] == RECEIVER and r["config"] and not r["problem"]
                   for r in view["receivers"]):
                return
            time.sleep(0.2)
        sys.exit(f"receiver {RECEIVER} never usable:\n{self.log.read_text()[-4000:]}")

    def metric(self, name: str) -> float:
        """The sum of a metric's samples on ``/metrics`` (0 when absent)."""
        with urllib.request.urlopen(f"{self.base}/metrics", timeout=30) as response:
            text = response.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith((name + " ", name + "{")))

    def stop(self) -> None:
        """Terminate the worker."""
        stop(self.process)


def alertmanager_binary() -> str | None:
    """Debian's prometheus-alertmanager, installed on the fly where possible (as
    ``tests/test_alertmanager_e2e.py`` does); None when it cannot be had."""
    found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                     "prometheus-alertmanager"]):
        subprocess.run(command, env=env, capture_output=True, timeout=300, check=False)
    return shutil.which("prometheus-alertmanager")


class Alertmanager:
    """A real Alertmanager on loopback with one webhook receiver, the sink, and as
    :func:`write_config`'s tenants, a route and a webhook receiver per tenant namespace."""

    def __init__(self, binary: str, workdir: Path, port: int, sink_url: str,
                 batch_wait: float, group_interval: str, tenants: int = 0) -> None:
        self.port = port
        wait = f"{int(batch_wait * 1000)}ms"
        config = workdir / "alertmanager.yml"
        hook = {"url": sink_url, "send_resolved": False}
        config.write_text(yaml.safe_dump({
            "route": {"receiver": "sink", "group_by": ["alertname", "namespace"],
                      "group_wait": wait, "group_interval": group_interval,
                      "repeat_interval": "24h",
                      "routes": [{"receiver": tenant_namespace(i),
                                  "matchers": [f'namespace="{tenant_namespace(i)}"']}
                                 for i in range(tenants)]},
            "receivers": [{"name": "sink", "webhook_configs": [hook]},
                          *({"name": tenant_namespace(i), "webhook_configs": [hook]}
                            for i in range(tenants))],
        }))
        self.log = workdir / "alertmanager.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.path={workdir / 'am-data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
                 "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_ready(f"http://127.0.0.1:{port}/-/ready", self.process, self.log, 30)

    @property
    def alerts_url(self) -> str:
        """Its v2 alerts API."""
        return f"http://127.0.0.1:{self.port}/api/v2/alerts"

    def stop(self) -> None:
        """Terminate Alertmanager."""
        stop(self.process)


# --- the load -------------------------------------------------------------------------------


def make_alerts(count: int, groups: int, prefix: str = "", start: int = 0,
                first_group: int = 0) -> list[dict[str, Any]]:
    """``count`` postable alerts spread over ``groups`` alertnames from ``first_group`` on
    (consecutive alerts share a group, as a group's alerts reach a receiver together), each
    with a unique ``seq`` label from ``start`` on."""
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    alerts = []
    for i in range(start, start + count):
        group = first_group + (i - start) * groups // count
        labels = {"alertname": f"{prefix}BenchAlert{group:05d}", "namespace": "bench",
                  "severity": "warning", "pod": f"pod-{i % 97}", "seq": f"{prefix}{i}"}
        alerts.append({
            "labels": labels,
            "annotations": {"summary": f"{prefix}BenchAlert{group} on pod-{i % 97}",
                            "description": "a synthetic alert of the nmstream benchmark"},
            "startsAt": started,
            "generatorURL": "http://prometheus.example/graph?g0.expr=up%3D%3D0",
        })
    return alerts


def webhook_body(alerts: list[dict[str, Any]]) -> bytes:
    """Alerts as Alertmanager's webhook v4 payload posts them to nmstream."""
    from nmstream.ingest.models import label_fingerprint

    return json.dumps({
        "version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": "firing",
        "receiver": "nmstream", "groupLabels": {}, "commonLabels": {"namespace": "bench"},
        "commonAnnotations": {}, "externalURL": "http://alertmanager.example",
        "alerts": [{**a, "status": "firing", "endsAt": "0001-01-01T00:00:00Z",
                    "fingerprint": label_fingerprint(a["labels"])} for a in alerts],
    }).encode()


def postable_body(alerts: list[dict[str, Any]]) -> bytes:
    """Alerts as a JSON list, what Prometheus posts to Alertmanager's ``/api/v2/alerts``.

    Without ``startsAt``, which Alertmanager then sets to the time it receives the alert: it
    sends a group at once, not after group_wait, when an alert started over group_wait ago.
    """
    return json.dumps([{k: v for k, v in a.items() if k != "startsAt"} for a in alerts]).encode()


@dataclass
class Posted:
    """One post: its alerts' seqs, when it was sent and acknowledged."""

    seqs: list[str]
    sent: float = 0.0
    acked: float = 0.0
    attempts: int = 0


@dataclass
class Load:
    """Every post of a run, and how many answers were not 200."""

    posts: list[Posted] = field(default_factory=list)
    errors: int = 0

    @property
    def first_sent(self) -> float:
        """Wall time of the first post."""
        return min(p.sent for p in self.posts)

    @property
    def last_acked(self) -> float:
        """Wall time of the last acknowledgement."""
        return max(p.acked for p in self.posts)


#: Answers a post is retried after (0: no answer); and how often at most.
RETRIED = {0, 429}
POST_ATTEMPTS = 60


async def post_all(url: str | list[str], bodies: list[tuple[list[str], bytes]],
                   concurrency: int) -> Load:
    """Post every body, in order, with ``concurrency`` keep-alive clients (client i posts to
    ``url[i % len(url)]`` when given several, as a Service spreads connections over pods). As
    Alertmanager does, a post that failed or was answered 429 or 5xx is retried after a second,
    up to :data:`POST_ATTEMPTS` times; any other answer but 200 ends the benchmark."""
    urls = [url] if isinstance(url, str) else url
    load = Load()
    queue: asyncio.Queue[tuple[Posted, bytes]] = asyncio.Queue()
    for seqs, body in bodies:
        posted = Posted(seqs)
        load.posts.append(posted)
        queue.put_nowait((posted, body))
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(url: str) -> None:
            while not queue.empty():
                posted, body = queue.get_nowait()
                while True:
                    posted.attempts += 1
                    posted.sent = posted.sent or time.time()
                    try:
                        async with session.post(url, data=body, headers=headers) as response:
                            answer = await response.read()
                            status = response.status
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        status, answer = 0, str(exc).encode()
                    if status == 200:
                        posted.acked = time.time()
                        break
                    retried = status in RETRIED or 500 <= status < 600
                    if not retried or posted.attempts >= POST_ATTEMPTS:
                        raise SystemExit(f"{url} answered {status or 'nothing'} after "
                                         f"{posted.attempts} attempt(s): {answer[:500]!r}")
                    load.errors += 1
                    await asyncio.sleep(1)

        await asyncio.gather(*(client(urls[i % len(urls)]) for i in range(concurrency)))
    return load


def chunks(alerts: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    """``alerts`` in consecutive posts of ``size``."""
    return [alerts[i:i + size] for i in range(0, len(alerts), size)]


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


if __name__ == "__main__":
    web.run_app(sink_app(), host="127.0.0.1", port=int(sys.argv[1]), print=None)
