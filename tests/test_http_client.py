"""The channels' HTTP client against a loopback server that writes scripted raw answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import pytest

from nmstream.channels import http
from nmstream.channels.base import SendContext, Verdict, bounded_send
from nmstream.channels.http import ConnectError, HttpClient, ProtocolError, RequestError
from nmstream.channels.webhook import WebhookNotifier
from tests.channel_helpers import notification_for, secrets_of

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Scripted:
    """Answers each request with ``answer(n)`` (n counts requests from 0); records the requests
    and how many connections were opened."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.connections = 0
        self.answer: Callable[[int], bytes | None] = lambda n: OK
        self.close_after_answer = False
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *fields = head.decode().split("\r\n")[:-2]
                headers = {k: v.strip() for k, v in (f.split(":", 1) for f in fields)}
                body = await reader.readexactly(int(headers.get("Content-Length", "0")))
                self.requests.append((line, headers, body))
                answer = self.answer(len(self.requests) - 1)
                if answer is None:  # hang up without answering
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[tuple[Scripted, str]]:
    scripted = Scripted()
    listening = await asyncio.start_server(scripted.handle, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    yield scripted, f"http://127.0.0.1:{port}"
    listening.close()
    for writer in scripted.writers:
        writer.close()


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    pooled = HttpClient()
    yield pooled
    await pooled.close()


async def test_requests_share_one_kept_alive_connection(
    server: tuple[Scripted, str], client: HttpClient
) -> None:
    scripted, url = server
    for i in range(3):
        answer = await client.request("POST", f"{url}/hook?x=1", body=b"abc",
                                      headers={"X-Id": str(i)}, params={"y": "2 3"})
        assert (answer.status, answer.body) == (200, b"ok")
    assert scripted.connections == 1
    line, headers, body = scripted.requests[2]
    assert line == "POST /hook?x=1&y=2+3 HTTP/1.1"
    assert headers["Host"] == url.removeprefix("http://")
    assert (headers["X-Id"], headers["Content-Length"], body) == ("2", "3", b"abc")
    assert (headers["User-Agent"], headers["Accept"]) == ("nmstream", "*/*")


async def test_json_body_and_answer(server: tuple[Scripted, str], client: HttpClient) -> None:
    scripted, url = server
    scripted.answer = lambda n: (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                 b'Content-Length: 12\r\n\r\n{"ok": "\xc3\xa9"}')
    answer = await client.request("POST", url + "/api", json={"text": "é"})
    assert answer.json() == {"ok": "é"}
    _, headers, body = scripted.requests[0]
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"text": "é"}


async def test_chunked_and_close_delimited_answers(
    server: tuple[Scripted, str], client: HttpClient
) -> None:
    scripted, url = server
    scripted.answer = lambda n: (
        b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\n"
        b"4\r\nslow\r\n5\r\n down\r\n0\r\n\r\n")
    answer = await client.request("GET", url + "/a")
    assert (answer.status, answer.text(), answer.headers["retry-after"]) == (
        503, "slow down", "7")
    # HTTP/1.0 style: no length, the body ends with the connection
    scripted.answer = lambda n: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"
    scripted.close_after_answer = True
    answer = await client.request("GET", url + "/b")
    assert (answer.status, answer.text()) == (200, "until the end")
    assert scripted.connections == 1
    scripted.close_after_answer = False
    scripted.answer = lambda n: OK
    assert (await client.request("GET", url + "/c")).status == 200
    assert scripted.connections == 2  # the closed connection was not reused


async def test_informational_answers_are_skipped(
    server: tuple[Scripted, str], client: HttpClient
) -> None:
    scripted, url = server
    scripted.answer = lambda n: b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + OK
    assert (await client.request("POST", url)).body == b"ok"


