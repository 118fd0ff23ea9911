"""Faust's aiokafka transport with the worker consumer's fetch wait taken from the settings.

Faust builds its worker consumer with ``fetch_max_wait_ms=1500``. Kafka answers a fetch as soon
as a record arrives, but a broker that holds every fetch for its full wait (the embedded Tansu
does) adds up to that wait at each of the pipeline's topic hops: ~0.75 s per hop on average,
3 s from alert to delivery. ``NMSTREAM_FETCH_MAX_WAIT`` bounds it.
"""

from __future__ import annotations

from typing import Any

import aiokafka
from faust.transport.drivers import aiokafka as driver

from nmstream.settings import get_settings


class ConsumerThread(driver.AIOKafkaConsumerThread):
    """The consumer thread whose worker consumer waits at most ``fetch_max_wait``."""

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # read by AIOKafkaConsumer.start() when it builds its fetcher; there is no other hook
        consumer._fetch_max_wait_ms = int(get_settings().fetch_max_wait * 1000)
        return consumer


class Consumer(driver.Consumer):
    """The aiokafka consumer with :class:`ConsumerThread`."""

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(driver.Transport):
    """The aiokafka transport with :class:`Consumer`."""

    Consumer = Consumer
