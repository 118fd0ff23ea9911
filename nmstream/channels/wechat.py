"""WeChat Work: ``gettoken`` (cached), then ``message/send`` to users, parties and tags.

An expired or invalid token (errcode 42001 / 40014) is refreshed and the send tried once more;
``invaliduser``/``invalidparty``/``invalidtag`` in the answer are a partial failure naming them.
"""

from __future__ import annotations

import hashlib
from typing import Any

from nmstream.channels.base import Outcome, PooledHttp, SendContext, http_verdict
from nmstream.channels.chatapi import TOKEN_ERRORS, ApiError, StatusError, TokenCache, call
from nmstream.config.models import WechatConfig, WechatReceiverSpec
from nmstream.render.models import Notification

DEFAULT_API = "https://qyapi.weixin.qq.com/cgi-bin/"
RETRYABLE_ERRORS = {-1, 45009, 45033}


def _verdict(exc: ApiError) -> Outcome:
    if exc.code in RETRYABLE_ERRORS or exc.code in TOKEN_ERRORS:
        return Outcome.retryable(str(exc))
    return Outcome.permanent(str(exc))


class WechatNotifier(PooledHttp):
    """Sends application text messages."""

    channel = "wechat"

    def __init__(self) -> None:
        self.tokens = TokenCache()

    async def send(self, notification: Notification, ctx: SendContext) -> Outcome:
        """Send; refresh the token once if the API says it expired."""
        config: WechatConfig = ctx.config
        spec = config.spec
        receiver = WechatReceiverSpec.model_validate(notification.receiver.targets)
        api = (spec.wechat_api_url or DEFAULT_API).rstrip("/") + "/"
        secret = ctx.secrets.text(spec.wechat_api_secret)
        key = (api, spec.wechat_api_corp_id, hashlib.sha256(secret.encode()).hexdigest())

        async def fetch() -> tuple[str, float]:
            answer = await call(self.http(), "wechat", "GET", api + "gettoken",
                                params={"corpid": spec.wechat_api_corp_id, "corpsecret": secret})
            return str(answer["access_token"]), float(answer.get("expires_in", 7200))

        body = {
            "touser": receiver.to_user or "",
            "toparty": receiver.to_party or "",
            "totag": receiver.to_tag or "",
            "msgtype": "text",
            "agentid": int(spec.wechat_api_agent_id),
            "text": {"content": notification.body},
            "safe": 0,
        }

        async def message(token: str) -> dict[str, Any]:
            return await call(self.http(), "wechat", "POST", api + "message/send",
                              params={"access_token": token}, json=body)

        try:
            answer = await self.tokens.with_token(key, fetch, message)
        except ApiError as exc:
            return _verdict(exc)
        except StatusError as exc:
            return http_verdict(exc.status, exc.text, exc.retry_after)
        invalid = tuple(
            f"{field}:{name}"
            for field in ("invaliduser", "invalidparty", "invalidtag")
            for name in str(answer.get(field) or "").split("|") if name
        )
        return Outcome.delivered(invalid, f"invalid: {', '.join(invalid)}" if invalid else "")
