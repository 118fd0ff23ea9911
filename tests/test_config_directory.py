"""Directory mode: real files, the real polling loop, the same events a watch gives."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nmstream.config.directory import DirectorySource
from nmstream.config.events import ResourceEvent

API = "notification.kubesphere.io/v2alpha1"


def receiver(name: str, url: str = "http://127.0.0.1:9/x") -> dict[str, Any]:
    return {"apiVersion": API, "kind": "WebhookReceiver",
            "metadata": {"name": name, "labels": {"type": "global"}}, "spec": {"url": url}}


def write(path: Path, *docs: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump_all(docs))


class Recorder:
    """Collects emitted events; ``take`` waits for the next ``n``."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[ResourceEvent] = asyncio.Queue()

    async def __call__(self, event: ResourceEvent) -> None:
        await self.events.put(event)

    async def take(self, n: int, within: float = 3.0) -> list[tuple[str, str]]:
        got = [await asyncio.wait_for(self.events.get(), within) for _ in range(n)]
        return sorted((e.type, e.key) for e in got)

    async def quiet(self, seconds: float = 0.5) -> None:
        await asyncio.sleep(seconds)
        assert self.events.empty(), f"unexpected events: {self.events}"


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[DirectorySource, Recorder, Path]]:
    write(tmp_path / "a.yaml", receiver("one"), receiver("two"))
    write(tmp_path / "b.yml", {"apiVersion": "v1", "kind": "Secret",
                               "metadata": {"name": "s", "namespace": "ns"},
                               "data": {"a": base64.b64encode(b"old").decode()},
                               "stringData": {"token": "plain"}})
    recorder = Recorder()
    source = DirectorySource(tmp_path, recorder, poll_interval=0.1)
    task = asyncio.ensure_future(source.run())
    await asyncio.wait_for(source.synced.wait(), 3)
    yield source, recorder, tmp_path
    await source.stop()
    await asyncio.wait_for(task, 3)


async def test_initial_scan_adds_every_object(
    running: tuple[DirectorySource, Recorder, Path]
) -> None:
    _, recorder, _ = running
    assert await recorder.take(3) == [
        ("ADDED", "Secret/ns/s"), ("ADDED", "WebhookReceiver//one"),
        ("ADDED", "WebhookReceiver//two")]


async def test_secret_string_data_becomes_base64_data(tmp_path: Path) -> None:
    events: list[ResourceEvent] = []

    async def keep(event: ResourceEvent) -> None:
        events.append(event)

    write(tmp_path / "s.yaml", {"apiVersion": "v1", "kind": "Secret",
                                "metadata": {"name": "s"},
                                "data": {"a": base64.b64encode(b"x").decode(),
                                         "b": base64.b64encode(b"old").decode()},
                                "stringData": {"b": "new"}})
    await DirectorySource(tmp_path, keep).scan()
    (event,) = events
    assert event.key == "Secret/default/s"
    assert event.obj is not None
    assert "stringData" not in event.obj
    assert {k: base64.b64decode(v) for k, v in event.obj["data"].items()} == {
        "a": b"x", "b": b"new"}


async def test_edit_add_and_delete_files(running: tuple[DirectorySource, Recorder, Path]) -> None:
    _, recorder, path = running
    await recorder.take(3)
    write(path / "a.yaml", receiver("one", "http://127.0.0.1:9/changed"), receiver("two"))
    assert await recorder.take(1) == [("MODIFIED", "WebhookReceiver//one")]
    await recorder.quiet()

    write(path / "c.yaml", receiver("three"))
    assert await recorder.take(1) == [("ADDED", "WebhookReceiver//three")]

    write(path / "a.yaml", receiver("one", "http://127.0.0.1:9/changed"))
    assert await recorder.take(1) == [("DELETED", "WebhookReceiver//two")]

    (path / "a.yaml").unlink()
    assert await recorder.take(1) == [("DELETED", "WebhookReceiver//one")]
    await recorder.quiet()


async def test_invalid_yaml_keeps_the_files_objects_and_names_file_and_line(
    running: tuple[DirectorySource, Recorder, Path]
) -> None:
    source, recorder, path = running
    await recorder.take(3)
    (path / "a.yaml").write_text("apiVersion: x\nkind: a: b\nmetadata: {}\n")
    await asyncio.sleep(0.4)
    (message,) = source.problems[str(path / "a.yaml")]
    assert "a.yaml" in message
    assert "line 2" in message
    await recorder.quiet(0.2)  # no DELETED for one and two

    write(path / "c.yaml", receiver("three"))  # the rest keeps working
    assert await recorder.take(1) == [("ADDED", "WebhookReceiver//three")]

    write(path / "a.yaml", receiver("one"))
    assert await recorder.take(1) == [("DELETED", "WebhookReceiver//two")]
    assert str(path / "a.yaml") not in source.problems


@pytest.mark.parametrize(("doc", "field"), [
    ({"apiVersion": API, "kind": "WebhookReceiver", "metadata": {}}, "metadata.name"),
    ({"apiVersion": API, "kind": "WebhookReceiver"}, "metadata"),
    ({"kind": "WebhookReceiver", "metadata": {"name": "x"}}, "apiVersion"),
    (["not", "a", "mapping"], "not a mapping"),
])
async def test_structural_problems_name_file_document_and_field(
    tmp_path: Path, doc: Any, field: str
) -> None:
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump_all([receiver("ok"), doc]))
    write(tmp_path / "good.yaml", receiver("fine"))
    events: list[ResourceEvent] = []

    async def keep(event: ResourceEvent) -> None:
        events.append(event)

    source = DirectorySource(tmp_path, keep)
    await source.scan()
    (message,) = source.problems[str(tmp_path / "bad.yaml")]
    assert "document 1" in message
    assert field in message
    assert [e.key for e in events] == ["WebhookReceiver//fine"]


async def test_list_kind_is_expanded_and_unknown_kinds_are_skipped(tmp_path: Path) -> None:
    write(tmp_path / "list.yaml", {"apiVersion": "v1", "kind": "List",
                                   "items": [receiver("x"), receiver("y"),
                                             {"apiVersion": "v1", "kind": "ConfigMap",
                                              "metadata": {"name": "cm"}}]})
    events: list[ResourceEvent] = []

    async def keep(event: ResourceEvent) -> None:
        events.append(event)

    await DirectorySource(tmp_path, keep).scan()
    assert sorted(e.key for e in events) == ["WebhookReceiver//x", "WebhookReceiver//y"]


async def test_duplicate_objects_later_file_wins_and_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", receiver("dup", "http://127.0.0.1:9/a"))
    write(tmp_path / "b.yaml", receiver("dup", "http://127.0.0.1:9/b"))
    events: list[ResourceEvent] = []

    async def keep(event: ResourceEvent) -> None:
        events.append(event)

    source = DirectorySource(tmp_path, keep)
    await source.scan()
    (event,) = events
    assert event.obj is not None and event.obj["spec"]["url"].endswith("/b")
    assert "also defined in" in source.problems[str(tmp_path / "b.yaml")][0]


async def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    async def keep(event: ResourceEvent) -> None:
        raise AssertionError(event)

    with pytest.raises(FileNotFoundError, match="nowhere"):
        await DirectorySource(tmp_path / "nowhere", keep).run()
