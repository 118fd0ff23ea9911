"""Webhook: POST the rendered body (by default the Alertmanager webhook JSON) to a URL or an
in-cluster Service, with bearer token or basic auth and TLS options from ``httpConfig``."""

from __future__ import annotations

from nmstream.channels.base import Outcome, PooledHttp, SendContext, http_verdict, ssl_context
from nmstream.channels.http import basic_auth
from nmstream.config.models import ServiceReference, WebhookReceiverSpec
from nmstream.render.models import Notification


def endpoint(spec: WebhookReceiverSpec) -> str:
    """The receiver's ``url``, or its Service's URL (the model guarantees one of them)."""
    if spec.url is not None:
        return spec.url
    if spec.service is None:
        raise ValueError("webhook receiver has neither url nor service")
    return service_url(spec.service)


def service_url(service: ServiceReference) -> str:
    """``scheme://name.namespace.svc:port/path`` (port defaults to 443, as upstream)."""
    scheme = service.scheme or "http"
    path = service.path or ""
    if path and not path.startswith("/"):
        path = "/" + path
    return f"{scheme}://{service.name}.{service.namespace}.svc:{service.port or 443}{path}"


#: Request header carrying the notification id (stable across retries and re-deliveries).
IDEMPOTENCY_HEADER = "X-Nmstream-Notification-Id"


class WebhookNotifier(PooledHttp):
    """Sends to the receiver's webhook."""

    channel = "webhook"

    async def send(self, notification: Notification, ctx: SendContext) -> Outcome:
        """POST the body; 2xx delivered, 429/5xx retryable, other 4xx permanent."""
        spec = WebhookReceiverSpec.model_validate(notification.receiver.targets)
        url = endpoint(spec)
        # the id is the same for every attempt: a receiver can drop what it already has
        headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: notification.id}
        http = spec.http_config
        if http is not None and http.bearer_token is not None:
            headers["Authorization"] = f"Bearer {ctx.secrets.text(http.bearer_token)}"
        if http is not None and http.basic_auth is not None:
            basic = http.basic_auth
            password = ctx.secrets.text(basic.password) if basic.password else ""
            headers["Authorization"] = basic_auth(basic.username, password)
        tls = ssl_context(http.tls_config if http else None, ctx.secrets)
        answer = await self.http().request(
            "POST", url, body=notification.body.encode(), headers=headers, tls=tls)
        return http_verdict(answer.status, answer.text(), answer.headers.get("retry-after"))
