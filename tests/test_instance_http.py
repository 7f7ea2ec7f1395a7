"""The instance client's bounds: a whole-request deadline and a size limit on answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from controller.instances import InstanceHttp, InstanceUnavailable


async def test_an_answer_larger_than_the_limit_is_refused_unread() -> None:
    served = []

    async def huge(request: httpx.Request) -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(1000):
                served.append(1)
                yield b"x" * 1024
        return httpx.Response(200, content=body())

    http = InstanceHttp(timeout=5, max_body=16 * 1024, transport=httpx.MockTransport(huge))
    with pytest.raises(InstanceUnavailable) as refused:
        await http.request("GET", "http://pod:3000/api/sessions")
    await http.aclose()
    assert refused.value.kind == "too_large"
    assert len(served) < 100  # stopped reading soon after the limit, never held it whole


async def test_the_deadline_bounds_the_whole_request_not_each_read() -> None:
    async def trickle(request: httpx.Request) -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            for byte in b'{"success": true, "sessions": []}':
                await asyncio.sleep(0.05)
                yield bytes([byte])
        return httpx.Response(200, content=body())

    http = InstanceHttp(timeout=0.5, transport=httpx.MockTransport(trickle))
    with pytest.raises(InstanceUnavailable) as late:
        await http.request("GET", "http://pod:3000/api/sessions")
    await http.aclose()
    assert late.value.kind == "timeout"
