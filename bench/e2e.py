"""End to end: alerts posted → delivered to a webhook, nmstream against a real Alertmanager.

Starts the embedded broker, one nmstream worker whose only receiver is a global webhook
pointing at a loopback sink (a child process recording when each alert arrives), and posts N
alerts in Alertmanager-sized posts of 100 (webhook v4 payloads, as Alertmanager sends them) over
G groups with a few keep-alive clients. Then the same alerts through a real Prometheus
Alertmanager (its v2 API, the same sink as its webhook, group_by the same labels, group_wait the
batch wait), and the same posts to a bare aiohttp handler that only parses the JSON (the
ceiling). Everything shares this machine: clients, sink, worker, broker, Alertmanager.

Two bounds place the worker's ingest between the ceiling and Kafka: the posts' records produced
without HTTP (the Kafka bound), and nmstream's ingest code in a process doing nothing else
(``bench/ingest_alone.py``: what ingest costs without the pipeline beside it).

Figures: alerts/s acknowledged (first post to last answer), alerts/s delivered (first post to
last alert at the sink), p50/p99 of post → delivery per alert, peak RSS (VmHWM) of the worker,
the broker and Alertmanager.

    python bench/e2e.py [--alerts 20000] [--groups 1400] [--batch-wait 1] [--workers 1]
                        [--tenants 0] [--profile out.txt]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from common import (
    FAST_GROUP,
    Alertmanager,
    Load,
    Sink,
    Worker,
    alertmanager_binary,
    chunks,
    cpu_seconds,
    make_alerts,
    percentile,
    post_all,
    postable_body,
    rss_mib,
    stop,
    wait_ready,
    webhook_body,
    write_config,
)
from ingest import start_ceiling

from nmstream.app import PRODUCER_BATCH_BYTES
from nmstream.broker import EmbeddedBroker, free_port
from nmstream.ingest.models import encode_records, utcnow
from nmstream.ingest.views import parse
from nmstream.routing.batching import Batching, group_partition
from nmstream.settings import Settings
from nmstream.topics import send_batched

WARMUP_ALERTS = 200


@dataclass
class Figures:
    """What one system measured."""

    ingest: float
    delivered: float | None = None
    p50: float | None = None
    p99: float | None = None
    rss: float | None = None
    broker_rss: float | None = None
    cpu: float | None = None
    broker_cpu: float | None = None
    notifications: int = 0
    errors: int = 0
    missing: int = 0


def run_load(url: str | list[str], sink: Sink, bodies: list[tuple[list[str], bytes]], expected: int,
             concurrency: int, timeout: float) -> Figures:
    """Post the bodies, wait for the sink to have every alert, and measure."""
    sink.reset()
    load = asyncio.run(post_all(url, bodies, concurrency))
    sink.wait_for(expected, timeout)
    arrivals, stats = sink.arrivals(), sink.stats()
    return figures(load, arrivals, expected, stats["notifications"])


def figures(load: Load, arrivals: dict[str, float], expected: int, notifications: int) -> Figures:
    """Rates and latencies of one run (rates over the alerts that arrived)."""
    start = load.first_sent
    latencies = [arrivals[s] - p.sent for p in load.posts for s in p.seqs if s in arrivals]
    result = Figures(ingest=expected / (load.last_acked - start), notifications=notifications,
                     errors=load.errors, missing=expected - len(latencies))
    if latencies:
        result.delivered = len(latencies) / (max(arrivals.values()) - start)
        result.p50, result.p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    return result


def warm_up(url: str | list[str], sink: Sink, groups: int, webhook: bool) -> None:
    """A few posts through the whole path, so that connections and caches exist."""
    alerts = make_alerts(WARMUP_ALERTS, max(1, groups // 100), prefix="w")
    encode = webhook_body if webhook else postable_body
    bodies = [([a["labels"]["seq"] for a in c], encode(c)) for c in chunks(alerts, 100)]
    run_load(url, sink, bodies, WARMUP_ALERTS, 2, 60)


def profiled(pid: int, output: str) -> subprocess.Popen[bytes] | None:
    """py-spy recording ``pid`` into ``output`` (collapsed stacks) until interrupted, if
    installed."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("--profile: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return None
    # --gil: only the thread holding the GIL, i.e. the Python work that costs CPU
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "1000",
                             "--output", output, "--nonblocking", "--gil"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def settle(workers: list[Worker], urls: list[str], sink: Sink, groups: int,
           timeout: float = 120.0) -> None:
    """Warm up until every worker has written groups and delivered notifications, i.e. owns
    partitions of the router's and the dispatcher's topics; then wait out the groups' last
    rejoins (a session timeout, twice) and warm up once more."""
    deadline = time.monotonic() + timeout
    while True:
        warm_up(urls, sink, groups, webhook=True)
        if all(w.metric("nmstream_groups_flushed_total") > 0
               and w.metric("nmstream_notifications_sent_total") > 0 for w in workers):
            break
        if time.monotonic() > deadline:
            sys.exit(f"the {len(workers)} workers never all took part within {timeout:.0f} s")
        time.sleep(1.0)
    time.sleep(2 * float(FAST_GROUP["NMSTREAM_SESSION_TIMEOUT"]))
    warm_up(urls, sink, groups, webhook=True)


