"""Fixtures: the real embedded broker and per-test isolation."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from nmstream.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One embedded broker for the session; tests isolate by topic prefix."""
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