async def test_a_connection_the_server_closed_while_idle_is_replaced(
    server: tuple[Scripted, str], client: HttpClient
) -> None:
    scripted, url = server
    assert (await client.request("POST", url)).status == 200
    for writer in scripted.writers:  # the server's keep-alive timeout
        writer.close()
    await asyncio.sleep(0.05)
    assert (await client.request("POST", url)).status == 200
    assert scripted.connections == 2


async def test_a_reused_connection_lost_before_any_answer_is_retried_once(
    server: tuple[Scripted, str], client: HttpClient
) -> None:
    scripted, url = server
    # the second request arrives on the kept connection as the server drops it
    scripted.answer = lambda n: None if n == 1 else OK
    assert (await client.request("POST", url, body=b"1")).status == 200
    assert (await client.request("POST", url, body=b"2")).status == 200
    assert [body for _, _, body in scripted.requests] == [b"1", b"2", b"2"]
    assert scripted.connections == 2
    # on a new connection the loss is the caller's to handle (retryable for a notifier)
    scripted.answer = lambda n: None
    fresh = HttpClient()
    with pytest.raises(ProtocolError, match="closed the connection before answering"):
        await fresh.request("POST", url, body=b"3")
    await fresh.close()
    assert [body for _, _, body in scripted.requests][-1] == b"3"


async def test_malformed_and_truncated_answers_are_oserrors(
    server: tuple[Scripted, str], client: HttpClient
) -> None:
    scripted, url = server
    scripted.answer = lambda n: b"SMTP/2 250 hello\r\n\r\n"
    with pytest.raises(ProtocolError, match="malformed"):
        await client.request("POST", url)
    scripted.answer = lambda n: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"
    scripted.close_after_answer = True
    with pytest.raises(ProtocolError, match="before answering"):
        await client.request("POST", url)


async def test_redirects_are_answers(server: tuple[Scripted, str]) -> None:
    scripted, url = server
    scripted.answer = lambda n: (b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\n"
                                 b"Content-Length: 5\r\n\r\nmoved")
    notification = notification_for("webhook", "WebhookReceiver", {"url": url + "/x"}, "{}")
    notifier = WebhookNotifier()
    try:
        outcome = await bounded_send(notifier, notification, SendContext(None, secrets_of({}), 5))
    finally:
        await notifier.close()
    assert (outcome.verdict, outcome.reason) == (Verdict.PERMANENT, "HTTP 302: moved")
    assert len(scripted.requests) == 1


