"""Values the operator reads from Kubernetes Secrets: the instances' API key, the webhook
HMAC secret, the rediscovery token. Cached, re-read when a caller finds one refused."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger("wa_controller.secrets")


class SecretValue:
    """One value of one Secret; `refresh` re-reads it at most every `min_refresh_interval` s."""

    def __init__(self, read: Callable[[], Awaitable[str | None]], what: str, *,
                 min_refresh_interval: float = 5.0) -> None:
        self._read = read
        self._what = what  # for log lines: which Secret and key, never the value
        self._value: str | None = None
        self._read_at: float | None = None
        self._min_refresh_interval = min_refresh_interval
        self._lock = asyncio.Lock()
        self._reported_missing = False

    async def get(self) -> str | None:
        """The value, or None when the Secret or its key is absent."""
        if self._value is None:
            await self.refresh()
        return self._value

    async def refresh(self) -> None:
        async with self._lock:
            now = time.monotonic()
            if self._read_at is not None and now - self._read_at < self._min_refresh_interval:
                return
            self._read_at = now
            value = await self._read() or None
            if value is None and not self._reported_missing:  # once per outage, not per read
                logger.error("%s is missing (no such Secret, or no such key in it)", self._what)
            self._reported_missing = value is None
            self._value = value


def same_secret(given: str | bytes, expected: str | bytes) -> bool:
    """Constant-time comparison: how long it takes says nothing about how much matched."""
    given = given.encode() if isinstance(given, str) else given
    expected = expected.encode() if isinstance(expected, str) else expected
    return hmac.compare_digest(given, expected)
