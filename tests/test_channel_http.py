"""Webhook and Slack senders against loopback HTTP(S) servers answering as the real ones do."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trustme
from aiohttp import web

from nmstream.channels.base import Outcome, SendContext, Verdict, bounded_send
from nmstream.channels.slack import SlackNotifier
from nmstream.channels.webhook import WebhookNotifier, service_url
from nmstream.config.models import ServiceReference, parse_resource
from tests.channel_helpers import notification_for, secrets_of

TOKEN = "xoxb-0123-secret-token"


class Recorder:
    """A loopback server whose answers the test scripts; keeps every request it got."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.answer: Callable[[web.Request], web.Response] = lambda r: web.json_response({})

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        return self.answer(request)


async def serve(recorder: Recorder, path: str, context: ssl.SSLContext | None = None
                ) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_post(path, recorder.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port: int = runner.addresses[0][1]
    return runner, port


@pytest.fixture
async def hook() -> AsyncIterator[tuple[Recorder, str]]:
    recorder = Recorder()
    runner, port = await serve(recorder, "/alerts")
    yield recorder, f"http://127.0.0.1:{port}/alerts"
    await runner.cleanup()


async def post(targets: dict[str, Any], values: dict[str, str] | None = None,
               body: str = '{"version": "4"}') -> Outcome:
    notification = notification_for("webhook", "WebhookReceiver", targets, body)
    ctx = SendContext(None, secrets_of(values or {}), 5.0)
    notifier = WebhookNotifier()
    try:
        return await bounded_send(notifier, notification, ctx)
    finally:
        await notifier.close()


async def test_webhook_posts_the_body_with_a_bearer_token(hook: tuple[Recorder, str]) -> None:
    recorder, url = hook
    targets = {"url": url, "httpConfig": {"bearerToken": {"name": "s", "key": "bearer"}}}
    assert await post(targets, {"bearer": "tok-123"}) == Outcome.delivered()
    ((headers, body),) = recorder.requests
    assert headers["Authorization"] == "Bearer tok-123"
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"version": "4"}


async def test_webhook_basic_auth(hook: tuple[Recorder, str]) -> None:
    recorder, url = hook
    targets = {"url": url, "httpConfig": {"basicAuth": {
        "username": "am", "password": {"name": "s", "key": "pw"}}}}
    assert (await post(targets, {"pw": "pa55"})).verdict == Verdict.DELIVERED
    assert recorder.requests[0][0]["Authorization"] == "Basic YW06cGE1NQ=="


async def test_webhook_with_a_bearer_token_and_basic_auth_sends_basic_auth(
    hook: tuple[Recorder, str],
) -> None:
    recorder, url = hook
    targets = {"url": url, "httpConfig": {
        "bearerToken": {"name": "s", "key": "bearer"},
        "basicAuth": {"username": "am", "password": {"name": "s", "key": "pw"}}}}
    assert await post(targets, {"bearer": "tok-123", "pw": "pa55"}) == Outcome.delivered()
    assert recorder.requests[0][0]["Authorization"] == "Basic YW06cGE1NQ=="


@pytest.mark.parametrize(("status", "headers", "verdict", "retry_after"), [
    (429, {"Retry-After": "7"}, Verdict.RETRYABLE, 7.0),
    (503, {}, Verdict.RETRYABLE, None),
    (400, {}, Verdict.PERMANENT, None),
    (404, {}, Verdict.PERMANENT, None),
    (204, {}, Verdict.DELIVERED, None),
])
async def test_webhook_status_codes(
    hook: tuple[Recorder, str], status: int, headers: dict[str, str], verdict: Verdict,
    retry_after: float | None,
) -> None:
    recorder, url = hook
    recorder.answer = lambda r: web.Response(status=status, headers=headers, text="nope")
    outcome = await post({"url": url})
    assert (outcome.verdict, outcome.retry_after) == (verdict, retry_after)


async def test_webhook_unreachable_is_retryable() -> None:
    from nmstream.broker import free_port

    outcome = await post({"url": f"http://127.0.0.1:{free_port()}/x"})
    assert outcome.verdict == Verdict.RETRYABLE


