"""Operations endpoints on the web port: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import time

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from nmstream.app import app
from nmstream.topics import guard, kafka_producer

BROKER_CHECK_TTL = 1.0
BROKER_CHECK_TIMEOUT = 2.0


class BrokerProbe:
    """Whether the producer can fetch cluster metadata; the answer is cached for a second."""

    def __init__(self) -> None:
        self.checked_at = 0.0
        self.error: str | None = "not checked yet"

    async def check(self) -> str | None:
        """``None`` when reachable, else the reason."""
        now = time.monotonic()
        if now - self.checked_at > BROKER_CHECK_TTL:
            self.checked_at = now
            try:
                client = kafka_producer().client
                await asyncio.wait_for(client.fetch_all_metadata(), BROKER_CHECK_TIMEOUT)
            except Exception as exc:  # every failure means "not reachable"
                self.error = str(exc) or type(exc).__name__
                guard.suspect()
            else:
                self.error = None
        return self.error


probe = BrokerProbe()


@app.page("/-/healthy")
class Healthy(View):
    """Liveness: the process serves HTTP."""

    async def get(self, request: Request) -> Response:
        """Always 200 while the event loop runs."""
        return self.json({"status": "healthy"})


@app.page("/-/ready")
class Ready(View):
    """Readiness: broker reachable, topics declared, consumer group not rebalancing."""

    async def get(self, request: Request) -> Response:
        """200 with the checks when all pass, else 503 naming the failing ones."""
        broker_error = await probe.check()
        checks = {
            "broker": "ok" if broker_error is None else f"unreachable: {broker_error}",
            "topics": "ok" if guard.ready.is_set() else "not verified yet",
            "assignment": "rebalancing" if app.rebalancing else "ok",
        }
        ready = all(v == "ok" for v in checks.values())
        return self.json(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status=200 if ready else 503,
        )


@app.page("/metrics")
class Metrics(View):
    """Prometheus text exposition of the worker's metrics."""

    async def get(self, request: Request) -> Response:
        """Every registered metric, process and Python collectors included."""
        return self.bytes(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
