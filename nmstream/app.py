"""The Faust application: settings applied, domain packages wired by autodiscover.

Data flow, one package per stage: ``ingest`` (HTTP → ``nmstream-alerts``), ``config``
(custom resources → ``nmstream-config`` → each worker's receivers view) and ``ops``
(health, readiness, metrics). Later stages subscribe to the topics in :mod:`nmstream.topics`.
"""

from __future__ import annotations

import faust

from nmstream.settings import get_settings

settings = get_settings()

app = faust.App(
    settings.app_id,
    broker=settings.broker,
    origin="nmstream",
    autodiscover=["nmstream.ingest", "nmstream.config", "nmstream.ops"],
    store="memory://",
    datadir=str(settings.data_dir),
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication_factor,
    broker_session_timeout=settings.session_timeout,
    broker_heartbeat_interval=settings.heartbeat_interval,
    broker_rebalance_timeout=settings.rebalance_timeout,
    producer_request_timeout=settings.produce_timeout,
    producer_acks=-1,
    web_bind=settings.web_host,
    web_host=settings.web_host,
    web_port=settings.web_port,
    web_router_enabled=False,
    web_tables_enabled=False,
    web_stats_enabled=False,
    web_graph_enabled=False,
)
