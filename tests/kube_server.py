"""A loopback server speaking the slice of the Kubernetes REST API the watcher uses.

List (with ``metadata.resourceVersion``) and watch (newline-delimited JSON events from a
resourceVersion, bookmarks, ``ERROR`` 410 once the history is compacted) for the
notification-manager kinds, Secrets and RoleBindings. Test hooks change objects, compact the
history, cut open streams and restart the server; it runs its own loop in a thread so that
synchronous and asynchronous tests can drive it alike.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from nmstream.broker import free_port
from nmstream.config.events import TYPES_BY_KIND, ResourceType

BY_PLURAL = {(t.group, t.plural): t for t in TYPES_BY_KIND.values()}


@dataclass
class _Event:
    version: int
    type: str
    rtype: ResourceType
    obj: dict[str, Any]


@dataclass(eq=False)
class _Watch:
    rtype: ResourceType
    namespace: str | None
    queue: asyncio.Queue[_Event | None]
    response: web.StreamResponse


class KubeServer:
    """Objects, a global resourceVersion, an event history and the open watches."""

    def __init__(self) -> None:
        self.port = free_port()
        self.version = 0
        self.compacted = 0
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.history: list[_Event] = []
        self.requests: list[str] = []
        self._watches: set[_Watch] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Base URL for the Kubernetes client."""
        return f"http://127.0.0.1:{self.port}"

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> KubeServer:
        """Serve on 127.0.0.1:port (the same port again after :meth:`stop`)."""
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            app = web.Application()
            app.router.add_get("/api/{version}/{plural}", self._handle)
            app.router.add_get("/api/{version}/namespaces/{namespace}/{plural}", self._handle)
            app.router.add_get("/apis/{group}/{version}/{plural}", self._handle)
            app.router.add_get(
                "/apis/{group}/{version}/namespaces/{namespace}/{plural}", self._handle
            )
            self._runner = web.AppRunner(app, shutdown_timeout=0.5)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            ready.set()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "kube server did not start"
        return self

    def stop(self) -> None:
        """Stop serving, cutting every open watch; objects and history are kept."""
        if self._loop is None:
            return

        async def shutdown() -> None:
            self._cut()
            if self._runner is not None:
                await self._runner.cleanup()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        self._call(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    def _call(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # --- test hooks ----------------------------------------------------------------------

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object (Secret ``stringData`` becomes base64 ``data``)."""
        obj = copy.deepcopy(obj)
        rtype = TYPES_BY_KIND[obj["kind"]]
        meta = obj.setdefault("metadata", {})
        if rtype.namespaced:
            meta.setdefault("namespace", "default")
        if rtype.kind == "Secret" and "stringData" in obj:
            data = obj.setdefault("data", {})
            for k, v in obj.pop("stringData").items():
                data[k] = base64.b64encode(v.encode()).decode()
        ident = (rtype.kind, meta.get("namespace") or "", meta["name"])
        old = self.objects.get(ident)
        meta["uid"] = old["metadata"]["uid"] if old else str(uuid.uuid4())
        return self._record("MODIFIED" if old else "ADDED", rtype, ident, obj)

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        """Delete an object."""
        rtype = TYPES_BY_KIND[kind]
        ident = (kind, (namespace or "default") if rtype.namespaced else "", name)
        obj = self.objects.pop(ident)
        self._record("DELETED", rtype, None, obj)

    def expire_history(self) -> None:
        """Compact the history: watches from any older resourceVersion now get 410 Gone."""
        self.compacted = self.version
        self.history.clear()
        self._broadcast(None, expire=True)

    def drop_connections(self) -> None:
        """Abort every open watch stream abruptly."""
        self._call(self._async_cut())

    def send_bookmarks(self) -> None:
        """Send a BOOKMARK with the current resourceVersion to every open watch."""
        self._broadcast(_Event(self.version, "BOOKMARK", TYPES_BY_KIND["Secret"], {}))

    def list_objects(self) -> dict[str, dict[str, Any]]:
        """Every object by ``kind/namespace/name``, as the watcher keys them."""
        return {f"{k}/{ns}/{n}": copy.deepcopy(o) for (k, ns, n), o in self.objects.items()}

    def watch_requests(self) -> list[str]:
        """The request log's watch requests."""
        return [r for r in self.requests if "watch=" in r]

    # --- internals -----------------------------------------------------------------------

    def _record(
        self, type_: str, rtype: ResourceType, ident: tuple[str, str, str] | None,
        obj: dict[str, Any],
    ) -> dict[str, Any]:
        self.version += 1
        obj = copy.deepcopy(obj)
        obj.setdefault("apiVersion", rtype.api_version)
        obj["metadata"]["resourceVersion"] = str(self.version)
        if ident is not None:
            self.objects[ident] = obj
        event = _Event(self.version, type_, rtype, obj)
        self.history.append(event)
        self._broadcast(event)
        return obj

    def _broadcast(self, event: _Event | None, expire: bool = False) -> None:
        if self._loop is None:
            return

        def put() -> None:
            for watch in list(self._watches):
                if expire or event is None:
                    watch.queue.put_nowait(None)
                elif event.type == "BOOKMARK" or (
                    event.rtype == watch.rtype and self._in_namespace(event.obj, watch.namespace)
                ):
                    watch.queue.put_nowait(event)

        self._loop.call_soon_threadsafe(put)

    async def _async_cut(self) -> None:
        self._cut()

    def _cut(self) -> None:
        for watch in list(self._watches):
            transport = watch.response._req.transport if watch.response._req else None
            if transport is not None:
                transport.abort()
        self._watches.clear()

    @staticmethod
    def _in_namespace(obj: dict[str, Any], namespace: str | None) -> bool:
        return namespace is None or obj["metadata"].get("namespace") == namespace

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path_qs)
        group = request.match_info.get("group", "")
        rtype = BY_PLURAL.get((group, request.match_info["plural"]))
        if rtype is None:
            return web.json_response({"kind": "Status", "code": 404}, status=404)
        namespace = request.match_info.get("namespace")
        if request.query.get("watch") in ("1", "true"):
            return await self._watch(request, rtype, namespace)
        items = [
            o for (kind, _, _), o in sorted(list(self.objects.items()))
            if kind == rtype.kind and self._in_namespace(o, namespace)
        ]
        return web.json_response({
            "kind": f"{rtype.kind}List", "apiVersion": rtype.api_version,
            "metadata": {"resourceVersion": str(self.version)},
            "items": [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")}
                      for o in items],
        })

    async def _watch(
        self, request: web.Request, rtype: ResourceType, namespace: str | None
    ) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or 0)
        timeout = float(request.query.get("timeoutSeconds") or 300)
        bookmarks = request.query.get("allowWatchBookmarks") in ("true", "1")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)

        async def send(type_: str, obj: dict[str, Any]) -> None:
            await response.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")

        if since and since < self.compacted:
            await send("ERROR", self._gone(since))
            return response
        watch = _Watch(rtype, namespace, asyncio.Queue(), response)
        backlog = [e for e in list(self.history) if e.version > since and e.rtype == rtype
                   and self._in_namespace(e.obj, namespace)]
        self._watches.add(watch)
        try:
            for old in backlog:
                await send(old.type, old.obj)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                try:
                    event = await asyncio.wait_for(watch.queue.get(), deadline - loop.time())
                except TimeoutError:
                    break
                if event is None:
                    await send("ERROR", self._gone(since))
                    break
                if event.type == "BOOKMARK":
                    if bookmarks:
                        await send("BOOKMARK", {"kind": rtype.kind, "apiVersion":
                                                rtype.api_version, "metadata":
                                                {"resourceVersion": str(event.version)}})
                    continue
                await send(event.type, event.obj)
            await response.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
        finally:
            self._watches.discard(watch)
        return response

    def _gone(self, since: int) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": f"too old resource version: {since} ({self.compacted})",
                "reason": "Expired", "code": 410}