def bench_nmstream(args: argparse.Namespace, workdir: Path, sink: Sink,
                   bodies: list[tuple[list[str], bytes]]) -> Figures:
    """nmstream: broker, worker(s), warm-up, measured load (with several workers, figures of
    CPU and RSS are their sums)."""
    write_config(workdir / "config", sink.url, args.batch_wait, args.tenants)
    with EmbeddedBroker() as broker:
        assert broker.process is not None
        workers = []
        try:
            for i in range(args.workers):
                home = workdir / f"worker{i}" if args.workers > 1 else workdir
                home.mkdir(exist_ok=True)
                workers.append(Worker(home, broker.url, free_port(), workdir / "config"))
            for worker in workers:
                worker.wait_usable()
            urls = [f"{w.base}/api/v2/alerts" for w in workers]
            settle(workers, urls, sink, args.groups)
            pids = [w.process.pid for w in workers]
            spy = profiled(pids[0], args.profile) if args.profile else None
            cpu = sum(map(cpu_seconds, pids)), cpu_seconds(broker.process.pid)
            result = run_load(urls, sink, bodies, args.alerts, args.concurrency, args.timeout)
            result.cpu = sum(map(cpu_seconds, pids)) - cpu[0]
            result.broker_cpu = cpu_seconds(broker.process.pid) - cpu[1]
            result.rss = sum(rss_mib(pid, "VmHWM") for pid in pids)
            result.broker_rss = rss_mib(broker.process.pid, "VmHWM")
            if spy is not None:  # the load is over: py-spy writes the stacks when interrupted
                spy.send_signal(signal.SIGINT)
                spy.wait()
        finally:
            for worker in workers:
                worker.stop()
    return result


def bench_alertmanager(args: argparse.Namespace, workdir: Path, sink: Sink,
                       bodies: list[tuple[list[str], bytes]]) -> Figures | None:
    """The same load through a real Alertmanager (None when it cannot be installed)."""
    binary = alertmanager_binary()
    if binary is None:
        print("Alertmanager: not installed and not installable here; skipped", file=sys.stderr)
        return None
    am = Alertmanager(binary, workdir, free_port(), sink.url, args.batch_wait,
                      args.am_group_interval, args.tenants)
    try:
        warm_up(am.alerts_url, sink, args.groups, webhook=False)
        cpu = cpu_seconds(am.process.pid)
        result = run_load(am.alerts_url, sink, bodies, args.alerts, args.concurrency,
                          args.timeout)
        result.cpu = cpu_seconds(am.process.pid) - cpu
        result.rss = rss_mib(am.process.pid, "VmHWM")
    finally:
        am.stop()
    return result


def bench_ceiling(args: argparse.Namespace, workdir: Path,
                  bodies: list[tuple[list[str], bytes]]) -> Figures:
    """The same posts to a bare aiohttp handler that only parses the JSON."""
    port = free_port()
    log = workdir / "ceiling.log"
    ceiling = start_ceiling(port, log)
    try:
        wait_ready(f"http://127.0.0.1:{port}/-/ready", ceiling, log, 30)
        load = asyncio.run(post_all(f"http://127.0.0.1:{port}/api/v2/alerts", bodies,
                                    args.concurrency))
        return Figures(ingest=args.alerts / (load.last_acked - load.first_sent),
                       rss=rss_mib(ceiling.pid, "VmHWM"), errors=load.errors)
    finally:
        stop(ceiling)


