"""WeChat Work and DingTalk senders against loopback servers that answer as the APIs do."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from nmstream.channels.base import Outcome, SendContext, Verdict, bounded_send
from nmstream.channels.dingtalk import DingTalkNotifier, RateLimiter
from nmstream.channels.wechat import WechatNotifier
from nmstream.config.models import parse_resource
from tests.channel_helpers import notification_for, secrets_of

CORP_SECRET = "corp-secret-value"
BOT_SECRET = "SECbot-signing-secret"


class FakeWechat:
    """gettoken + message/send with token expiry and invalid recipients."""

    def __init__(self) -> None:
        self.issued = 0
        self.valid: set[str] = set()
        self.sent: list[dict[str, Any]] = []

    async def gettoken(self, request: web.Request) -> web.Response:
        if request.query.get("corpsecret") != CORP_SECRET:
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential"})
        self.issued += 1
        token = f"token-{self.issued}"
        self.valid = {token}
        return web.json_response({"errcode": 0, "access_token": token, "expires_in": 7200})

    async def send(self, request: web.Request) -> web.Response:
        if request.query.get("access_token") not in self.valid:
            return web.json_response({"errcode": 42001, "errmsg": "access_token expired"})
        body = await request.json()
        self.sent.append(body)
        unknown = [u for u in body["touser"].split("|") if u.startswith("ghost")]
        return web.json_response({"errcode": 0, "errmsg": "ok",
                                  "invaliduser": "|".join(unknown)})


async def start(routes: list[web.RouteDef]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def wechat() -> AsyncIterator[tuple[FakeWechat, str]]:
    fake = FakeWechat()
    runner, url = await start([web.get("/cgi-bin/gettoken", fake.gettoken),
                               web.post("/cgi-bin/message/send", fake.send)])
    yield fake, url + "/cgi-bin/"
    await runner.cleanup()


def wechat_config(api: str) -> Any:
    return parse_resource({
        "apiVersion": "notification.kubesphere.io/v2alpha1", "kind": "WechatConfig",
        "metadata": {"name": "c"},
        "spec": {"wechatApiUrl": api, "wechatApiCorpId": "corp", "wechatApiAgentId": "1000002",
                 "wechatApiSecret": {"name": "s", "key": "wechat"}}})


async def wechat_send(notifier: WechatNotifier, api: str, to_user: str,
                      secret: str = CORP_SECRET) -> Outcome:
    notification = notification_for("wechat", "WechatReceiver",
                                     {"toUser": to_user, "toParty": "2"}, "alert text")
    return await bounded_send(notifier, notification,
                              SendContext(wechat_config(api), secrets_of({"wechat": secret}), 5))


async def test_wechat_token_is_cached_and_refreshed_once_on_expiry(
    wechat: tuple[FakeWechat, str]
) -> None:
    fake, api = wechat
    notifier = WechatNotifier()
    try:
        assert await wechat_send(notifier, api, "alice|bob") == Outcome.delivered()
        assert await wechat_send(notifier, api, "alice") == Outcome.delivered()
        assert fake.issued == 1  # cached
        fake.valid.clear()  # the API expires the token (errcode 42001)
        assert await wechat_send(notifier, api, "alice") == Outcome.delivered()
        assert fake.issued == 2
        first = fake.sent[0]
        assert (first["touser"], first["toparty"], first["agentid"]) == ("alice|bob", "2", 1000002)
        assert first["msgtype"] == "text" and first["text"] == {"content": "alert text"}
    finally:
        await notifier.close()


async def test_wechat_invalid_users_are_a_partial_failure_and_bad_secret_is_permanent(
    wechat: tuple[FakeWechat, str]
) -> None:
    _, api = wechat
    notifier = WechatNotifier()
    try:
        outcome = await wechat_send(notifier, api, "alice|ghost1|ghost2")
        assert outcome.verdict == Verdict.DELIVERED
        assert outcome.failed_targets == ("invaliduser:ghost1", "invaliduser:ghost2")
        outcome = await wechat_send(WechatNotifier(), api, "alice", secret="wrong-corp-secret")
        assert outcome.verdict == Verdict.PERMANENT and "40001" in outcome.reason
        assert "wrong-corp-secret" not in outcome.reason
    finally:
        await notifier.close()


class FakeDingTalk:
    """A chatbot webhook that verifies signature and keywords, and the conversation API."""

    def __init__(self) -> None:
        self.bot: list[dict[str, Any]] = []
        self.chats: list[dict[str, Any]] = []
        self.tokens = 0

    async def robot(self, request: web.Request) -> web.Response:
        timestamp, signature = request.query.get("timestamp", ""), request.query.get("sign", "")
        expected = base64.b64encode(hmac.new(BOT_SECRET.encode(),
                                             f"{timestamp}\n{BOT_SECRET}".encode(),
                                             hashlib.sha256).digest()).decode()
        if signature != expected or abs(time.time() * 1000 - int(timestamp or 0)) > 3600_000:
            return web.json_response({"errcode": 310000, "errmsg": "sign not match"})
        body = await request.json()
        if "kubesphere" not in body["text"]["content"]:
            return web.json_response({"errcode": 310000, "errmsg": "keywords not in content"})
        self.bot.append(body)
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    async def gettoken(self, request: web.Request) -> web.Response:
        self.tokens += 1
        return web.json_response({"errcode": 0, "access_token": "dt", "expires_in": 7200})

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        if request.query.get("access_token") != "dt":
            return web.json_response({"errcode": 40014, "errmsg": "invalid token"})
        self.chats.append(body)
        return web.json_response({"errcode": 0, "errmsg": "ok"})


@pytest.fixture
async def dingtalk() -> AsyncIterator[tuple[FakeDingTalk, str]]:
    fake = FakeDingTalk()
    runner, url = await start([web.post("/robot/send", fake.robot),
                               web.get("/gettoken", fake.gettoken),
                               web.post("/chat/send", fake.chat)])
    yield fake, url
    await runner.cleanup()


def dingtalk_context(url: str, signing: str = BOT_SECRET) -> SendContext:
    config = parse_resource({
        "apiVersion": "notification.kubesphere.io/v2alpha1", "kind": "DingTalkConfig",
        "metadata": {"name": "c"},
        "spec": {"conversation": {"appkey": {"name": "s", "key": "appkey"},
                                  "appsecret": {"name": "s", "key": "appsecret"}}}})
    values = {"webhook": f"{url}/robot/send?access_token=bot", "secret": signing,
              "appkey": "key", "appsecret": "app-secret"}
    return SendContext(config, secrets_of(values), 5.0)


TARGETS = {"chatbot": {"webhook": {"name": "s", "key": "webhook"}, "keywords": ["kubesphere"],
                       "secret": {"name": "s", "key": "secret"}, "atMobiles": ["13800000000"]},
           "conversation": {"chatids": ["chat1", "chat2"]}}


async def test_dingtalk_signed_chatbot_with_keywords_and_conversations(
    dingtalk: tuple[FakeDingTalk, str]
) -> None:
    fake, url = dingtalk
    notifier = DingTalkNotifier(url)
    try:
        notification = notification_for("dingtalk", "DingTalkReceiver", TARGETS, "disk full")
        assert await bounded_send(notifier, notification, dingtalk_context(url)) == (
            Outcome.delivered())
        (bot,) = fake.bot
        assert bot["text"]["content"] == "disk full\nkubesphere"
        assert bot["at"]["atMobiles"] == ["13800000000"]
        assert [c["chatid"] for c in fake.chats] == ["chat1", "chat2"]
        assert fake.chats[0]["msg"] == {"msgtype": "text", "text": {"content": "disk full"}}

        outcome = await bounded_send(notifier, notification, dingtalk_context(url, "SECwrong"))
        assert outcome.verdict == Verdict.PERMANENT and "sign not match" in outcome.reason
        assert "SECwrong" not in outcome.reason and "access_token=bot" not in outcome.reason
    finally:
        await notifier.close()


async def test_dingtalk_chatbot_never_exceeds_20_messages_a_minute(
    dingtalk: tuple[FakeDingTalk, str]
) -> None:
    fake, url = dingtalk
    notifier = DingTalkNotifier(url)
    targets = {"chatbot": TARGETS["chatbot"]}
    try:
        outcomes = [await bounded_send(
            notifier, notification_for("dingtalk", "DingTalkReceiver", targets, f"m{i}"),
            dingtalk_context(url)) for i in range(23)]
        assert [o.verdict for o in outcomes[:20]] == [Verdict.DELIVERED] * 20
        assert {o.verdict for o in outcomes[20:]} == {Verdict.RETRYABLE}
        assert all(o.retry_after and 0 < o.retry_after <= 60 for o in outcomes[20:])
        assert len(fake.bot) == 20
    finally:
        await notifier.close()


async def test_rate_limiter_waits_for_a_slot_within_its_bound() -> None:
    limiter = RateLimiter(limit=2, period=0.5)
    assert await limiter.acquire("bot", max_wait=1) == 0
    assert await limiter.acquire("bot", max_wait=1) == 0
    started = time.monotonic()
    assert await limiter.acquire("bot", max_wait=1) == 0  # waits ~0.5 s for a slot
    assert 0.3 < time.monotonic() - started < 1.0
    assert await limiter.acquire("bot", max_wait=0) == 0  # the two first slots have expired
    assert await limiter.acquire("bot", max_wait=0.01) > 0  # full: does not wait 0.5 s
