"""DingTalk: a custom chatbot (signed webhook, keywords, at most 20 messages a minute) and/or
enterprise conversations (``gettoken`` cached, then ``chat/send`` per chat id). Success only
on ``errcode == 0``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections import deque
from typing import Any
from urllib.parse import quote_plus

from nmstream.channels.base import Outcome, PooledHttp, SendContext, http_verdict
from nmstream.channels.chatapi import TOKEN_ERRORS, ApiError, StatusError, TokenCache, call
from nmstream.config.models import DingTalkChatBot, DingTalkConfig, DingTalkReceiverSpec
from nmstream.render.models import Notification

BOT_LIMIT = 20
BOT_PERIOD = 60.0
RETRYABLE_ERRORS = {-1, 130101, 90018, 410100}


def sign(secret: str, timestamp_ms: int) -> str:
    """``base64(HMAC-SHA256(secret, "{timestamp}\\n{secret}"))``, as the chatbot API wants."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256)
    return base64.b64encode(digest.digest()).decode()


def with_keywords(text: str, keywords: list[str]) -> str:
    """The text with every keyword it lacks appended, so the bot's filter accepts it."""
    missing = [k for k in keywords if k not in text]
    return f"{text}\n{' '.join(missing)}" if missing else text


class RateLimiter:
    """At most ``limit`` sends per ``period`` per key; a send waits for a slot up to a bound."""

    def __init__(self, limit: int = BOT_LIMIT, period: float = BOT_PERIOD) -> None:
        self.limit, self.period = limit, period
        self.sent: dict[str, deque[float]] = {}

    async def acquire(self, key: str, max_wait: float) -> float:
        """Take a slot, waiting for one up to ``max_wait``: 0 when taken, else the seconds
        until a slot frees (nothing was taken)."""
        times = self.sent.setdefault(key, deque())
        while True:
            now = time.monotonic()
            while times and now - times[0] >= self.period:
                times.popleft()
            if len(times) < self.limit:
                times.append(now)
                return 0.0
            wait = times[0] + self.period - now
            if wait > max_wait:
                return wait
            await asyncio.sleep(wait)


class DingTalkNotifier(PooledHttp):
    """Sends to a receiver's chatbot and conversations."""

    channel = "dingtalk"

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url.rstrip("/") + "/"
        self.tokens = TokenCache()
        self.limiter = RateLimiter()

    async def send(self, notification: Notification, ctx: SendContext) -> Outcome:
        """The chatbot first, then each conversation; the first failure decides."""
        receiver = DingTalkReceiverSpec.model_validate(notification.receiver.targets)
        try:
            if receiver.chatbot is not None:
                waited = await self._chatbot(receiver.chatbot, notification.body, ctx)
                if waited is not None:
                    return waited
            chat_ids = receiver.conversation.all_ids() if receiver.conversation else []
            if chat_ids:
                await self._conversations(chat_ids, notification.body, ctx)
        except ApiError as exc:
            if exc.code in RETRYABLE_ERRORS or exc.code in TOKEN_ERRORS:
                return Outcome.retryable(str(exc))
            return Outcome.permanent(str(exc))
        except StatusError as exc:
            return http_verdict(exc.status, exc.text, exc.retry_after)
        return Outcome.delivered()

    async def _chatbot(self, bot: DingTalkChatBot, text: str, ctx: SendContext) -> Outcome | None:
        url = ctx.secrets.text(bot.webhook)
        wait = await self.limiter.acquire(hashlib.sha256(url.encode()).hexdigest(),
                                          max_wait=ctx.timeout * 0.8)
        if wait:
            return Outcome.retryable(f"chatbot sends {BOT_LIMIT} messages a minute at most",
                                     retry_after=wait)
        if bot.secret is not None:
            timestamp = int(time.time() * 1000)
            signature = quote_plus(sign(ctx.secrets.text(bot.secret), timestamp))
            url += f"{'&' if '?' in url else '?'}timestamp={timestamp}&sign={signature}"
        payload = {
            "msgtype": "text",
            "text": {"content": with_keywords(text, bot.keywords)},
            "at": {"atMobiles": bot.at_mobiles, "atUserIds": bot.at_users, "isAtAll": bot.at_all},
        }
        await call(self.http(), "dingtalk", "POST", url, json=payload)
        return None

    async def _conversations(self, chat_ids: list[str], text: str, ctx: SendContext) -> None:
        config: DingTalkConfig | None = ctx.config
        app = config.spec.conversation if config is not None else None
        if app is None or app.app_key is None or app.app_secret is None:
            missing = {"errcode": 400, "errmsg": "conversation needs appkey and appsecret"}
            raise ApiError("dingtalk", missing)
        key_id, secret = ctx.secrets.text(app.app_key), ctx.secrets.text(app.app_secret)
        cache_key = (self.api_url, key_id, hashlib.sha256(secret.encode()).hexdigest())

        async def fetch() -> tuple[str, float]:
            answer = await call(self.http(), "dingtalk", "GET", self.api_url + "gettoken",
                                params={"appkey": key_id, "appsecret": secret})
            return str(answer["access_token"]), float(answer.get("expires_in", 7200))

        for chat_id in chat_ids:
            body = {"chatid": chat_id, "msg": {"msgtype": "text", "text": {"content": text}}}

            async def chat(token: str, body: dict[str, Any] = body) -> dict[str, Any]:
                return await call(self.http(), "dingtalk", "POST", self.api_url + "chat/send",
                                  params={"access_token": token}, json=body)

            await self.tokens.with_token(cache_key, fetch, chat)
