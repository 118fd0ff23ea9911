"""The watcher with the real Kubernetes client against a loopback protocol server."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator
from typing import Any

import pytest
import urllib3

from nmstream.config.events import ResourceEvent
from nmstream.config.kube import KubeWatcher, api_client_for
from tests.kube_server import KubeServer

API = "notification.kubesphere.io/v2alpha1"


def email_receiver(name: str, to: str = "a@example.org") -> dict[str, Any]:
    return {"apiVersion": API, "kind": "EmailReceiver",
            "metadata": {"name": name, "labels": {"type": "global"}}, "spec": {"to": [to]}}


def secret(name: str, value: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": "kubesphere-monitoring-system"},
            "stringData": {"password": value}}


class Folded:
    """Folds the watcher's events into a view (key → object), as the config topic does."""

    def __init__(self) -> None:
        self.view: dict[str, dict[str, Any]] = {}
        self.events: list[ResourceEvent] = []
        self.changed = asyncio.Event()

    async def __call__(self, event: ResourceEvent) -> None:
        self.events.append(event)
        if event.type == "DELETED":
            self.view.pop(event.key, None)
        else:
            assert event.obj is not None
            self.view[event.key] = event.obj
        self.changed.set()

    async def until(self, check: Any, within: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while not check():
            remaining = deadline - asyncio.get_running_loop().time()
            assert remaining > 0, f"view never matched; view={sorted(self.view)}"
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.2))


def versions(view: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {k: v["metadata"]["resourceVersion"] for k, v in view.items()}


@pytest.fixture
def server() -> Any:
    s = KubeServer().start()
    s.apply(email_receiver("global-email"))
    s.apply({"apiVersion": API, "kind": "EmailConfig",
             "metadata": {"name": "default-email", "labels": {"type": "default"}},
             "spec": {"from": "a@example.org", "smartHost": {"host": "127.0.0.1", "port": "25"}}})
    s.apply(secret("mail", "v1"))
    s.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "admin", "namespace": "ns1"},
             "subjects": [{"kind": "User", "name": "alice"}],
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "x"}})
    yield s
    s.stop()


@pytest.fixture
async def watching(server: KubeServer) -> AsyncIterator[tuple[KubeWatcher, Folded]]:
    folded = Folded()
    watcher = KubeWatcher(api_client_for(server.url), folded, watch_timeout=30,
                          backoff_initial=0.1, backoff_max=0.5)
    task = asyncio.ensure_future(watcher.run())
    await asyncio.wait_for(watcher.synced.wait(), 10)
    yield watcher, folded
    started = time.monotonic()
    await watcher.stop()
    try:
        await asyncio.wait_for(asyncio.shield(task), 5)
    except TimeoutError:
        stacks = [f"{t.name}:\n" + "".join(traceback.format_stack(sys._current_frames()[t.ident]))
                  for t in threading.enumerate() if t.name.startswith("kube-watch") and t.ident]
        raise AssertionError("\n".join(stacks)) from None
    assert time.monotonic() - started < 3
    assert not [t for t in threading.enumerate() if t.name.startswith("kube-watch")]
    assert versions(folded.view) == versions(server.list_objects())


async def test_initial_list_emits_every_object(
    server: KubeServer, watching: tuple[KubeWatcher, Folded]
) -> None:
    _, folded = watching
    assert sorted(folded.view) == [
        "EmailConfig//default-email", "EmailReceiver//global-email",
        "RoleBinding/ns1/admin", "Secret/kubesphere-monitoring-system/mail"]
    assert {e.type for e in folded.events} == {"ADDED"}
    assert folded.view["EmailReceiver//global-email"]["kind"] == "EmailReceiver"


