"""The configuration service of every worker: follow the view, and publish while leader.

Every worker reads ``nmstream-config`` into its own :class:`ConfigView`. Only the Faust
leader (one worker of the group) runs the configuration source (the Kubernetes watcher or
the directory) and publishes its changes, so the topic has one writer at a time and the
Kubernetes API one watcher. A worker that becomes leader starts its source afresh: the
initial list republishes every object (idempotent: same key, same content), then keys the
view still has but the source no longer knows get tombstones.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import mode

from nmstream.app import app, settings
from nmstream.config.events import ResourceEvent
from nmstream.config.view import ConfigReader, ConfigView, topic_value
from nmstream.topics import CONFIG, guard

log = logging.getLogger(__name__)

LEADER_CHECK_INTERVAL = 1.0


class Source(Protocol):
    """What the directory source and the Kubernetes watcher both offer."""

    synced: asyncio.Event

    async def run(self) -> None:
        """Emit the initial state, set ``synced``, then follow changes."""

    async def stop(self) -> None:
        """Stop following."""


@dataclass
class ConfigState:
    """This worker's view, the reader that keeps it current, and (on the leader) the source."""

    view: ConfigView
    reader: ConfigReader
    source: Source | None = None

    def source_problems(self) -> dict[str, list[str]]:
        """Files the leader's directory source could not read, with the reasons."""
        problems: dict[str, list[str]] = getattr(self.source, "problems", {})
        return problems


_view = ConfigView(secret_namespace=settings.namespace)
state = ConfigState(_view, ConfigReader(settings.bootstrap_servers, CONFIG.name, _view))


def make_source(emit: Any) -> Source | None:
    """The configured source, or None when the worker has none."""
    if settings.config_dir is not None:
        from nmstream.config.directory import DirectorySource

        return DirectorySource(settings.config_dir, emit)
    if settings.kubernetes:
        from nmstream.config.kube import KubeWatcher, load_api_client

        return KubeWatcher(load_api_client(), emit, secret_namespace=settings.secret_namespace)
    return None


@app.service
class ConfigService(mode.Service):
    """Keeps this worker's view current and, on the leader, the topic current."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.published: set[str] = set()
        self.publish_failed = False

    async def _publish(self, event: ResourceEvent) -> None:
        """Write one change to the topic and wait for Kafka's ack."""
        try:
            producer: Any = app.producer
            future = await producer.send(CONFIG.name, event.key.encode(), topic_value(event),
                                         None, None, None)
            await future
        except Exception as exc:  # the source restarts and republishes everything
            log.warning("cannot publish %s (%s); will resync", event.key, exc)
            self.publish_failed = True
            return
        if event.type == "DELETED":
            self.published.discard(event.key)
        else:
            self.published.add(event.key)

    async def _tombstone_vanished(self) -> None:
        """After a fresh start of the source: delete what the view has and the source lacks."""
        await state.reader.synced.wait()
        for key in set(state.view.objects) | set(state.view.problems):
            if key not in self.published:
                kind, namespace, name = key.split("/", 2)
                await self._publish(ResourceEvent("DELETED", kind, name, namespace or None))

    @mode.Service.task
    async def _follow(self) -> None:
        await guard.ready.wait()
        await state.reader.run()

    @mode.Service.task
    async def _lead(self) -> None:
        task: asyncio.Task[None] | None = None
        while not self.should_stop:
            leading = app.is_leader() and guard.ready.is_set()
            if task is not None and (not leading or self.publish_failed or task.done()):
                log.info("stopping configuration source (leader=%s)", leading)
                if state.source is not None:
                    await state.source.stop()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                state.source, task = None, None
            if leading and task is None:
                self.published.clear()
                self.publish_failed = False
                state.source = make_source(self._publish)
                if state.source is not None:
                    log.info("leader: starting configuration source")
                    task = asyncio.ensure_future(self._run_source(state.source))
            await self.sleep(LEADER_CHECK_INTERVAL)
        if state.source is not None:
            await state.source.stop()

    async def _run_source(self, source: Source) -> None:
        """Run the source; once it listed everything, tombstone what vanished meanwhile."""
        runner = asyncio.ensure_future(source.run())
        synced = asyncio.ensure_future(source.synced.wait())
        try:
            await asyncio.wait({runner, synced}, return_when=asyncio.FIRST_COMPLETED)
            if synced.done():
                await self._tombstone_vanished()
            await runner
        finally:
            synced.cancel()
            runner.cancel()
