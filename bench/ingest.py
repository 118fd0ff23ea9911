"""Ingest throughput: nmstream's POST /api/v2/alerts against a bare aiohttp ceiling.

Starts the embedded broker and one worker, posts the real Alertmanager payloads of
``../shared/testdata`` round-robin with C concurrent keep-alive clients for a fixed time, and
does the same against a bare aiohttp server that only parses the JSON (the ceiling). Prints
alerts/s acknowledged for both, their ratio, and checks that Kafka holds every acknowledged
alert. Everything shares one machine (2 cores here): client, worker, broker and ceiling.

    python bench/ingest.py [--seconds 10] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from common import stop, wait_ready
from kafka import KafkaConsumer, TopicPartition

from nmstream.broker import EmbeddedBroker, free_port

TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"
PAYLOADS = ["alert.json", "alert1.json", "alerts-without-namespace.json", "alert-auditing.json"]
WARMUP = 2.0
CEILING_SERVER = textwrap.dedent("""
    import json, sys
    from aiohttp import web
    async def alerts(request):
        body = json.loads(await request.read())
        return web.json_response({"alerts": len(body["alerts"])})
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/api/v2/alerts", alerts)
    app.router.add_get("/-/ready", lambda request: web.json_response({}))
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
""")


@dataclass
class Result:
    """What one load run measured."""

    alerts: int = 0
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0

    @property
    def alerts_per_second(self) -> float:
        """Acknowledged alerts per second."""
        return self.alerts / self.seconds if self.seconds else 0.0


async def load(url: str, bodies: list[bytes], seconds: float, concurrency: int) -> Result:
    """Post ``bodies`` round-robin for ``seconds``; count only 200 answers."""
    result = Result()
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def poster(offset: int) -> None:
            i = offset
            while time.monotonic() < deadline:
                body = bodies[i % len(bodies)]
                i += 1
                async with session.post(url, data=body) as response:
                    answer = await response.read()
                    if response.status == 200:
                        result.alerts += json.loads(answer)["alerts"]
                        result.requests += 1
                    else:
                        result.errors += 1

        started = time.monotonic()
        await asyncio.gather(*(poster(n) for n in range(concurrency)))
        result.seconds = time.monotonic() - started
    return result


def start_ceiling(port: int, log: Path) -> subprocess.Popen[bytes]:
    """The bare aiohttp ceiling server on ``port``, its output in ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-c", CEILING_SERVER, str(port)],
                                stdout=out, stderr=subprocess.STDOUT)


def count_records(bootstrap: str, topic: str, quiet: float = 2.0, limit: float = 120.0) -> int:
    """Records on ``topic``, counted by consuming (the broker's end offsets are unreliable)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        count, last_growth, started = 0, time.monotonic(), time.monotonic()
        while time.monotonic() - last_growth < quiet and time.monotonic() - started < limit:
            got = sum(len(b) for b in consumer.poll(timeout_ms=200, max_records=10000).values())
            if got:
                count, last_growth = count + got, time.monotonic()
        return count
    finally:
        consumer.close()


def main() -> int:
    """Run both loads and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    bodies = [(TESTDATA / name).read_bytes() for name in PAYLOADS]
    workdir = Path(tempfile.mkdtemp(prefix="nmstream-bench-"))

    with EmbeddedBroker() as broker:
        web_port, ceiling_port = free_port(), free_port()
        env = {**os.environ, "NMSTREAM_BROKER": broker.url, "NMSTREAM_WEB_PORT": str(web_port),
               "NMSTREAM_DATA_DIR": str(workdir / "data"), "NMSTREAM_TOPIC_PREFIX": "bench",
               "NMSTREAM_SESSION_TIMEOUT": "6", "NMSTREAM_HEARTBEAT_INTERVAL": "1",
               "NMSTREAM_REBALANCE_TIMEOUT": "6"}
        worker_log = workdir / "worker.log"
        with worker_log.open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "nmstream", "worker", "-l", "warn"],
                env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        ceiling_log = workdir / "ceiling.log"
        ceiling = start_ceiling(ceiling_port, ceiling_log)
        try:
            wait_ready(f"http://127.0.0.1:{web_port}/-/ready", worker, worker_log, 60)
            wait_ready(f"http://127.0.0.1:{ceiling_port}/-/ready", ceiling, ceiling_log, 30)
            nm_url = f"http://127.0.0.1:{web_port}/api/v2/alerts"
            ceiling_url = f"http://127.0.0.1:{ceiling_port}/api/v2/alerts"
            # the ceiling first: after its load the worker still routes what it took
            asyncio.run(load(ceiling_url, bodies, WARMUP, args.concurrency))
            top = asyncio.run(load(ceiling_url, bodies, args.seconds, args.concurrency))
            warm = asyncio.run(load(nm_url, bodies, WARMUP, args.concurrency))
            nm = asyncio.run(load(nm_url, bodies, args.seconds, args.concurrency))
            on_topic = count_records(broker.bootstrap, "bench-alerts")
        finally:
            stop(worker)
            stop(ceiling)

    acknowledged = warm.alerts + nm.alerts
    ratio = nm.alerts_per_second / top.alerts_per_second if top.alerts_per_second else 0.0
    print(f"ingest benchmark: {args.seconds:.0f} s per run, {args.concurrency} concurrent "
          f"clients, payloads of 1-9 alerts; client, worker, broker and ceiling share "
          f"{os.cpu_count()} cores")
    print(f"{'':28}{'alerts/s':>12}{'requests/s':>12}{'errors':>8}")
    for name, r in (("nmstream (acked by Kafka)", nm), ("bare aiohttp (ceiling)", top)):
        print(f"{name:28}{r.alerts_per_second:12.0f}{r.requests / r.seconds:12.0f}"
              f"{r.errors:8d}")
    print(f"ratio nmstream/ceiling: {ratio:.0%}")
    verdict = "matches" if on_topic == acknowledged else "DOES NOT match"
    print(f"records on bench-alerts: {on_topic}; acknowledged alerts (incl. warm-up): "
          f"{acknowledged}; {verdict}")
    return 0 if on_topic >= acknowledged and nm.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
