"""Email against a real SMTP server on loopback (aiosmtpd): TLS, AUTH, batching, failures."""

from __future__ import annotations

import asyncio
import email
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import Message
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from nmstream.broker import free_port
from nmstream.channels.base import Outcome, SendContext, Verdict, bounded_send
from nmstream.channels.email import EmailNotifier
from nmstream.config.models import EmailOptions, parse_resource
from nmstream.render.models import Notification
from nmstream.routing.models import ReceiverRef
from tests.channel_helpers import secrets_of

PASSWORD = "s3cret-smtp-password"


class Inbox:
    """aiosmtpd handler: keeps messages, refuses addresses at ``refused.example``."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []
        self.greetings = 0

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        self.greetings += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: Any) -> str:
        if address.endswith("@refused.example"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 Message accepted"


def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                  auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"alerts" and (
        auth_data.password == PASSWORD.encode())
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def smtp(request: pytest.FixtureRequest, ca: trustme.CA) -> Iterator[tuple[Controller, Inbox]]:
    """An SMTP server; ``@pytest.mark.parametrize('smtp', ['tls'], indirect=True)`` for
    STARTTLS + AUTH."""
    inbox = Inbox()
    mode = getattr(request, "param", "plain")
    kwargs: dict[str, Any] = {}
    if mode == "tls":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        kwargs = {"tls_context": context, "require_starttls": True,
                  "authenticator": authenticator, "auth_required": True}
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port(), **kwargs)
    controller.start()
    yield controller, inbox
    controller.stop()


def config(port: int, **spec: Any) -> Any:
    return parse_resource({
        "apiVersion": "notification.kubesphere.io/v2alpha1", "kind": "EmailConfig",
        "metadata": {"name": "mail"},
        "spec": {"from": "alerts@example.org", "smartHost": {"host": "127.0.0.1", "port": port},
                 **spec}})


def notification(to: list[str]) -> Notification:
    ref = ReceiverRef(kind="EmailReceiver", name="oncall", channel="email", tenant=None,
                      config_kind="EmailConfig", config_name="mail", targets={"to": to})
    return Notification(id="0" * 32, channel="email", receiver=ref, group_id="g",
                        group_labels={"alertname": "A"}, subject="2 alerts for  alertname=A ",
                        body="<html><body><h2>2 alerts</h2></body></html>",
                        text="2 alerts for  alertname=A \nAlerts Firing:\n",
                        fingerprints=["f1", "f2"], statuses={"f1": "firing", "f2": "firing"},
                        created_at=datetime(2026, 1, 1, tzinfo=UTC))


async def send(cfg: Any, to: list[str], options: EmailOptions | None = None,
               values: dict[str, str] | None = None, within: float = 5.0,
               notifier: EmailNotifier | None = None) -> Outcome:
    ctx = SendContext(cfg, secrets_of(values or {}), within, options)
    return await bounded_send(notifier or EmailNotifier(), notification(to), ctx)


async def test_plain_smtp_delivers_a_multipart_text_and_html_message(
    smtp: tuple[Controller, Inbox]
) -> None:
    controller, inbox = smtp
    outcome = await send(config(controller.port), ["a@example.org", "b@example.org"])
    assert outcome == Outcome.delivered()
    ((rcpts, mail),) = inbox.messages
    assert rcpts == ["a@example.org", "b@example.org"]
    assert mail["Subject"] == "2 alerts for  alertname=A "
    assert mail["From"] == "alerts@example.org"
    assert mail.get_content_type() == "multipart/alternative"
    parts = {p.get_content_type(): bytes(p.get_payload(decode=True)) for p in mail.walk()
             if not p.is_multipart()}
    assert parts["text/plain"].startswith(b"2 alerts for  alertname=A")
    assert b"<h2>2 alerts</h2>" in parts["text/html"]


@pytest.mark.parametrize("smtp", ["tls"], indirect=True)
async def test_starttls_with_a_test_ca_and_auth(
    smtp: tuple[Controller, Inbox], ca: trustme.CA
) -> None:
    controller, inbox = smtp
    values = {"ca": ca.cert_pem.bytes().decode(), "password": PASSWORD}
    secure = config(controller.port, requireTLS=True, authUsername="alerts",
                    authPassword={"name": "mail", "key": "password"},
                    tls={"rootCA": {"name": "mail", "key": "ca"}})
    assert (await send(secure, ["a@example.org"], values=values)).verdict == Verdict.DELIVERED
    assert len(inbox.messages) == 1

    wrong = {**values, "password": "wrong-password"}
    outcome = await send(secure, ["a@example.org"], values=wrong)
    assert outcome.verdict == Verdict.PERMANENT and "authentication" in outcome.reason
    assert "wrong-password" not in outcome.reason

    unverified = config(controller.port, requireTLS=True, authUsername="alerts",
                        authPassword={"name": "mail", "key": "password"})
    outcome = await send(unverified, ["a@example.org"], values=values)
    assert outcome.verdict == Verdict.RETRYABLE and "CERTIFICATE_VERIFY_FAILED" in outcome.reason
    skip = config(controller.port, requireTLS=True, authUsername="alerts",
                  authPassword={"name": "mail", "key": "password"},
                  tls={"insecureSkipVerify": True})
    assert (await send(skip, ["a@example.org"], values=values)).verdict == Verdict.DELIVERED


async def test_require_tls_fails_when_the_server_offers_no_starttls(
    smtp: tuple[Controller, Inbox]
) -> None:
    controller, inbox = smtp
    outcome = await send(config(controller.port, requireTLS=True), ["a@example.org"])
    assert outcome.verdict != Verdict.DELIVERED
    assert "STARTTLS" in outcome.reason or "starttls" in outcome.reason.lower()
    assert inbox.messages == []


@pytest.mark.parametrize(("delivery", "max_receivers", "expected"), [
    ("bulk", None, [5]),
    ("bulk", 2, [2, 2, 1]),
    ("single", None, [1, 1, 1, 1, 1]),
])
async def test_bulk_and_single_delivery(
    smtp: tuple[Controller, Inbox], delivery: str, max_receivers: int | None,
    expected: list[int],
) -> None:
    controller, inbox = smtp
    to = [f"u{i}@example.org" for i in range(5)]
    options = EmailOptions.model_validate({"deliveryType": delivery,
                                           "maxEmailReceivers": max_receivers})
    assert (await send(config(controller.port), to, options)).verdict == Verdict.DELIVERED
    assert [len(r) for r, _ in inbox.messages] == expected
    assert sorted(a for r, _ in inbox.messages for a in r) == to


async def test_refused_recipients_are_named_and_all_refused_is_permanent(
    smtp: tuple[Controller, Inbox]
) -> None:
    controller, inbox = smtp
    outcome = await send(config(controller.port), ["ok@example.org", "nobody@refused.example"])
    assert outcome.verdict == Verdict.DELIVERED
    assert outcome.failed_targets == ("nobody@refused.example",)
    assert [r for r, _ in inbox.messages] == [["ok@example.org"]]
    outcome = await send(config(controller.port), ["x@refused.example"])
    assert outcome.verdict == Verdict.PERMANENT


async def test_server_down_is_retryable() -> None:
    outcome = await send(config(free_port()), ["a@example.org"])
    assert outcome.verdict == Verdict.RETRYABLE


async def test_a_hanging_server_is_cut_at_notification_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with server:
        outcome = await send(config(port), ["a@example.org"], within=1.0)
    assert outcome.verdict == Verdict.RETRYABLE
    assert loop.time() - started < 3


async def test_connections_are_reused_across_notifications(
    smtp: tuple[Controller, Inbox]
) -> None:
    controller, inbox = smtp
    notifier = EmailNotifier()
    try:
        for _ in range(3):
            outcome = await send(config(controller.port), ["a@example.org"], notifier=notifier)
            assert outcome.verdict == Verdict.DELIVERED
        assert len(inbox.messages) == 3
        assert inbox.greetings == 1
    finally:
        await notifier.close()
