"""Prometheus metrics of the worker, served at ``/metrics``."""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

INGEST_REQUESTS = Counter(
    "nmstream_ingest_requests",
    "POST /api/v2/alerts requests by outcome",
    ["outcome"],
)
ALERTS_INGESTED = Counter(
    "nmstream_alerts_ingested",
    "Alerts acknowledged by Kafka on nmstream-alerts",
)
PRODUCE_SECONDS = Histogram(
    "nmstream_ingest_produce_seconds",
    "Time from request parsed to every record of it acknowledged by Kafka",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

ALERTS_ROUTED = Counter(
    "nmstream_alerts_routed",
    "Alert deliveries to receivers decided by routing (one alert, one receiver)",
    ["channel"],
)
ALERTS_UNROUTED = Counter(
    "nmstream_alerts_unrouted",
    "Alerts that matched no usable receiver",
)
ALERTS_DEDUPLICATED = Counter(
    "nmstream_alerts_deduplicated",
    "Repeats of an alert (same fingerprint and status) for a receiver within dedupWindow",
)
GROUPS_FLUSHED = Counter(
    "nmstream_groups_flushed",
    "Alert groups flushed to rendering",
)
GROUPS_KEPT_OPEN = Counter(
    "nmstream_groups_kept_open",
    "Due alert groups kept open until the router read the alerts received before they fell due",
)
NOTIFICATIONS_RENDERED = Counter(
    "nmstream_notifications_rendered",
    "Rendered notifications written to nmstream-notify-<channel>",
    ["channel"],
)
RENDER_FAILURES = Counter(
    "nmstream_render_failures",
    "Groups whose template failed, sent to nmstream-dlq-<channel>",
    ["channel"],
)

NOTIFICATIONS_SENT = Counter(
    "nmstream_notifications_sent",
    "Delivery attempts by channel and outcome (delivered, retryable, permanent)",
    ["channel", "outcome"],
)
SEND_SECONDS = Histogram(
    "nmstream_send_seconds",
    "Time one delivery attempt took, by channel",
    ["channel"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
NOTIFICATION_OUTCOMES = Counter(
    "nmstream_notification_outcomes",
    "Records on nmstream-sent by channel and status (delivered, retrying = a retry scheduled, "
    "dead-lettered, filtered, deduplicated)",
    ["channel", "status"],
)
DELIVERY_LATENCY = Histogram(
    "nmstream_delivery_latency_seconds",
    "Time from the oldest alert of a notification received to the notification delivered",
    ["channel"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600),
)
REDELIVERIES_SKIPPED = Counter(
    "nmstream_redeliveries_skipped",
    "Notifications read again (after a crash or rebalance) whose outcome was already recorded",
    ["channel"],
)
HISTORY_POSTS = Counter(
    "nmstream_history_posts",
    "Delivered-notification records posted to the NotificationManager's history webhook",
    ["outcome"],
)
CONSUMER_LAG = Gauge(
    "nmstream_consumer_lag",
    "Records not yet read by this worker, per topic (summed over its assigned partitions)",
    ["topic"],
)

#: Outcomes of an ingest request, pre-created so every series is exported from the start.
INGEST_OUTCOMES = ("accepted", "bad_request", "too_large", "unavailable")
for _outcome in INGEST_OUTCOMES:
    INGEST_REQUESTS.labels(outcome=_outcome)


@functools.cache
def child(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, looked up once per metric and label values: a lookup takes
    a lock and ~1 µs, and the delivery path makes four per notification."""
    return metric.labels(*values)