async def test_a_large_answer_is_cut_and_the_connection_still_reused(
    server: tuple[Scripted, str], client: HttpClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted, url = server
    monkeypatch.setattr(http, "MAX_BODY", 100)
    scripted.answer = lambda n: b"HTTP/1.1 500 Err\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000
    answer = await client.request("POST", url)
    assert (answer.status, len(answer.body)) == (500, 100)
    scripted.answer = lambda n: OK
    assert (await client.request("POST", url)).body == b"ok"
    assert scripted.connections == 1


async def test_a_timeout_closes_the_connection(
    server: tuple[Scripted, str], client: HttpClient
) -> None:
    scripted, url = server
    scripted.answer = lambda n: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"  # no body
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await client.request("POST", url)
    scripted.answer = lambda n: OK
    assert (await client.request("POST", url)).body == b"ok"
    assert scripted.connections == 2  # the half-answered one was not reused


async def test_idle_connections_are_not_reused_after_the_idle_timeout(
    server: tuple[Scripted, str], client: HttpClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted, url = server
    await client.request("POST", url)
    monkeypatch.setattr(http, "IDLE_TIMEOUT", 0.0)
    await client.request("POST", url)
    assert scripted.connections == 2


async def test_bad_urls_and_header_values_are_refused(client: HttpClient) -> None:
    with pytest.raises(RequestError, match="not an http"):
        await client.request("POST", "ftp://127.0.0.1/x")
    with pytest.raises(RequestError, match="line break"):
        await client.request("POST", "http://127.0.0.1:1/", headers={"X-A": "b\r\nX-Evil: 1"})


async def test_a_header_that_cannot_be_sent_is_a_permanent_outcome(
    server: tuple[Scripted, str]
) -> None:
    scripted, url = server
    targets = {"url": url + "/x",
               "httpConfig": {"bearerToken": {"name": "s", "key": "token"}}}
    notification = notification_for("webhook", "WebhookReceiver", targets, "{}")
    ctx = SendContext(None, secrets_of({"token": "ab\ncd"}), 5)
    notifier = WebhookNotifier()
    try:
        outcome = await bounded_send(notifier, notification, ctx)
    finally:
        await notifier.close()
    assert outcome.verdict == Verdict.PERMANENT
    assert outcome.reason == "header 'Authorization' contains a line break"
    assert scripted.requests == []


async def test_an_answer_that_is_not_json_is_a_protocol_error(
    server: tuple[Scripted, str], client: HttpClient
) -> None:
    scripted, url = server
    scripted.answer = lambda n: (b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n<html>proxy<")
    answer = await client.request("GET", url + "/api")
    with pytest.raises(ProtocolError, match=r"HTTP 200 answer is not JSON .*: <html>proxy<"):
        answer.json()
    _, headers, _ = scripted.requests[0]
    assert "Content-Length" not in headers  # a GET without a body


async def test_credentials_in_the_url_become_basic_auth(
    server: tuple[Scripted, str], client: HttpClient
) -> None:
    scripted, url = server
    await client.request("POST", url.replace("http://", "http://am:s3cret@") + "/x")
    _, headers, _ = scripted.requests[0]
    assert headers["Authorization"] == "Basic YW06czNjcmV0"


async def test_307_and_308_are_followed_with_the_same_request(
    server: tuple[Scripted, str], client: HttpClient
) -> None:
    scripted, url = server
    other = Scripted()
    listening = await asyncio.start_server(other.handle, "127.0.0.1", 0)
    elsewhere = f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}/there"
    scripted.answer = lambda n: {
        0: b"HTTP/1.1 308 Permanent Redirect\r\nLocation: /moved?a=1\r\nContent-Length: 0\r\n\r\n",
        1: (b"HTTP/1.1 307 Temporary Redirect\r\nLocation: " + elsewhere.encode()
            + b"\r\nContent-Length: 0\r\n\r\n"),
    }[n]
    try:
        answer = await client.request("POST", url + "/hook", body=b"payload",
                                      headers={"Authorization": "Bearer t"})
    finally:
        listening.close()
    assert (answer.status, answer.body) == (200, b"ok")
    (first, _, first_body), (second, second_headers, second_body) = scripted.requests
    assert (first, second) == ("POST /hook HTTP/1.1", "POST /moved?a=1 HTTP/1.1")
    assert first_body == second_body == b"payload"
    assert second_headers["Authorization"] == "Bearer t"  # same origin
    ((line, headers, body),) = other.requests
    assert (line, body) == ("POST /there HTTP/1.1", b"payload")
    assert "Authorization" not in headers  # another origin gets no credentials
    assert headers["Host"] == elsewhere.removeprefix("http://").removesuffix("/there")


async def test_a_redirect_loop_ends(server: tuple[Scripted, str], client: HttpClient) -> None:
    scripted, url = server
    scripted.answer = lambda n: b"HTTP/1.1 307 Again\r\nLocation: /\r\nContent-Length: 0\r\n\r\n"
    with pytest.raises(ProtocolError, match="more than 5 redirects"):
        await client.request("POST", url)
    assert len(scripted.requests) == http.MAX_REDIRECTS


async def test_a_failed_connection_names_the_server(client: HttpClient) -> None:
    from nmstream.broker import free_port

    port = free_port()
    with pytest.raises(ConnectError, match=rf"cannot connect to 127.0.0.1:{port}: "
                                           r"ConnectionRefusedError: \[Errno 111\]"):
        await client.request("POST", f"http://127.0.0.1:{port}/x")