async def test_webhook_tls_with_root_ca_and_client_certificate() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca.configure_trust(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS
    client = ca.issue_cert("nmstream")
    recorder = Recorder()
    runner, port = await serve(recorder, "/tls", server_context)
    values = {"ca": ca.cert_pem.bytes().decode(),
              "cert": b"".join(b.bytes() for b in client.cert_chain_pems).decode(),
              "key": client.private_key_pem.bytes().decode()}
    tls = {"rootCA": {"name": "s", "key": "ca"},
           "clientCertificate": {"cert": {"name": "s", "key": "cert"},
                                 "key": {"name": "s", "key": "key"}}}
    url = f"https://127.0.0.1:{port}/tls"
    try:
        assert (await post({"url": url, "httpConfig": {"tlsConfig": tls}}, values)).verdict == (
            Verdict.DELIVERED)
        no_client_cert = {"rootCA": tls["rootCA"]}
        outcome = await post({"url": url, "httpConfig": {"tlsConfig": no_client_cert}}, values)
        assert outcome.verdict == Verdict.RETRYABLE
        outcome = await post({"url": url}, values)  # system trust store: unknown CA
        assert "CERTIFICATE_VERIFY_FAILED" in outcome.reason
        assert len(recorder.requests) == 1
    finally:
        await runner.cleanup()


def test_service_reference_becomes_a_cluster_url() -> None:
    assert service_url(ServiceReference(namespace="mon", name="sink", port=8080,
                                        path="hook")) == "http://sink.mon.svc:8080/hook"
    assert service_url(ServiceReference(namespace="mon", name="sink", scheme="https")) == (
        "https://sink.mon.svc:443")


class FakeSlack(Recorder):
    """``chat.postMessage`` as Slack documents it."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = "ok"

    def reply(self, request: web.Request) -> web.Response:
        headers, body = self.requests[-1]
        if headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if self.mode == "429":
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                     headers={"Retry-After": "3"})
        channel = json.loads(body)["channel"]
        if channel == "#missing":
            return web.json_response({"ok": False, "error": "channel_not_found"})
        return web.json_response({"ok": True, "channel": "C123", "ts": "1.2"})


@pytest.fixture
async def slack() -> AsyncIterator[tuple[FakeSlack, str]]:
    fake = FakeSlack()
    fake.answer = fake.reply
    runner, port = await serve(fake, "/api/chat.postMessage")
    yield fake, f"http://127.0.0.1:{port}/api/"
    await runner.cleanup()


async def slack_send(api: str, channel: str, token: str = TOKEN) -> Outcome:
    config = parse_resource({"apiVersion": "notification.kubesphere.io/v2alpha1",
                             "kind": "SlackConfig", "metadata": {"name": "c"},
                             "spec": {"slackTokenSecret": {"name": "s", "key": "token"}}})
    notifier = SlackNotifier(api)
    notification = notification_for("slack", "SlackReceiver", {"channel": channel}, "text!")
    try:
        return await bounded_send(notifier, notification,
                                  SendContext(config, secrets_of({"token": token}), 5.0))
    finally:
        await notifier.close()


async def test_slack_delivers_with_the_bot_token(slack: tuple[FakeSlack, str]) -> None:
    fake, api = slack
    assert await slack_send(api, "#alerts") == Outcome.delivered()
    headers, body = fake.requests[0]
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert json.loads(body) == {"channel": "#alerts", "text": "text!"}


async def test_slack_errors(slack: tuple[FakeSlack, str]) -> None:
    fake, api = slack
    outcome = await slack_send(api, "#missing")
    assert (outcome.verdict, outcome.reason) == (Verdict.PERMANENT, "slack: channel_not_found")
    outcome = await slack_send(api, "#alerts", token="xoxb-wrong")
    assert (outcome.verdict, outcome.reason) == (Verdict.PERMANENT, "slack: invalid_auth")
    fake.mode = "429"
    outcome = await slack_send(api, "#alerts")
    assert (outcome.verdict, outcome.retry_after) == (Verdict.RETRYABLE, 3.0)
    assert TOKEN not in outcome.reason
