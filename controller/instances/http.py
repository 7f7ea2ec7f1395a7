"""One shared async HTTP client for every instance: pooled, time-bounded, concurrency-bounded."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from controller.instances.errors import InstanceAuthError, InstanceRefused, InstanceUnavailable


def instance_message(body: Any) -> str:
    """What an instance said in an error answer (`message` for WAHA, `error` for blazz)."""
    if isinstance(body, dict):
        for key in ("message", "error"):
            if isinstance(body.get(key), str):
                return body[key]
    return ""


class InstanceHttp:
    """Pooled HTTP with a whole-request deadline and a cap on requests in flight.

    Every failure becomes an `InstanceUnavailable` (or its `InstanceRefused`) or an
    `InstanceAuthError` with a short kind (timeout, refused, garbage, http_5xx, ...), so
    callers count and report failures per pod without knowing the HTTP library.

    aiohttp, not httpx: at a few hundred requests a second httpx spent ~20 times the CPU
    per request (its pool, its locks, and a failing `import sniffio` on every lock).
    """

    def __init__(self, *, timeout: float, max_in_flight: int = 64,
                 max_body: int = 32 << 20) -> None:
        self.timeout = timeout
        self.max_body = max_body  # a larger answer is refused, never held whole
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._pool = _Pool()

    def lane(self, max_in_flight: int) -> InstanceHttp:
        """The same connections under a budget of their own: starts hold a connection for a
        whole browser launch, and must never queue the probes behind them."""
        lane = InstanceHttp(timeout=self.timeout, max_in_flight=max_in_flight,
                            max_body=self.max_body)
        lane._pool = self._pool
        return lane

    async def aclose(self) -> None:
        await self._pool.close()

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        ok: tuple[int, ...] = (200, 201),
        deadline: float | None = None,
    ) -> tuple[int, Any]:
        """Send one request; return (status, parsed JSON or None) for expected statuses.

        `deadline` (seconds; default: the client's timeout) bounds the whole request, not
        each read: a pod that trickles its answer cannot hold a caller past it.
        """
        deadline = deadline or self.timeout
        async with self._in_flight:
            try:
                async with asyncio.timeout(deadline):
                    status, content = await self._send(method, url, params, headers, body)
            except TimeoutError as error:  # aiohttp's own timeouts are TimeoutErrors too
                raise InstanceUnavailable(
                    "timeout", f"{method} {url}: no answer within {deadline:.0f} s") from error
            except aiohttp.ClientConnectorError as error:
                raise InstanceUnavailable("refused", f"{method} {url}: {error}") from error
            except aiohttp.ClientError as error:
                raise InstanceUnavailable(
                    "transport", f"{method} {url}: {type(error).__name__}: {error}") from error
        answer: Any = None
        if content:
            try:
                answer = json.loads(content)
            except ValueError as error:
                if status in ok:
                    raise InstanceUnavailable(
                        "garbage", f"{method} {url}: answer is not JSON "
                        f"({content[:40]!r}...)") from error
        if status == 401:
            raise InstanceAuthError(f"{method} {url}: 401, the instance refused the API key")
        if status not in ok:
            said = instance_message(answer)
            detail = f"{method} {url}: HTTP {status}" + (f": {said}" if said else "")
            if 400 <= status < 500:
                raise InstanceRefused(status, said, detail)
            raise InstanceUnavailable("http_5xx" if status >= 500 else "http_other", detail)
        return status, answer

    async def _send(self, method: str, url: str, params: dict[str, str] | None,
                    headers: dict[str, str] | None, body: dict[str, Any] | None
                    ) -> tuple[int, bytes]:
        """The status and the body, read up to `max_body` bytes."""
        session = self._pool.session()
        async with session.request(method, url, params=params, headers=headers, json=body,
                                   allow_redirects=False) as response:
            chunks, size = [], 0
            async for chunk in response.content.iter_any():
                size += len(chunk)
                if size > self.max_body:
                    raise InstanceUnavailable(
                        "too_large", f"{method} {url}: answer larger than {self.max_body} bytes")
                chunks.append(chunk)
            return response.status, b"".join(chunks)


class _Pool:
    """The connections every lane shares, opened on first use (inside the event loop)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # The lanes' semaphores bound what is in flight; the pool only keeps
                # connections. An idle one is dropped after 4 s, before Node's (blazz's)
                # 5 s keep-alive closes it under a request.
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0),
                # Only the deadline in `request` applies, to the whole request.
                timeout=aiohttp.ClientTimeout(total=None),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
