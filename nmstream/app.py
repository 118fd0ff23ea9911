"""The Faust application: settings applied, domain packages wired by autodiscover.

Data flow, one package per stage: ``ingest`` (HTTP → ``nmstream-alerts``), ``config``
(custom resources → ``nmstream-config`` → each worker's receivers view), ``routing``
(``nmstream-alerts`` → the router: route, dedup, group, and ``render`` the groups it flushes →
``nmstream-notify-<channel>``), ``channels`` (delivery) and ``ops`` (health, readiness,
metrics). The topics are in :mod:`nmstream.topics`.
"""

from __future__ import annotations

from typing import Any

import faust

from nmstream.settings import get_settings
from nmstream.transport import Transport

settings = get_settings()


class Worker(faust.Worker):
    """Faust's worker without its terminal spinner. For the spinner Faust lowers the root
    logger to DEBUG, so every debug message of every library (aiokafka logs a few per fetch
    and send) became a log record: ~15 % of a busy worker's CPU."""

    def on_setup_root_logger(self, logger: Any, level: int) -> None:
        """Set up the root logger at the requested level, no spinner."""
        self.spinner = None
        super().on_setup_root_logger(logger, level)


class App(faust.App):
    """The Faust app on :class:`nmstream.transport.Transport`, whose modules all load."""

    def _new_transport(self) -> Transport:
        return Transport(self.conf.broker_consumer, self)

    def _on_autodiscovery_error(self, name: str) -> None:
        """A module that fails to import stops the worker. Faust only logs it and starts
        without the module: without ``nmstream.ingest.views``, Alertmanager's posts would be
        answered 404, which it does not retry."""
        raise  # the import error: venusian calls this from its ``except`` clause


#: Largest record batch the producer builds.
PRODUCER_BATCH_BYTES = 512 * 1024

app = App(
    settings.app_id,
    broker=settings.broker,
    origin="nmstream",
    Worker=Worker,
    autodiscover=[
        "nmstream.ingest",
        "nmstream.config",
        "nmstream.routing",
        "nmstream.render",
        "nmstream.channels",
        "nmstream.audit",
        "nmstream.ops",
    ],
    store="memory://",
    datadir=str(settings.data_dir),
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication_factor,
    broker_session_timeout=settings.session_timeout,
    broker_heartbeat_interval=settings.heartbeat_interval,
    broker_rebalance_timeout=settings.rebalance_timeout,
    producer_request_timeout=settings.produce_timeout,
    producer_acks=-1,
    # aiokafka queues one batch per partition at a time and a record batch waits until the one
    # before it is sent: with the default 16 KiB, a render of 200 notifications (~10 KiB each)
    # waited for ~100 produce round trips in turn. Half of Kafka's default message.max.bytes.
    producer_max_batch_size=PRODUCER_BATCH_BYTES,
    broker_commit_interval=settings.commit_interval,
    # groups hold their events un-acknowledged until flushed; a rebalance must not wait
    # for them (the new owner of the partition reads them again)
    stream_wait_empty=False,
    web_bind=settings.web_host,
    web_host=settings.web_host,
    web_port=settings.web_port,
    web_router_enabled=False,
    web_tables_enabled=False,
    web_stats_enabled=False,
    web_graph_enabled=False,
)
