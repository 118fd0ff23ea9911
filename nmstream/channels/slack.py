"""Slack: ``chat.postMessage`` with the bot token; success only on ``"ok": true``."""

from __future__ import annotations

from nmstream.channels.base import Outcome, PooledHttp, SendContext, http_verdict
from nmstream.config.models import SlackConfig, SlackReceiverSpec
from nmstream.render.models import Notification

#: Slack ``error`` values worth retrying; anything else (invalid_auth, channel_not_found,
#: not_in_channel, token_revoked, msg_too_long...) is permanent.
RETRYABLE_ERRORS = {
    "ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable",
    "request_timeout",
}


class SlackNotifier(PooledHttp):
    """Posts to a Slack channel."""

    channel = "slack"

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url.rstrip("/") + "/"

    async def send(self, notification: Notification, ctx: SendContext) -> Outcome:
        """One ``chat.postMessage``; 429 and ``ratelimited`` honour ``Retry-After``."""
        config: SlackConfig = ctx.config
        receiver = SlackReceiverSpec.model_validate(notification.receiver.targets)
        token = ctx.secrets.text(config.spec.slack_token_secret)
        response = await self.http().request(
            "POST", self.api_url + "chat.postMessage",
            json={"channel": receiver.channel, "text": notification.body},
            headers={"Authorization": f"Bearer {token}"},
        )
        retry_after = response.headers.get("retry-after")
        if response.status != 200:
            return http_verdict(response.status, response.text(), retry_after)
        answer = response.json()
        if answer.get("ok") is True:
            return Outcome.delivered()
        error = str(answer.get("error", "unknown_error"))
        if error in RETRYABLE_ERRORS:
            return Outcome.retryable(f"slack: {error}", float(retry_after) if retry_after else None)
        return Outcome.permanent(f"slack: {error}")
