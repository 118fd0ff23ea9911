"""WeChat Work: ``gettoken`` (cached), then ``message/send`` to users, parties and tags.

An expired or invalid token (errcode 42001 / 40014) is refreshed and the send tried once more;
``invaliduser``/``invalidparty``/``invalidtag`` in the answer are a partial failure naming them.
"""

from __future__ import annotations

import hashlib
from typing import Any

import aiohttp

from nmstream.channels.base import Outcome, SendContext, http_verdict
from nmstream.channels.tokens import TokenCache
from nmstream.config.models import WechatConfig, WechatReceiverSpec
from nmstream.render.models import Notification

DEFAULT_API = "https://qyapi.weixin.qq.com/cgi-bin/"
TOKEN_ERRORS = {40014, 42001}
RETRYABLE_ERRORS = {-1, 45009, 45033}


class ApiError(Exception):
    """A WeChat answer with a non-zero errcode."""

    def __init__(self, answer: dict[str, Any]) -> None:
        super().__init__(f"wechat errcode {answer.get('errcode')}: {answer.get('errmsg', '')}")
        self.code = int(answer.get("errcode", -1))


def _verdict(exc: ApiError) -> Outcome:
    if exc.code in RETRYABLE_ERRORS or exc.code in TOKEN_ERRORS:
        return Outcome.retryable(str(exc))
    return Outcome.permanent(str(exc))


class WechatNotifier:
    """Sends application text messages."""

    channel = "wechat"

    def __init__(self) -> None:
        self.tokens = TokenCache()
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """One pooled session per worker."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        """Close pooled connections."""
        if self._session is not None:
            await self._session.close()

    async def _call(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        async with self.session().request(method, url, **kwargs) as response:
            if response.status != 200:
                raise aiohttp.ClientResponseError(
                    response.request_info, (), status=response.status,
                    message=(await response.text())[:200],
                )
            answer: dict[str, Any] = await response.json(content_type=None)
        if answer.get("errcode", 0) != 0:
            raise ApiError(answer)
        return answer

    async def send(self, notification: Notification, ctx: SendContext) -> Outcome:
        """Send; refresh the token once if the API says it expired."""
        config: WechatConfig = ctx.config
        spec = config.spec
        receiver = WechatReceiverSpec.model_validate(notification.receiver.targets)
        api = (spec.wechat_api_url or DEFAULT_API).rstrip("/") + "/"
        secret = ctx.secrets.text(spec.wechat_api_secret)
        key = (api, spec.wechat_api_corp_id, hashlib.sha256(secret.encode()).hexdigest())

        async def fetch() -> tuple[str, float]:
            answer = await self._call("GET", api + "gettoken",
                                      params={"corpid": spec.wechat_api_corp_id,
                                              "corpsecret": secret})
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
        try:
            for attempt in range(2):
                token = await self.tokens.get(key, fetch)
                try:
                    answer = await self._call("POST", api + "message/send",
                                              params={"access_token": token}, json=body)
                    break
                except ApiError as exc:
                    if exc.code not in TOKEN_ERRORS or attempt:
                        raise
                    self.tokens.forget(key)
        except ApiError as exc:
            return _verdict(exc)
        except aiohttp.ClientResponseError as exc:
            return http_verdict(exc.status, exc.message, None)
        invalid = tuple(
            f"{field}:{name}"
            for field in ("invaliduser", "invalidparty", "invalidtag")
            for name in str(answer.get(field) or "").split("|") if name
        )
        return Outcome.delivered(invalid, f"invalid: {', '.join(invalid)}" if invalid else "")
