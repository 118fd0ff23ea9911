"""What the WeChat Work and DingTalk APIs share: JSON answers with an ``errcode``, and access
tokens cached until they expire."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from nmstream.channels.http import HttpClient

#: errcodes of an expired or invalid access token: refresh it and try once more.
TOKEN_ERRORS = {40014, 42001}


class StatusError(Exception):
    """An answer with an HTTP status other than 200."""

    def __init__(self, status: int, text: str, retry_after: str | None) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status, self.text, self.retry_after = status, text, retry_after


class ApiError(Exception):
    """An answer with a non-zero ``errcode``."""

    def __init__(self, product: str, answer: dict[str, Any]) -> None:
        code, message = answer.get("errcode"), answer.get("errmsg", "")
        super().__init__(f"{product} errcode {code}: {message}")
        self.code = int(code if code is not None else -1)


async def call(
    http: HttpClient, product: str, method: str, url: str, **kwargs: Any
) -> dict[str, Any]:
    """One API call: the JSON answer, :class:`ApiError` for a non-zero errcode, and
    :class:`StatusError` for an HTTP status other than 200."""
    response = await http.request(method, url, **kwargs)
    if response.status != 200:
        raise StatusError(response.status, response.text()[:200],
                          response.headers.get("retry-after"))
    answer: dict[str, Any] = response.json()
    if answer.get("errcode", 0) != 0:
        raise ApiError(product, answer)
    return answer

#: Refresh a little before the API's own expiry.
EXPIRY_MARGIN = 60.0


class TokenCache:
    """``key → (token, expires at)``; ``fetch`` gets a fresh ``(token, lifetime)``."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}

    async def get(
        self, key: tuple[str, ...], fetch: Callable[[], Awaitable[tuple[str, float]]]
    ) -> str:
        """The cached token, or a fresh one."""
        cached = self._tokens.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        token, lifetime = await fetch()
        self._tokens[key] = (token, time.monotonic() + max(lifetime - EXPIRY_MARGIN, 1.0))
        return token

    def forget(self, key: tuple[str, ...]) -> None:
        """Drop a token the API said is invalid or expired."""
        self._tokens.pop(key, None)

    async def with_token(
        self,
        key: tuple[str, ...],
        fetch: Callable[[], Awaitable[tuple[str, float]]],
        request: Callable[[str], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        """``request(token)``; when the API says the token expired, refresh it and try once
        more."""
        for attempt in range(2):
            token = await self.get(key, fetch)
            try:
                return await request(token)
            except ApiError as exc:
                if exc.code not in TOKEN_ERRORS or attempt:
                    raise
                self.forget(key)
        raise AssertionError("unreachable")