async def test_add_modify_delete_and_secret_rotation_arrive(
    server: KubeServer, watching: tuple[KubeWatcher, Folded]
) -> None:
    _, folded = watching
    server.apply(email_receiver("new"))
    await folded.until(lambda: "EmailReceiver//new" in folded.view)
    server.apply(email_receiver("new", to="b@example.org"))
    await folded.until(lambda: folded.view["EmailReceiver//new"]["spec"]["to"] == [
        "b@example.org"])
    server.apply(secret("mail", "v2"))
    key = "Secret/kubesphere-monitoring-system/mail"
    await folded.until(lambda: folded.view[key]["data"]["password"] == "djI=")  # base64 "v2"
    server.delete("EmailReceiver", "new")
    await folded.until(lambda: "EmailReceiver//new" not in folded.view)
    kinds = [(e.type, e.key) for e in folded.events[4:]]
    assert kinds == [("ADDED", "EmailReceiver//new"), ("MODIFIED", "EmailReceiver//new"),
                     ("MODIFIED", key), ("DELETED", "EmailReceiver//new")]


async def test_gone_410_relists_and_reports_what_changed_meanwhile(
    server: KubeServer, watching: tuple[KubeWatcher, Folded]
) -> None:
    _, folded = watching
    lists_before = len([r for r in server.requests if "watch=" not in r])
    server.stop()  # changes happen while the watcher is cut off...
    server.delete("EmailReceiver", "global-email")
    server.apply(email_receiver("appeared"))
    server.apply(secret("mail", "rotated"))
    server.expire_history()  # ...and the history it would resume from is gone
    server.start()
    await folded.until(lambda: "EmailReceiver//appeared" in folded.view
                       and "EmailReceiver//global-email" not in folded.view, within=10)
    key = "Secret/kubesphere-monitoring-system/mail"
    await folded.until(lambda: folded.view[key]["metadata"]["resourceVersion"]
                       == server.list_objects()[key]["metadata"]["resourceVersion"])
    relists = [r for r in server.requests if "watch=" not in r][lists_before:]
    assert relists, "no re-list after 410"
    deleted = [e for e in folded.events if e.type == "DELETED"]
    assert [e.key for e in deleted] == ["EmailReceiver//global-email"]
    await asyncio.sleep(1)
    assert len(server.watch_requests()) < 60, "watcher busy-loops"


async def test_stop_right_after_a_watch_ended_is_quiet(server: KubeServer) -> None:
    """A watch whose stream just ended gave its connection back before its reader forgot it:
    stopping then has nothing to interrupt, and must not fail (a race the suite once hit)."""
    watcher = KubeWatcher(api_client_for(server.url), Folded())
    ended = urllib3.PoolManager().request("GET", f"{server.url}/api/v1/secrets",
                                          preload_content=False)
    ended.read()
    ended.release_conn()
    watcher._responses.add(ended)
    await watcher.stop()


async def test_open_watch_expiring_relists(
    server: KubeServer, watching: tuple[KubeWatcher, Folded]
) -> None:
    _, folded = watching
    server.expire_history()
    server.apply(email_receiver("after-expiry"))
    await folded.until(lambda: "EmailReceiver//after-expiry" in folded.view)


async def test_dropped_connections_reconnect_and_resume(
    server: KubeServer, watching: tuple[KubeWatcher, Folded]
) -> None:
    _, folded = watching
    await asyncio.sleep(0.3)
    server.drop_connections()
    server.apply(email_receiver("while-dropped"))
    await folded.until(lambda: "EmailReceiver//while-dropped" in folded.view)
    server.drop_connections()
    await asyncio.sleep(0.5)
    server.apply(email_receiver("later"))
    await folded.until(lambda: "EmailReceiver//later" in folded.view)
    assert [e.type for e in folded.events if e.key == "EmailReceiver//while-dropped"] == ["ADDED"]


async def test_bookmarks_advance_the_resource_version(
    server: KubeServer, watching: tuple[KubeWatcher, Folded]
) -> None:
    assert watching[0].synced.is_set()
    await asyncio.sleep(0.3)
    server.apply(secret("other", "x"))  # moves the global version past the receivers'
    server.send_bookmarks()
    await asyncio.sleep(0.3)
    server.drop_connections()
    await asyncio.sleep(0.5)
    resumed = [r for r in server.watch_requests() if "emailreceivers" in r][-1]
    assert f"resourceVersion={server.version}" in resumed
