"""nmstream's ingest code alone: a bare aiohttp server whose handler does what the worker's
``POST /api/v2/alerts`` does to a post (:func:`parse`, :func:`encode_records`, the group's
partition, :func:`send_batched`, the wait for Kafka's acknowledgement), in a process that does
nothing else: no routing, rendering or delivery beside it, no Faust.

Between the ceiling (HTTP and ``json.loads`` only) and the worker's ingest (the same code, with
the rest of the pipeline in the same process), it tells which of the two costs the gap.

    python bench/ingest_alone.py PORT BOOTSTRAP TOPIC PARTITIONS
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator

from aiohttp import web
from aiokafka import AIOKafkaProducer

from nmstream.app import PRODUCER_BATCH_BYTES
from nmstream.ingest.models import encode_records, utcnow
from nmstream.ingest.views import BadRequest, parse
from nmstream.routing.batching import Batching, group_partition
from nmstream.topics import send_batched

PRODUCER = web.AppKey("producer", AIOKafkaProducer)


def server(bootstrap: str, topic: str, partitions: int) -> web.Application:
    """The app: ``POST /api/v2/alerts`` → ``topic``; ``GET /-/ready``."""
    grouping = Batching.of(None)

    async def alerts(request: web.Request) -> web.Response:
        try:
            group, items = parse(await request.read())
        except BadRequest as exc:
            return web.json_response(exc.body, status=exc.status)
        now = utcnow()
        records = encode_records(items, group, str(uuid.uuid4()), now)
        numbers = [group_partition(r.alert.labels, grouping, partitions) for _, _, r in records]
        timestamp = int(now.timestamp() * 1000)
        await asyncio.gather(*await send_batched(
            topic, [(key, value, timestamp) for key, value, _ in records], numbers,
            request.app[PRODUCER]))
        return web.json_response({"status": "success", "alerts": len(records)})

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({})

    async def producer(app: web.Application) -> AsyncIterator[None]:
        app[PRODUCER] = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=-1,
                                         max_batch_size=PRODUCER_BATCH_BYTES)
        await app[PRODUCER].start()
        yield
        await app[PRODUCER].stop()

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.cleanup_ctx.append(producer)
    app.router.add_post("/api/v2/alerts", alerts)
    app.router.add_get("/-/ready", ready)
    return app


if __name__ == "__main__":
    port, bootstrap, topic, partitions = sys.argv[1:5]
    web.run_app(server(bootstrap, topic, int(partitions)), host="127.0.0.1", port=int(port),
                print=None)
