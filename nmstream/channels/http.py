"""The channels' HTTP client: HTTP/1.1 over keep-alive connections per origin, answers parsed by
httptools (llhttp, the parser of Node.js and uvicorn).

aiohttp's client cost 61-85 µs of CPU a request on loopback, a third of a notification's whole
cost; this one costs ~19 µs. It does what the channels need and no more: one request at a time
per connection, a body of bytes or JSON, query parameters, TLS with the channel's context,
307/308 redirects followed (other 3xx are answers: turning a POST into a GET, as browsers do,
would deliver nothing), no proxies, no compression.
"""

from __future__ import annotations

import asyncio
import base64
import json as jsonlib
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httptools
from yarl import URL

USER_AGENT = "nmstream"
#: An idle connection older than this is closed rather than reused (aiohttp's default too):
#: servers drop idle connections after a while, and a request sent just then is lost.
IDLE_TIMEOUT = 15.0
#: Idle connections kept per origin.
MAX_IDLE = 32
#: Requests sent for one call at most, following 307/308 redirects.
MAX_REDIRECTS = 6
#: An answer's body is kept up to this size (reasons and API answers are small); the rest is
#: read and dropped.
MAX_BODY = 1 << 20


class ProtocolError(OSError):
    """The server's answer is not HTTP/1.1 (or not the JSON asked for), or the connection ended
    before the answer did."""


class ConnectError(OSError):
    """No connection to the server (refused, unresolvable, TLS handshake failed)."""


class RequestError(ValueError):
    """A request that cannot be sent as asked: not an http(s) URL, a line break in a header."""


@dataclass
class Answer:
    """Status, headers (names in lower case) and body of an answer."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def text(self) -> str:
        """The body as text (UTF-8, undecodable bytes replaced)."""
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON, whatever its content type."""
        try:
            return jsonlib.loads(self.body)
        except ValueError as exc:
            raise ProtocolError(f"HTTP {self.status} answer is not JSON ({exc}): "
                                f"{self.text()[:200]}") from exc


