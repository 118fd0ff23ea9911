"""``POST /api/v2/alerts``: validate, write one record per alert, answer once Kafka has them all."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, cast

from aiohttp import web
from faust.web import Request, Response, View
from pydantic import ValidationError

from nmstream.app import app, settings
from nmstream.ingest.models import (
    GroupContext,
    PostableAlerts,
    Received,
    WebhookPayload,
    encode_records,
    utcnow,
)
from nmstream.metrics import ALERTS_INGESTED, INGEST_REQUESTS, PRODUCE_SECONDS
from nmstream.routing.agents import router
from nmstream.routing.batching import batching, group_partition
from nmstream.topics import ALERTS, guard, partition_count, send_batched

log = logging.getLogger(__name__)


class BadRequest(Exception):
    """A request the sender must fix; carries the HTTP status and the JSON body."""

    def __init__(self, status: int, outcome: str, body: dict[str, Any]) -> None:
        super().__init__(body["error"])
        self.status, self.outcome, self.body = status, outcome, body


def _validation_body(exc: ValidationError) -> dict[str, Any]:
    """A JSON error naming each offending field by its dotted path."""
    errors = []
    for err in exc.errors(include_url=False):
        if err["type"] == "json_invalid":
            return {"error": "malformed JSON", "detail": err["msg"]}
        field = ".".join(str(p) for p in err["loc"]) or "(body)"
        errors.append({"field": field, "message": err["msg"]})
    first = errors[0]
    return {"error": f"invalid field {first['field']}: {first['message']}", "errors": errors}


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refusing with 413 as soon as it exceeds ``limit`` bytes."""
    too_large = BadRequest(
        413, "too_large", {"error": f"request body exceeds {limit} bytes", "limit": limit}
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


_NO_GROUP = GroupContext()


def parse(body: bytes) -> tuple[GroupContext, list[Any]]:
    """Webhook v4 / minimal sender object (the payload is the group context), or a bare JSON
    array of postable alerts (no group context)."""
    if not body.strip():
        raise BadRequest(400, "bad_request", {"error": "empty request body"})
    try:
        if body.lstrip()[:1] == b"[":
            return _NO_GROUP, PostableAlerts.validate_json(body)
        payload = WebhookPayload.model_validate_json(body)
    except ValidationError as exc:
        raise BadRequest(400, "bad_request", _validation_body(exc)) from exc
    return payload, list(payload.alerts)


async def produce(records: list[tuple[bytes, bytes, Received]], timestamp_ms: int) -> None:
    """Send every ``(key, value, received)`` record, each to the partition of its alert's group
    labels, and wait until Kafka acknowledged them all, or time out. The router of this worker
    is handed what it would decode from the records of its partitions.

    The topics are verified first whenever Kafka failed before (see :class:`TopicGuard`).
    The acknowledgement futures are never cancelled (aiokafka resolves them later even after
    a timeout); only the wait for them ends.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.produce_timeout
    async with asyncio.timeout_at(deadline):
        if not guard.ready.is_set():
            await guard.ensure()
        grouping, count = batching(), await partition_count(ALERTS.name)
        numbers = [group_partition(r.alert.labels, grouping, count) for _, _, r in records]
        for number, (_, value, received) in zip(numbers, records, strict=True):
            router.read_back.keep(number, value, received)
        futures = await send_batched(
            ALERTS.name, [(key, value, timestamp_ms) for key, value, _ in records], numbers)
    done, pending = await asyncio.wait(futures, timeout=max(deadline - loop.time(), 0))
    if pending:
        raise TimeoutError
    for future in done:
        future.result()


@app.page("/api/v2/alerts")
class IngestAlerts(View):
    """Alertmanager's webhook receiver (and its v2 alerts API shape)."""

    async def post(self, request: Request) -> Response:
        """200 once Kafka has every alert; 4xx for bad input; 503 when Kafka cannot take them."""
        with router.post():
            return await self.answer(request)

    async def answer(self, request: Request) -> Response:
        """The answer to a post."""
        try:
            body = await read_body(cast(web.Request, request), settings.max_body_bytes)
            group, alerts = parse(body)
        except BadRequest as exc:
            INGEST_REQUESTS.labels(outcome=exc.outcome).inc()
            return self.json(exc.body, status=exc.status)

        request_id, now = str(uuid.uuid4()), utcnow()
        records = encode_records(alerts, group, request_id, now)
        started = time.perf_counter()
        try:
            await produce(records, int(now.timestamp() * 1000))
        except Exception as exc:  # timeout or any Kafka error: the sender must retry
            guard.suspect()
            INGEST_REQUESTS.labels(outcome="unavailable").inc()
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            log.warning("ingest of %d alerts failed, answering 503: %s", len(records), reason)
            return self.json(
                {"error": f"Kafka did not acknowledge the alerts: {reason}", "retry": True},
                status=503,
                headers={"Retry-After": "1"},
            )
        PRODUCE_SECONDS.observe(time.perf_counter() - started)
        ALERTS_INGESTED.inc(len(records))
        INGEST_REQUESTS.labels(outcome="accepted").inc()
        return self.json({"status": "success", "alerts": len(records), "requestId": request_id})
