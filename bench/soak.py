"""Soak: a steady alert rate through nmstream for minutes; does the worker's memory stay flat?

Starts the embedded broker, one worker whose only receiver is a global webhook pointing at a
loopback sink, and posts alerts at a fixed rate (webhook v4 posts of up to 100 alerts, ten
alerts per group, the group names cycling) for the given time. Samples the worker's RSS every
10 s and prints it; at the end the maximum and the growth (mean of the last quarter of the
samples against the mean of the second quarter), and whether the sink got every alert.

Exit status 1 when the RSS exceeded --max-rss MiB (the load stops at the first such sample),
grew by more than 10 %, or an alert was not delivered.

    python bench/soak.py [--rate 200] [--minutes 10]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import mean

import aiohttp
from common import Sink, Worker, make_alerts, percentile, rss_mib, webhook_body, write_config

from nmstream.broker import EmbeddedBroker, free_port

ALERTS_PER_GROUP = 10
GROWTH_LIMIT = 0.10


async def steady_load(url: str, rate: float, seconds: float, groups: int, sample_every: float,
                      on_sample: Callable[[float, int], bool]) -> tuple[dict[str, float], int]:
    """Post at ``rate`` alerts/s for ``seconds``; call ``on_sample(elapsed, posted)`` every
    ``sample_every`` s and stop early when it answers False. Returns each alert's post time
    by seq, and the failed posts."""
    size = max(1, min(100, int(rate)))
    interval = size / rate
    per_post = max(1, size // ALERTS_PER_GROUP)
    sent: dict[str, float] = {}
    failures = 0
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def post(number: int) -> None:
            nonlocal failures
            alerts = make_alerts(size, per_post, start=number * size,
                                 first_group=(number * per_post) % groups)
            body = webhook_body(alerts)
            posted = time.time()
            while True:  # as Alertmanager does: retry until accepted
                try:
                    async with session.post(url, data=body) as response:
                        await response.read()
                        if response.status == 200:
                            break
                except (aiohttp.ClientError, TimeoutError):
                    pass
                failures += 1
                await asyncio.sleep(1)
            for alert in alerts:
                sent[alert["labels"]["seq"]] = posted

        loop = asyncio.get_running_loop()
        started = loop.time()
        next_sample = sample_every
        number = 0
        while (elapsed := loop.time() - started) < seconds:
            if elapsed >= next_sample:
                if not on_sample(elapsed, len(sent)):
                    break
                next_sample += sample_every
            task = asyncio.create_task(post(number))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            number += 1
            await asyncio.sleep(max(0.0, started + number * interval - loop.time()))
        await asyncio.gather(*tasks)
    return sent, failures


def main() -> int:
    """Run the soak and print the verdict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="alerts per second")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--groups", type=int, default=1000, help="distinct group names cycled")
    parser.add_argument("--batch-wait", type=float, default=1.0)
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds")
    parser.add_argument("--max-rss", type=float, default=300.0, help="MiB")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="nmstream-soak-"))
    sink = Sink(workdir, free_port())
    write_config(workdir / "config", sink.url, args.batch_wait)
    samples: list[float] = []
    limit: float = args.max_rss
    try:
        with EmbeddedBroker() as broker:
            assert broker.process is not None
            broker_pid = broker.process.pid
            worker = Worker(workdir, broker.url, free_port(), workdir / "config")
            try:
                worker.wait_usable()
                pid = worker.process.pid
                print(f"soak: {args.rate:g} alerts/s for {args.minutes:g} min; worker pid {pid}")
                print(f"{'t, s':>6}{'worker RSS, MiB':>17}{'broker RSS, MiB':>17}"
                      f"{'posted':>9}{'delivered':>11}")

                def sample(elapsed: float, posted: int) -> bool:
                    samples.append(rss_mib(pid))
                    print(f"{elapsed:6.0f}{samples[-1]:17.1f}{rss_mib(broker_pid):17.1f}"
                          f"{posted:9d}{sink.stats()['alerts']:11d}", flush=True)
                    if samples[-1] > limit:
                        print(f"worker RSS over {limit:g} MiB: stopping the load early")
                    return samples[-1] <= limit

                sent, failures = asyncio.run(steady_load(
                    f"{worker.base}/api/v2/alerts", args.rate, args.minutes * 60, args.groups,
                    args.sample_every, sample))
                sink.wait_for(len(sent), 120)
                arrivals = sink.arrivals()
                samples.append(rss_mib(pid))
            finally:
                worker.stop()
    finally:
        sink.stop()

    latencies = [arrivals[s] - t for s, t in sent.items() if s in arrivals]
    missing = len(sent) - len(latencies)
    quarter = max(1, len(samples) // 4)
    second, last = mean(samples[quarter:2 * quarter] or samples), mean(samples[-quarter:])
    growth = last / second - 1
    grew, too_big = growth > GROWTH_LIMIT, max(samples) > limit
    print(f"alerts posted {len(sent)}, delivered {len(latencies)}, missing {missing}, "
          f"failed posts {failures} (retried)")
    if latencies:
        print(f"latency post→delivery p50 {percentile(latencies, 0.5):.3f} s, "
              f"p99 {percentile(latencies, 0.99):.3f} s")
    print(f"worker RSS: max {max(samples):.1f} MiB (limit {limit:g}); second quarter "
          f"{second:.1f}, last quarter {last:.1f}: {growth:+.1%} "
          f"({'GROWING' if grew else 'flat'}, limit +{GROWTH_LIMIT:.0%})")
    print(f"(logs in {workdir})")
    return 1 if grew or too_big or missing else 0


if __name__ == "__main__":
    sys.exit(main())
