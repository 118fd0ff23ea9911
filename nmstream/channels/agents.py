"""Dispatch: one agent per channel delivers ``nmstream-notify-<channel>`` records.

Each worker resolves secret references from its own :class:`SecretStore` (fed by a
Secret-only source of its own: secret values never travel on a topic). A send is bounded by
the channel's ``notificationTimeout`` and, per channel and worker, by
``NMSTREAM_DISPATCH_CONCURRENCY`` sends in flight.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import mode

from nmstream.app import app, settings
from nmstream.channels.base import (
    DEFAULT_TIMEOUT,
    Notifier,
    Outcome,
    Secrets,
    SendContext,
    bounded_send,
)
from nmstream.channels.dingtalk import DingTalkNotifier
from nmstream.channels.email import EmailNotifier
from nmstream.channels.slack import SlackNotifier
from nmstream.channels.webhook import WebhookNotifier
from nmstream.channels.wechat import WechatNotifier
from nmstream.config.agents import state
from nmstream.config.events import SECRET
from nmstream.config.models import CHANNELS
from nmstream.config.secrets import MissingSecret, SecretStore
from nmstream.metrics import NOTIFICATIONS_SENT, SEND_SECONDS
from nmstream.render.models import Notification
from nmstream.routing.models import decode
from nmstream.topics import notify_topics

log = logging.getLogger(__name__)

secret_store = SecretStore(settings.namespace)
notifiers: dict[str, Notifier] = {
    "email": EmailNotifier(),
    "webhook": WebhookNotifier(),
    "slack": SlackNotifier(settings.slack_api_url),
    "wechat": WechatNotifier(),
    "dingtalk": DingTalkNotifier(settings.dingtalk_api_url),
}


def send_context(notification: Notification, config: Any = None) -> SendContext | Outcome:
    """Config (by default the one in the view), secrets, timeout and options for a
    notification, or why it cannot be sent."""
    ref = notification.receiver
    if config is None:
        config = state.view.get(ref.config_kind, ref.config_name)
    if config is None and ref.channel != "webhook":
        return Outcome.permanent(f"{ref.config_kind} {ref.config_name} no longer exists")
    manager = state.view.manager()
    options = manager.spec.receivers.options if manager is not None else None
    channel_options = getattr(options, ref.channel, None) if options is not None else None
    timeout = getattr(channel_options, "notification_timeout", None) or DEFAULT_TIMEOUT
    return SendContext(config, Secrets(secret_store.get), float(timeout), channel_options)


async def deliver(notification: Notification, config: Any = None) -> Outcome:
    """One delivery attempt, measured; a missing secret is a permanent failure."""
    ctx = send_context(notification, config)
    if isinstance(ctx, Outcome):
        return ctx
    started = time.perf_counter()
    try:
        return await bounded_send(notifiers[notification.channel], notification, ctx)
    except MissingSecret as exc:
        return Outcome.permanent(str(exc))
    finally:
        SEND_SECONDS.labels(channel=notification.channel).observe(time.perf_counter() - started)


def _dispatcher(channel: str) -> Any:
    topic = notify_topics[channel]

    async def dispatch(stream: Any) -> None:
        async for value in stream:
            notification = decode(Notification, value, topic)
            if notification is None:
                continue
            outcome = await deliver(notification)
            NOTIFICATIONS_SENT.labels(channel=channel, outcome=outcome.verdict.value).inc()
            level = logging.INFO if outcome.reason == "" else logging.WARNING
            log.log(level, "%s notification %s to %s: %s%s", channel, notification.id,
                    notification.receiver.key, outcome.verdict.value,
                    f" ({outcome.reason})" if outcome.reason else "")

    dispatch.__doc__ = f"Deliver ``{topic.get_topic_name()}`` records."
    return app.agent(topic, name=f"nmstream.dispatch.{channel}",
                     concurrency=settings.dispatch_concurrency)(dispatch)


dispatchers = {channel: _dispatcher(channel) for channel in CHANNELS}


@app.service
class SecretFollower(mode.Service):
    """Keeps this worker's secret store current from its own Secret-only source."""

    @mode.Service.task
    async def _follow(self) -> None:
        if settings.config_dir is not None:
            from nmstream.config.directory import DirectorySource

            await DirectorySource(settings.config_dir, secret_store).run()
        elif settings.kubernetes:
            from nmstream.config.kube import KubeWatcher, load_api_client

            await KubeWatcher(load_api_client(), secret_store, (SECRET,),
                              secret_namespace=settings.secret_namespace).run()

    async def on_stop(self) -> None:
        """Close the senders' pooled connections."""
        for notifier in notifiers.values():
            close = getattr(notifier, "close", None)
            if close is not None:
                await close()
