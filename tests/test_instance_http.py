"""The instance client's bounds: a whole-request deadline, a size limit on answers, and
lanes whose budgets do not take from each other. Served by a real loopback HTTP server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from controller.instances import InstanceHttp, InstanceUnavailable

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Serve one handler on loopback; returns its URL."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_an_answer_larger_than_the_limit_is_refused_unread(serve: Any) -> None:
    served = []

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for _ in range(1000):
                served.append(1)
                await response.write(b"x" * 1024)
                await asyncio.sleep(0.001)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up: what this test expects
        return response

    url = await serve(huge)
    http = InstanceHttp(timeout=5, max_body=16 * 1024)
    with pytest.raises(InstanceUnavailable) as refused:
        await http.request("GET", f"{url}/api/sessions")
    await http.aclose()
    assert refused.value.kind == "too_large"
    assert len(served) < 200  # stopped reading soon after the limit, never held it whole


async def test_the_deadline_bounds_the_whole_request_not_each_read(serve: Any) -> None:
    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for byte in b'{"success": true, "sessions": []}':
            await asyncio.sleep(0.05)
            await response.write(bytes([byte]))
        return response

    url = await serve(trickle)
    http = InstanceHttp(timeout=0.5)
    with pytest.raises(InstanceUnavailable) as late:
        await http.request("GET", f"{url}/api/sessions")
    await http.aclose()
    assert late.value.kind == "timeout"


async def test_a_lane_has_its_own_budget(serve: Any) -> None:
    """Slow calls on one lane (browser launches) never queue quick ones on the other."""
    release = asyncio.Event()
    slow_running = 0

    async def answer(request: web.Request) -> web.StreamResponse:
        nonlocal slow_running
        if request.path == "/slow":
            slow_running += 1
            await release.wait()
        return web.json_response({"ok": True})

    url = await serve(answer)
    probes = InstanceHttp(timeout=5, max_in_flight=2)
    starts = probes.lane(3)
    slow = [asyncio.create_task(starts.request("POST", f"{url}/slow")) for _ in range(5)]
    for _ in range(100):
        if slow_running == 3:
            break
        await asyncio.sleep(0.01)
    # The start lane is full (3 of 5 launched, 2 waiting); the probe lane answers at once.
    assert await asyncio.wait_for(probes.request("GET", f"{url}/quick"), 2) == (200,
                                                                                 {"ok": True})
    assert slow_running == 3
    release.set()
    await asyncio.gather(*slow)
    assert slow_running == 5
    await probes.aclose()


async def test_a_dropped_connection_and_a_closed_port_are_told_apart(serve: Any) -> None:
    async def drop(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()
        raise web.HTTPServiceUnavailable

    url = await serve(drop)
    http = InstanceHttp(timeout=5)
    with pytest.raises(InstanceUnavailable) as dropped:
        await http.request("GET", f"{url}/api/sessions")
    closed_port = url.rsplit(":", 1)[0] + ":1"
    with pytest.raises(InstanceUnavailable) as refused:
        await http.request("GET", f"{closed_port}/api/sessions")
    await http.aclose()
    assert (dropped.value.kind, refused.value.kind) == ("transport", "refused")
