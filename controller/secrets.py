"""Values the operator reads from Kubernetes Secrets: the instances' API key, the webhook
HMAC secret, the rediscovery token. Followed live: re-read on a short interval and at
once when a caller finds a value refused, so a rotation is in force within seconds."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable

from controller import logs
from controller.clock import Clock, SystemClock

logger = logging.getLogger("wa_controller.secrets")


class SecretValue:
    """One value of one Secret, as it is now.

    Re-read when older than `refresh_interval` seconds, and on `refresh()` (a caller saw
    it refused) at most every `min_refresh_interval` seconds. A changed value leaves the
    previous one acceptable for `overlap` seconds (instances are rotated one by one); a
    deleted Secret or key revokes both at once; a read that fails (API server away)
    keeps what was known. Every value read is kept out of the logs.
    """

    def __init__(self, read: Callable[[], Awaitable[str | None]], what: str, *,
                 refresh_interval: float = 10.0, overlap: float = 0.0,
                 min_refresh_interval: float = 1.0, clock: Clock | None = None) -> None:
        self._read = read
        self._what = what  # for log lines: which Secret and key, never the value
        self._refresh_interval = refresh_interval
        self._overlap = overlap
        self._min_refresh_interval = min_refresh_interval
        self._clock = clock or SystemClock()
        self._value: str | None = None
        self._previous: tuple[str, float] | None = None  # (value, accepted until)
        self._read_at: float | None = None
        self._lock = asyncio.Lock()
        self._told: str | None = None  # the last state logged: "missing" or "unreadable"

    async def get(self) -> str | None:
        """The value now, or None when the Secret or its key is absent."""
        await self._refresh(self._refresh_interval)
        return self._value

    async def accepted(self) -> list[str]:
        """Every value a caller may accept now: the current one, then the previous one
        while its overlap lasts."""
        current = await self.get()
        values = [current] if current is not None else []
        if self._previous is not None and self._clock.monotonic() < self._previous[1]:
            values.append(self._previous[0])
        return values

    async def refresh(self) -> None:
        """A caller found the value refused: re-read it now (at most every
        `min_refresh_interval` seconds, so a flood of refusals is one read)."""
        await self._refresh(self._min_refresh_interval)

    async def _refresh(self, max_age: float) -> None:
        if self._read_at is not None and self._clock.monotonic() - self._read_at < max_age:
            return
        async with self._lock:
            if self._read_at is not None and self._clock.monotonic() - self._read_at < max_age:
                return  # another caller read it meanwhile
            try:
                value = await self._read() or None
            except Exception as error:  # the API server is away: keep what we know
                self._tell("unreadable", logging.WARNING,
                           f"{self._what} cannot be read ({type(error).__name__}: "
                           f"{str(error)[:200]}); keeping the value read before")
                return
            finally:
                self._read_at = self._clock.monotonic()  # set once read: callers wait for it
            if value is not None:
                logs.keep_out(value)
            self._change(value, self._read_at)

    def _change(self, value: str | None, now: float) -> None:
        before = self._value
        if value is None:
            self._value, self._previous = None, None  # deleted: revoked at once
            self._tell("missing", logging.ERROR,
                       f"{self._what} is missing (no such Secret, or no such key in it)")
            return
        self._value = value
        if before is not None and before != value:
            self._previous = (before, now + self._overlap) if self._overlap > 0 else None
            logger.info("%s changed; the previous value is accepted for %.0f s more",
                        self._what, self._overlap)
        if self._told is not None:
            logger.info("%s is readable again", self._what)
            self._told = None

    def _tell(self, state: str, level: int, message: str) -> None:
        """One log line per change of state, not one per read."""
        if self._told != state:
            logger.log(level, "%s", message)
        self._told = state


def same_secret(given: str | bytes, expected: str | bytes) -> bool:
    """Constant-time comparison: how long it takes says nothing about how much matched."""
    given = given.encode() if isinstance(given, str) else given
    expected = expected.encode() if isinstance(expected, str) else expected
    return hmac.compare_digest(given, expected)