Post = list[tuple[int, bytes, bytes]]


def kafka_records(bodies: list[tuple[list[str], bytes]], partitions: int) -> list[Post]:
    """Per post, ``(partition, key, value)`` of the records ingest writes for it (grouped as
    nmstream defaults, as :func:`write_config` configures the worker)."""
    grouping = Batching.of(None)
    posts = []
    for _, body in bodies:
        group, alerts = parse(body)
        records = encode_records(alerts, group, str(uuid.uuid4()), utcnow())
        posts.append([(group_partition(received.alert.labels, grouping, partitions), key, value)
                      for key, value, received in records])
    return posts


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """A new topic of ``partitions`` partitions."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def produce_posts(bootstrap: str, topic: str, posts: list[Post], partitions: int,
                        senders: int) -> float:
    """Produce the posts' records to a new ``topic`` as ingest does (:func:`send_batched`) with
    ``senders`` concurrent senders, each waiting for a post's acknowledgement before its next;
    the seconds from the first send to the last acknowledgement."""
    await create_topic(bootstrap, topic, partitions)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=-1,
                                max_batch_size=PRODUCER_BATCH_BYTES)
    await producer.start()
    try:
        async def sender(queue: list[Post]) -> None:
            while queue:
                post, now = queue.pop(), int(time.time() * 1000)
                await asyncio.gather(*await send_batched(
                    topic, [(key, value, now) for _, key, value in post],
                    [partition for partition, _, _ in post], producer))

        await sender(posts[:senders])  # a warm-up: metadata, connection
        queue = list(reversed(posts))
        started = time.perf_counter()
        await asyncio.gather(*(sender(queue) for _ in range(senders)))
        return float(time.perf_counter() - started)
    finally:
        await producer.stop()


def bench_bounds(args: argparse.Namespace, workdir: Path,
                      bodies: list[tuple[list[str], bytes]]) -> tuple[float, float]:
    """Alerts/s the broker alone allows ingest: the better of the posts' records produced by
    ``concurrency`` senders, and by one sender merging that many posts into each produce (which
    aiokafka, one batch per partition in flight, favours); and alerts/s of nmstream's ingest
    code alone (``bench/ingest_alone.py``), on the same broker."""
    partitions, senders = Settings().partitions, args.concurrency
    posts = kafka_records(bodies, partitions)
    merged = [list(itertools.chain.from_iterable(posts[i:i + senders]))
              for i in range(0, len(posts), senders)]
    with EmbeddedBroker() as broker:
        bootstrap = broker.url.removeprefix("kafka://")
        seconds = min(asyncio.run(produce_posts(bootstrap, "bound", posts, partitions, senders)),
                      asyncio.run(produce_posts(bootstrap, "merged", merged, partitions, 1)))
        asyncio.run(create_topic(bootstrap, "alone", partitions))
        port, log = free_port(), workdir / "ingest-alone.log"
        with log.open("wb") as out:
            alone = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("ingest_alone.py")), str(port),
                 bootstrap, "alone", str(partitions)], stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}/api/v2/alerts"
            wait_ready(f"http://127.0.0.1:{port}/-/ready", alone, log, 60)
            asyncio.run(post_all(url, bodies[:senders], senders))  # metadata, connections
            load = asyncio.run(post_all(url, bodies, senders))
        finally:
            stop(alone)
    return float(args.alerts / seconds), args.alerts / (load.last_acked - load.first_sent)


def cell(value: float | None, unit: str = "") -> str:
    """A table cell: the value, or n/a."""
    if value is None:
        return "n/a"
    if unit == " cpu":
        return f"{value:.2f}"
    return f"{value:.3f}{unit}" if unit == " s" else f"{value:.0f}{unit}"


def ratio(a: float | None, b: float | None) -> str:
    """a/b, or n/a."""
    return f"{a / b:.2f}" if a is not None and b else "n/a"


def report(args: argparse.Namespace, nm: Figures, am: Figures | None, top: Figures,
           bound: float, alone: float) -> None:
    """Print the table."""
    print(f"\nend-to-end benchmark: {args.alerts} alerts in posts of {args.post_size} over "
          f"{args.groups} groups, {args.concurrency} clients, batch wait {args.batch_wait:g} s; "
          f"{args.workers} nmstream worker{'s' * (args.workers > 1)}; "
          + (f"{args.tenants} tenant receivers besides the global one; " if args.tenants else "")
          + f"everything on {os.cpu_count()} cores")
    who = "worker" if args.workers == 1 else f"{args.workers} workers"
    rows = [
        ("ingest, alerts/s (acknowledged)", "ingest", ""),
        ("end to end, alerts/s (delivered)", "delivered", ""),
        ("latency post→delivery p50", "p50", " s"),
        ("latency post→delivery p99", "p99", " s"),
        (f"peak RSS, MiB ({who} | AM)", "rss", ""),
        ("peak RSS of the broker, MiB", "broker_rss", ""),
        (f"CPU s, load to last delivery ({who} | AM)", "cpu", " cpu"),
        ("CPU s of the broker", "broker_cpu", " cpu"),
    ]
    print(f"{'':44}{'nmstream':>12}{'Alertmanager':>14}{'nm/AM':>8}{'ceiling':>10}")
    for name, attr, unit in rows:
        mine, theirs = getattr(nm, attr), getattr(am, attr) if am else None
        top_value = getattr(top, attr) if attr == "ingest" else None
        print(f"{name:44}{cell(mine, unit):>12}{cell(theirs, unit):>14}"
              f"{ratio(mine, theirs):>8}{cell(top_value):>10}")
    print(f"nmstream/ceiling ingest: {ratio(nm.ingest, top.ingest)}")
    print(f"Kafka bound (the same records produced and acknowledged, no HTTP): {bound:.0f} "
          f"alerts/s = {ratio(bound, top.ingest)} of the ceiling; nmstream ingest "
          f"{ratio(nm.ingest, bound)} of it")
    print(f"ingest code alone (HTTP, validation, records, Kafka; no pipeline beside it): "
          f"{alone:.0f} alerts/s = {ratio(alone, top.ingest)} of the ceiling; nmstream ingest "
          f"{ratio(nm.ingest, alone)} of it")
    for name, f in (("nmstream", nm), ("Alertmanager", am)):
        if f is not None:
            print(f"{name}: {f.notifications} webhook posts, {f.errors} failed posts "
                  f"(retried), {f.missing} alerts never delivered")


def main() -> int:
    """Run nmstream, Alertmanager and the ceiling on the same load; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=20000)
    parser.add_argument("--groups", type=int, default=1400)
    parser.add_argument("--batch-wait", type=float, default=1.0,
                        help="nmstream batchMaxWait = Alertmanager group_wait, seconds")
    parser.add_argument("--post-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for every alert at the sink")
    parser.add_argument("--am-group-interval", default="5m")
    parser.add_argument("--workers", type=int, default=1,
                        help="nmstream workers (one process each) in one consumer group; the "
                             "clients spread their connections over them")
    parser.add_argument("--tenants", type=int, default=0,
                        help="tenant webhook receivers (Alertmanager: routes) besides the "
                             "global one, for namespaces the load's alerts never have: what "
                             "a large cluster's receivers cost")
    parser.add_argument("--no-alertmanager", action="store_true")
    parser.add_argument("--profile", metavar="FILE",
                        help="record the worker with py-spy during the load (raw stacks)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="nmstream-e2e-"))
    alerts = make_alerts(args.alerts, args.groups)
    posts = chunks(alerts, args.post_size)
    seqs = [[a["labels"]["seq"] for a in c] for c in posts]
    bodies = list(zip(seqs, (webhook_body(c) for c in posts), strict=True))
    am_bodies = list(zip(seqs, (postable_body(c) for c in posts), strict=True))

    sink = Sink(workdir, free_port())
    started = time.monotonic()
    try:
        nm = bench_nmstream(args, workdir, sink, bodies)
        am = None if args.no_alertmanager else bench_alertmanager(args, workdir, sink, am_bodies)
    finally:
        sink.stop()
    top = bench_ceiling(args, workdir, bodies)
    bound, alone = bench_bounds(args, workdir, bodies)
    report(args, nm, am, top, bound, alone)
    print(f"(run took {time.monotonic() - started:.0f} s; logs in {workdir})")
    return 0 if nm.missing == 0 and (am is None or am.missing == 0) else 1


if __name__ == "__main__":
    sys.exit(main())
