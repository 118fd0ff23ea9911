"""Access tokens of the WeChat Work and DingTalk APIs, cached until they expire."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

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
