"""The Kubernetes watcher: list + watch every followed kind with the official client.

Each kind is followed in a thread of its own (the client is synchronous), and events are
handed to the event loop, which never blocks. Per kind: list (emitting the difference from
what was known: ADDED / MODIFIED / DELETED), then watch from the list's resourceVersion with
bookmarks, keeping the resourceVersion current. A watch that ends normally is resumed from
the last resourceVersion; 410 Gone (history compacted) leads to a re-list, so objects deleted
while disconnected are reported; other failures reconnect with capped, jittered backoff.
The watch loop reads the event stream itself (the client's ``Watch`` helper retries a stale
resourceVersion once and cannot be interrupted), so ``stop()`` returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, config
from kubernetes.watch.watch import iter_resp_lines

from nmstream.config.events import (
    ALL_TYPES,
    ROLE_BINDING,
    SECRET,
    EventType,
    ResourceEvent,
    ResourceType,
)

log = logging.getLogger(__name__)

Emit = Callable[[ResourceEvent], Coroutine[Any, Any, None]]
GONE = 410
NOT_FOUND = 404
LIST_TIMEOUT = 30.0


class WatchExpired(Exception):
    """The server answered 410 Gone: the resourceVersion is too old, list again."""


def load_api_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the local kubeconfig."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


def api_client_for(host: str, token: str | None = None) -> client.ApiClient:
    """A client for one API server URL (tests and explicit set-ups)."""
    configuration = client.Configuration()
    configuration.host = host
    if token:
        configuration.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(configuration)


def _key(rtype: ResourceType, obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return ResourceEvent("ADDED", rtype.kind, meta["name"], meta.get("namespace")).key


@dataclass
class _KindState:
    """What the watcher knows of one kind: objects by key, and where to resume (None: list)."""

    known: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: str | None = None


def _shut(response: Any) -> None:
    """Interrupt a blocked read of a watch; one whose stream just ended has already given its
    connection back (urllib3 then refuses), and needs no interrupting."""
    with contextlib.suppress(RuntimeError, OSError):
        response.shutdown()


class KubeWatcher:
    """Follows the notification-manager kinds, Secrets and RoleBindings of a cluster."""

    def __init__(
        self,
        api_client: client.ApiClient,
        emit: Emit,
        types: Sequence[ResourceType] = ALL_TYPES,
        *,
        secret_namespace: str | None = None,
        watch_timeout: int = 300,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self.api = api_client
        self.emit = emit
        self.types = tuple(types)
        self.secret_namespace = secret_namespace
        self.watch_timeout = watch_timeout
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.synced = asyncio.Event()
        self._stop = threading.Event()
        self._responses: set[Any] = set()
        self._lock = threading.Lock()
        self._unsynced = len(self.types)
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- requests ----------------------------------------------------------------------

    def _call(self, rtype: ResourceType, **kwargs: Any) -> Any:
        """The list (or, with ``watch=True``, watch) request for a kind, unparsed."""
        kwargs.update(_preload_content=False)
        if rtype == SECRET:
            core = client.CoreV1Api(self.api)
            if self.secret_namespace:
                return core.list_namespaced_secret(self.secret_namespace, **kwargs)
            return core.list_secret_for_all_namespaces(**kwargs)
        if rtype == ROLE_BINDING:
            return client.RbacAuthorizationV1Api(self.api).list_role_binding_for_all_namespaces(
                **kwargs
            )
        return client.CustomObjectsApi(self.api).list_cluster_custom_object(
            rtype.group, rtype.version, rtype.plural, **kwargs
        )

    # --- event hand-over ---------------------------------------------------------------

    def _emit(self, event: ResourceEvent) -> None:
        """Run ``emit`` on the loop and wait for it: per-kind order, and back-pressure."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self.emit(event), self._loop)
        while not self._stop.is_set():
            try:
                future.result(timeout=0.5)
                return
            except TimeoutError:
                continue
        future.cancel()

    def _mark_synced(self) -> None:
        with self._lock:
            self._unsynced -= 1
            done = self._unsynced == 0
        if done and self._loop is not None:
            self._loop.call_soon_threadsafe(self.synced.set)

    # --- one kind ----------------------------------------------------------------------

    def _relist(self, rtype: ResourceType, state: _KindState) -> None:
        """List a kind and emit the difference from what was known."""
        try:
            response = self._call(rtype, _request_timeout=LIST_TIMEOUT)
            body = json.loads(response.data)
        except client.ApiException as exc:
            if exc.status != NOT_FOUND:
                raise
            log.warning("%s is not served by the API server (CRD missing?)", rtype.kind)
            body = {"metadata": {"resourceVersion": ""}, "items": []}
        current: dict[str, dict[str, Any]] = {}
        for item in body.get("items") or []:
            item.setdefault("apiVersion", rtype.api_version)
            item.setdefault("kind", rtype.kind)
            current[_key(rtype, item)] = item
        for key, obj in current.items():
            old = state.known.get(key)
            if old is None:
                self._emit_change("ADDED", rtype, obj)
            elif old["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self._emit_change("MODIFIED", rtype, obj)
        for key in state.known.keys() - current.keys():
            self._emit_change("DELETED", rtype, state.known[key])
        state.known = current
        state.version = body.get("metadata", {}).get("resourceVersion") or ""

    def _emit_change(self, kind: EventType, rtype: ResourceType, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self._emit(ResourceEvent(kind, rtype.kind, meta["name"], meta.get("namespace"), obj))

    def _watch(self, rtype: ResourceType, state: _KindState) -> None:
        """Follow one watch request until it ends, keeping ``state`` current event by event."""
        response = self._call(
            rtype,
            watch=True,
            resource_version=state.version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout,
            _request_timeout=(LIST_TIMEOUT, self.watch_timeout + 30),
        )
        with self._lock:
            self._responses.add(response)
            if self._stop.is_set():  # stop() ran between the request and now
                _shut(response)
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if self._stop.is_set() or not line:
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    if obj.get("code") == GONE:
                        raise WatchExpired(obj.get("message", "resourceVersion too old"))
                    raise client.ApiException(status=obj.get("code"), reason=obj.get("message"))
                version = obj.get("metadata", {}).get("resourceVersion")
                if event["type"] != "BOOKMARK":
                    self._apply(rtype, state, event["type"], obj)
                state.version = version or state.version
        finally:
            with self._lock:
                self._responses.discard(response)
            response.release_conn()

    def _apply(
        self, rtype: ResourceType, state: _KindState, kind: EventType, obj: dict[str, Any]
    ) -> None:
        """Emit a watch event unless it repeats what is known (a resumed watch may replay)."""
        obj.setdefault("apiVersion", rtype.api_version)
        obj.setdefault("kind", rtype.kind)
        key = _key(rtype, obj)
        old = state.known.get(key)
        if kind == "DELETED":
            if state.known.pop(key, None) is None:
                return
        elif old is not None and old["metadata"].get("resourceVersion") == obj["metadata"].get(
            "resourceVersion"
        ):
            return
        else:
            kind = "MODIFIED" if old is not None else "ADDED"
            state.known[key] = obj
        self._emit_change(kind, rtype, obj)

    def _follow(self, rtype: ResourceType) -> None:
        """List + watch one kind until stopped (runs in its own thread)."""
        state = _KindState()
        delay = self.backoff_initial
        synced = False
        while not self._stop.is_set():
            try:
                if state.version is None:
                    self._relist(rtype, state)
                    if not synced:
                        synced = True
                        self._mark_synced()
                self._watch(rtype, state)
                delay = self.backoff_initial
            except WatchExpired as exc:
                log.info("%s watch expired (%s): listing again", rtype.kind, exc)
                state.version = None
            except Exception as exc:  # network, 5xx, decode: reconnect with backoff
                if self._stop.is_set():
                    return
                wait = delay * random.uniform(0.5, 1.0)
                log.warning("%s watch failed (%s); reconnecting in %.1fs", rtype.kind, exc, wait)
                self._stop.wait(wait)
                delay = min(delay * 2, self.backoff_max)

    # --- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        """Follow every kind until :meth:`stop`; ``synced`` once every kind was listed."""
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        executor = ThreadPoolExecutor(len(self.types), thread_name_prefix="kube-watch")
        try:
            await asyncio.gather(
                *(self._loop.run_in_executor(executor, self._follow, t) for t in self.types)
            )
        finally:
            self._stop.set()
            self._interrupt()
            await asyncio.shield(asyncio.to_thread(executor.shutdown, True))

    async def stop(self) -> None:
        """Stop every watch now: blocked reads are interrupted."""
        self._stop.set()
        self._interrupt()

    def _interrupt(self) -> None:
        with self._lock:
            responses = list(self._responses)
        for response in responses:
            _shut(response)
