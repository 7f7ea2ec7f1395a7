"""One shared async HTTP client for every instance: pooled, time-bounded, concurrency-bounded."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from controller.instances.errors import InstanceAuthError, InstanceUnavailable


class InstanceHttp:
    """Pooled HTTP with a per-request timeout and a cap on requests in flight.

    Every failure becomes an `InstanceUnavailable` or `InstanceAuthError` with a
    short kind (timeout, refused, garbage, http_5xx, ...), so callers count and
    report failures per pod without knowing httpx.
    """

    def __init__(self, *, timeout: float, max_in_flight: int = 64) -> None:
        self._client = httpx.AsyncClient(
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
    ) -> tuple[int, Any]:
        """Send one request; return (status, parsed JSON or None) for expected statuses."""
        async with self._in_flight:
            try:
                response = await self._client.request(
                    method, url, params=params, headers=headers, json=body
                )
            except httpx.TimeoutException as error:
                raise InstanceUnavailable("timeout", f"{method} {url}: timed out") from error
            except httpx.ConnectError as error:
                raise InstanceUnavailable("refused", f"{method} {url}: {error}") from error
            except httpx.HTTPError as error:
                raise InstanceUnavailable("transport", f"{method} {url}: {error}") from error
        if response.status_code == 401:
            raise InstanceAuthError(f"{method} {url}: 401, the instance refused the API key")
        if response.status_code not in ok:
            kind = "http_5xx" if response.status_code >= 500 else "http_4xx"
            raise InstanceUnavailable(
                kind, f"{method} {url}: unexpected HTTP {response.status_code}"
            )
        if not response.content:
            return response.status_code, None
        try:
            return response.status_code, response.json()
        except ValueError as error:
            raise InstanceUnavailable("garbage", f"{method} {url}: answer is not JSON") from error
