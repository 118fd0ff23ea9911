"""Email over SMTP (aiosmtplib): implicit TLS on 465, STARTTLS required when ``requireTLS``,
certificate verification on by default, AUTH with ``authUsername``/``authPassword``, a
multipart text + HTML message. ``deliveryType: bulk`` sends one message to all of the
receiver's addresses in chunks of ``maxEmailReceivers``; ``single`` one message per address.
Connections are reused: all messages of a notification, and later notifications to the same
server while the idle connection still answers."""

from __future__ import annotations

import contextlib
import hashlib
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import aiosmtplib

from nmstream.channels.base import Outcome, SendContext, ssl_context
from nmstream.config.models import EmailConfig, EmailConfigSpec, EmailOptions, EmailReceiverSpec
from nmstream.render.models import Notification

IMPLICIT_TLS_PORT = 465
DEFAULT_MAX_RECEIVERS = 200
#: An idle pooled connection older than this is closed rather than reused.
IDLE_SECONDS = 30.0


def message(notification: Notification, sender: str, recipients: list[str]) -> EmailMessage:
    """The MIME message: subject, a text part and the HTML alternative."""
    mail = EmailMessage()
    mail["Subject"] = notification.subject or ""
    mail["From"] = sender
    mail["To"] = ", ".join(recipients)
    mail["Date"] = formatdate(localtime=False)
    mail["Message-ID"] = make_msgid(idstring=notification.id[:16])
    mail.set_content(notification.text or notification.subject or "")
    mail.add_alternative(notification.body, subtype="html")
    return mail


def batches(recipients: list[str], options: EmailOptions | None) -> list[list[str]]:
    """Recipient lists per message, by delivery type and ``maxEmailReceivers``."""
    if options is not None and options.delivery_type == "single":
        return [[address] for address in recipients]
    size = (options.max_email_receivers if options else None) or DEFAULT_MAX_RECEIVERS
    return [recipients[i : i + size] for i in range(0, len(recipients), size)]


def smtp_verdict(exc: aiosmtplib.SMTPException) -> Outcome:
    """4xx answers and broken connections are retryable; 5xx and bad credentials are not."""
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return Outcome.permanent(f"SMTP authentication failed: {exc}")
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return Outcome.permanent(f"every recipient refused: {exc}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        if 400 <= exc.code < 500:
            return Outcome.retryable(f"SMTP {exc.code}: {exc.message}")
        return Outcome.permanent(f"SMTP {exc.code}: {exc.message}")
    return Outcome.retryable(f"SMTP: {type(exc).__name__}: {exc}")


class EmailNotifier:
    """Sends through the config's smart host, reusing idle connections to the same server
    (same config content, hence same host, TLS and credentials) while they answer NOOP."""

    channel = "email"

    def __init__(self) -> None:
        self._idle: dict[str, list[tuple[aiosmtplib.SMTP, float]]] = {}

    async def _reuse(self, key: str) -> aiosmtplib.SMTP | None:
        while self._idle.get(key):
            client, since = self._idle[key].pop()
            if time.monotonic() - since < IDLE_SECONDS and client.is_connected:
                try:
                    await client.noop()
                    return client
                except aiosmtplib.SMTPException:
                    pass
            client.close()
        return None

    async def _connect(self, spec: EmailConfigSpec, ctx: SendContext) -> aiosmtplib.SMTP:
        implicit = spec.smart_host.port == IMPLICIT_TLS_PORT
        client = aiosmtplib.SMTP(
            hostname=spec.smart_host.host,
            port=spec.smart_host.port,
            use_tls=implicit,
            start_tls=True if spec.require_tls and not implicit else None,
            tls_context=ssl_context(spec.tls, ctx.secrets),
            local_hostname=spec.hello,
            timeout=ctx.timeout,
        )
        await client.connect()
        if spec.auth_username and spec.auth_password is not None:
            await client.login(spec.auth_username, ctx.secrets.text(spec.auth_password))
        return client

    async def close(self) -> None:
        """Close every idle connection."""
        for clients in self._idle.values():
            for client, _ in clients:
                if client.is_connected:
                    with contextlib.suppress(aiosmtplib.SMTPException):
                        await client.quit()
        self._idle.clear()

    async def send(self, notification: Notification, ctx: SendContext) -> Outcome:
        """Every batch of recipients over one connection; refused addresses are named."""
        config: EmailConfig = ctx.config
        spec = config.spec
        receiver = EmailReceiverSpec.model_validate(notification.receiver.targets)
        key = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()
        refused: list[str] = []
        client: aiosmtplib.SMTP | None = None
        try:
            client = await self._reuse(key) or await self._connect(spec, ctx)
            for recipients in batches(receiver.to, ctx.options):
                mail = message(notification, spec.from_, recipients)
                try:
                    errors, _ = await client.send_message(mail, recipients=recipients)
                except aiosmtplib.SMTPRecipientsRefused as exc:
                    refused.extend(e.recipient for e in exc.recipients)
                    continue
                refused.extend(errors)
        except aiosmtplib.SMTPException as exc:
            if client is not None:
                client.close()
            return smtp_verdict(exc)
        except BaseException:
            if client is not None:
                client.close()
            raise
        if client.is_connected:
            self._idle.setdefault(key, []).append((client, time.monotonic()))
        if refused and len(refused) == len(receiver.to):
            return Outcome.permanent(f"every recipient refused: {', '.join(refused)}")
        reason = f"refused: {', '.join(refused)}" if refused else ""
        return Outcome.delivered(tuple(refused), reason)
