"""Fixtures: the real embedded broker and per-test isolation."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller

from nmstream.broker import EmbeddedBroker, free_port
from tests.helpers import Inbox, Recorder, Sink, smtp_auth


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One embedded broker per test process (pytest-xdist runs two); tests isolate by topic
    prefix."""
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture
def fresh_broker() -> Iterator[EmbeddedBroker]:
    """A broker of the test's own, for tests that stop or restart it."""
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture
def prefix() -> str:
    """A topic prefix and consumer group unique to the test."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def sinks() -> Iterator[tuple[int, Controller, Inbox]]:
    Sink.received = []
    Sink.flaky_failures = 0
    http = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port(), authenticator=smtp_auth,
                      auth_require_tls=False)
    smtp.start()
    yield http.server_address[1], smtp, inbox
    smtp.stop()
    http.shutdown()


@pytest.fixture
def recorder() -> Iterator[int]:
    Recorder.got, Recorder.delay, Recorder.status = [], {}, {}
    http = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    http.daemon_threads = True
    threading.Thread(target=http.serve_forever, daemon=True).start()
    yield http.server_address[1]
    http.shutdown()
