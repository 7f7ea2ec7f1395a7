"""One shared async HTTP client for every instance: pooled, time-bounded, concurrency-bounded."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx

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
    callers count and report failures per pod without knowing httpx.
    """

    def __init__(self, *, timeout: float, max_in_flight: int = 64,
                 max_body: int = 32 << 20,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.timeout = timeout
        self.max_body = max_body  # a larger answer is refused, never held whole
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=32),
            follow_redirects=False,
        )
        self._in_flight = asyncio.Semaphore(max_in_flight)
        # httpx logs every URL at INFO, and blazz carries the API key in the query.
        for noisy in ("httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)

    async def aclose(self) -> None:
        await self._client.aclose()

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
                    status, content = await self._send(method, url, params, headers, body,
                                                       deadline)
            except (TimeoutError, httpx.TimeoutException) as error:
                raise InstanceUnavailable(
                    "timeout", f"{method} {url}: no answer within {deadline:.0f} s") from error
            except httpx.ConnectError as error:
                raise InstanceUnavailable("refused", f"{method} {url}: {error}") from error
            except httpx.HTTPError as error:
                raise InstanceUnavailable("transport", f"{method} {url}: {error}") from error
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
                    headers: dict[str, str] | None, body: dict[str, Any] | None,
                    deadline: float) -> tuple[int, bytes]:
        """The status and the body, read up to `max_body` bytes."""
        async with self._client.stream(method, url, params=params, headers=headers, json=body,
                                       timeout=httpx.Timeout(deadline)) as response:
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_body:
                    raise InstanceUnavailable(
                        "too_large", f"{method} {url}: answer larger than {self.max_body} bytes")
                chunks.append(chunk)
            return response.status_code, b"".join(chunks)
