"""The one small interface every channel implements, and what a send can end in.

Modelled on Alertmanager's ``notify`` package: a sender answers *delivered*, *retryable*
(network errors, timeouts, 429/5xx, rate limits, expired tokens) or *permanent* (bad request,
invalid recipient, bad credentials), with the reason. Every send is bounded by the channel's
``notificationTimeout``, and reasons never carry a secret value.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from nmstream.channels.http import HttpClient, RequestError
from nmstream.config.models import SecretKeySelector, TLSConfig
from nmstream.render.models import Notification

DEFAULT_TIMEOUT = 5.0


class Verdict(enum.StrEnum):
    """How a send ended."""

    DELIVERED = "delivered"
    RETRYABLE = "retryable"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class Outcome:
    """A send's verdict, its reason, when to retry, and targets that failed alone."""

    verdict: Verdict
    reason: str = ""
    retry_after: float | None = None
    failed_targets: tuple[str, ...] = ()

    @classmethod
    def delivered(cls, failed_targets: tuple[str, ...] = (), reason: str = "") -> Outcome:
        """Sent (possibly with some targets refused, named in ``failed_targets``)."""
        return cls(Verdict.DELIVERED, reason, None, failed_targets)

    @classmethod
    def retryable(cls, reason: str, retry_after: float | None = None) -> Outcome:
        """Worth trying again later."""
        return cls(Verdict.RETRYABLE, reason, retry_after)

    @classmethod
    def permanent(cls, reason: str) -> Outcome:
        """Trying again will not help."""
        return cls(Verdict.PERMANENT, reason)


@dataclass
class Secrets:
    """Resolves secret references for one send and remembers the values to redact."""

    resolve: Callable[[SecretKeySelector], bytes]
    used: list[str] = field(default_factory=list)

    def text(self, ref: SecretKeySelector) -> str:
        """A secret value as text (whitespace around it stripped, as files often end in \\n)."""
        value = self.resolve(ref).decode().strip()
        self.used.append(value)
        return value

    def redact(self, text: str) -> str:
        """``text`` with every secret value used in this send replaced by ``***``."""
        for value in sorted(self.used, key=len, reverse=True):
            if value:
                text = text.replace(value, "***")
        return text


@dataclass
class SendContext:
    """What a sender needs besides the notification: config, secrets, options."""

    config: Any
    secrets: Secrets
    timeout: float = DEFAULT_TIMEOUT
    options: Any = None


class PooledHttp:
    """One HTTP client per sender and worker, so connections are reused."""

    _http: HttpClient | None = None

    def http(self) -> HttpClient:
        """The pooled client, made on first use."""
        if self._http is None:
            self._http = HttpClient()
        return self._http

    async def close(self) -> None:
        """Close pooled connections."""
        if self._http is not None:
            await self._http.close()


class Notifier(Protocol):
    """A channel's sender."""

    channel: str

    async def send(self, notification: Notification, ctx: SendContext) -> Outcome:
        """Deliver one notification; network and protocol errors become outcomes."""
        ...


async def bounded_send(notifier: Notifier, notification: Notification, ctx: SendContext) -> Outcome:
    """``notifier.send`` within ``ctx.timeout``; a network error or timeout becomes a
    retryable outcome, a request that cannot be made a permanent one, and no reason ever shows
    a secret value."""
    try:
        async with asyncio.timeout(ctx.timeout):
            outcome = await notifier.send(notification, ctx)
    except TimeoutError:
        outcome = Outcome.retryable(f"no answer within notificationTimeout {ctx.timeout:g}s")
    except (OSError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
        outcome = Outcome.retryable(f"{type(exc).__name__}: {exc}")
    except RequestError as exc:
        outcome = Outcome.permanent(str(exc))
    return Outcome(
        outcome.verdict, ctx.secrets.redact(outcome.reason), outcome.retry_after,
        outcome.failed_targets,
    )


def ssl_context(tls: TLSConfig | None, secrets: Secrets) -> ssl.SSLContext:
    """Verification on by default; root CA, client certificate and insecureSkipVerify honoured.

    One context per distinct TLS setting (and secret values), built once: loading the system
    CAs costs milliseconds and megabytes, and connections are pooled per context, so a new
    context per send would also mean a new connection per send.
    """
    if tls is None:
        return _context(None, None, None, False)
    client = tls.client_certificate
    pair = (client.cert, client.key) if client and client.cert and client.key else None
    return _context(
        secrets.text(tls.root_ca) if tls.root_ca is not None else None,
        secrets.text(pair[0]) if pair else None,
        secrets.text(pair[1]) if pair else None,
        tls.insecure_skip_verify,
    )


@functools.lru_cache(maxsize=64)
def _context(root_ca: str | None, cert: str | None, key: str | None,
             insecure: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if root_ca is not None:
        context.load_verify_locations(cadata=root_ca)
    if cert is not None and key is not None:
        with tempfile.TemporaryDirectory() as directory:
            cert_path, key_path = f"{directory}/cert.pem", f"{directory}/key.pem"
            with open(cert_path, "w") as out:
                out.write(cert)
            with open(key_path, "w") as out:
                out.write(key)
            context.load_cert_chain(cert_path, key_path)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def http_verdict(status: int, body: str, retry_after: str | None) -> Outcome:
    """The usual HTTP mapping: 2xx delivered, 429 and 5xx retryable, other 4xx permanent."""
    if 200 <= status < 300:
        return Outcome.delivered()
    reason = f"HTTP {status}: {body[:300]}"
    if status == 429 or status >= 500:
        return Outcome.retryable(reason, _seconds(retry_after))
    return Outcome.permanent(reason)


def _seconds(retry_after: str | None) -> float | None:
    try:
        return float(retry_after) if retry_after else None
    except ValueError:
        return None