class _Connection(asyncio.Protocol):
    """One connection: a request is written, the answer parsed as it arrives."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Answer] | None = None
        self.answer = Answer(0)
        self.chunks: list[bytes] = []
        self.size = 0
        self.heard = False  # any byte of an answer received on this connection
        self.reused = False
        self.idle_since = 0.0

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.heard = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"malformed HTTP answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.answer.status >= 200 and not self.answer.headers.get("content-length") \
                and "chunked" not in self.answer.headers.get("transfer-encoding", ""):
            self.on_message_complete()  # a body that ends with the connection
        self._fail(ProtocolError("the server closed the connection before answering"
                                 + (f": {exc}" if exc else "")))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.answer.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.answer.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self.size < MAX_BODY:
            self.chunks.append(body[:MAX_BODY - self.size])
        self.size += len(body)

    def on_message_complete(self) -> None:
        answer, self.answer, self.size = self.answer, Answer(0), 0
        answer.body, self.chunks = b"".join(self.chunks), []
        if answer.status < 200:  # 1xx: informational, the answer follows
            return
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(answer)
        if not self.parser.should_keep_alive():
            self.close()

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    async def exchange(self, request: bytes) -> Answer:
        """Write ``request`` and wait for its answer."""
        if self.transport is None:
            raise ProtocolError("the connection is closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


Origin = tuple[str, str, int, ssl.SSLContext | None]


class HttpClient:
    """Keep-alive connections per origin (scheme, host, port and TLS context)."""

    def __init__(self) -> None:
        self._idle: dict[Origin, list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._default_tls: ssl.SSLContext | None = None

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        json: Any = None,
        params: dict[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> Answer:
        """Send one request and return the answer, following 307 and 308 redirects (the same
        request again; credentials only to the same origin). Connection failures raise
        :class:`OSError` (so does an answer cut short); a connection reused and closed by the
        server before it answered anything is replaced once."""
        target = URL(url)
        if params:
            target = target.update_query(params)
        # by lower-case name: the name as written (some receivers match it case-sensitively),
        # and the value
        fields = {"user-agent": ("User-Agent", USER_AGENT), "accept": ("Accept", "*/*")}
        if target.user is not None:
            fields["authorization"] = ("Authorization",
                                       basic_auth(target.user, target.password or ""))
        if json is not None:
            body = jsonlib.dumps(json, ensure_ascii=False).encode()
            fields["content-type"] = ("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            fields[name.lower()] = (name, value)
        if body or method not in ("GET", "HEAD"):
            fields["content-length"] = ("Content-Length", str(len(body)))
        first = target.origin()
        for _ in range(MAX_REDIRECTS):
            if target.scheme not in ("http", "https") or not target.raw_host:
                raise RequestError(f"not an http(s) URL: {target}")
            fields["host"] = ("Host", _host_header(target))
            request = _serialise(method, target.raw_path_qs, fields.values()) + body
            origin = (target.scheme, target.raw_host, target.port or 80,
                      (tls or self._default_context()) if target.scheme == "https" else None)
            answer = await self._exchange(origin, request)
            location = answer.headers.get("location")
            if answer.status not in (307, 308) or not location:
                return answer
            target = target.join(URL(location))
            if target.origin() != first:
                fields.pop("authorization", None)
        raise ProtocolError(f"more than {MAX_REDIRECTS - 1} redirects from {first}")

    async def _exchange(self, origin: Origin, request: bytes) -> Answer:
        for _ in range(2):
            connection = self._take(origin) or await self._connect(origin)
            self._busy.add(connection)
            try:
                answer = await connection.exchange(request)
            except ProtocolError:
                connection.close()
                if connection.reused and not connection.heard:
                    continue
                raise
            except BaseException:
                connection.close()
                raise
            finally:
                self._busy.discard(connection)
            self._give_back(origin, connection)
            return answer
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Close every connection."""
        for connection in [*self._busy, *(c for idle in self._idle.values() for c in idle)]:
            connection.close()
        self._idle.clear()
        self._busy.clear()

    def _take(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = asyncio.get_running_loop().time()
        while idle:
            connection = idle.pop()
            if connection.open and now - connection.idle_since < IDLE_TIMEOUT:
                connection.reused, connection.heard = True, False
                return connection
            connection.close()
        return None

    async def _connect(self, origin: Origin) -> _Connection:
        _, host, port, tls = origin
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                _Connection, host.strip("[]"), port, ssl=tls,
                server_hostname=host.strip("[]") if tls is not None else None)
        except OSError as exc:  # name the server: the reason is all an operator sees
            raise ConnectError(f"cannot connect to {host}:{port}: {type(exc).__name__}: "
                               f"{exc}") from exc
        return connection

    def _give_back(self, origin: Origin, connection: _Connection) -> None:
        idle = self._idle.setdefault(origin, [])
        if not connection.open or len(idle) >= MAX_IDLE:
            connection.close()
            return
        connection.idle_since = asyncio.get_running_loop().time()
        idle.append(connection)

    def _default_context(self) -> ssl.SSLContext:
        if self._default_tls is None:
            self._default_tls = ssl.create_default_context()
        return self._default_tls


def _host_header(url: URL) -> str:
    host = url.raw_host or ""
    if ":" in host:  # IPv6
        host = f"[{host.strip('[]')}]"
    return host if url.is_default_port() else f"{host}:{url.port}"


def basic_auth(user: str, password: str) -> str:
    """An ``Authorization`` header value for HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _serialise(method: str, path: str, fields: Iterable[tuple[str, str]]) -> bytes:
    lines = [f"{method} {path or '/'} HTTP/1.1"]
    for name, value in fields:
        if any(c in name or c in value for c in "\r\n\0"):
            raise RequestError(f"header {name!r} contains a line break")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
