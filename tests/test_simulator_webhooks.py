"""The simulator's webhooks against a real HTTP receiver on loopback: each protocol's
path, signature and retry policy as the recorded service has them (blazz retries only
network errors and 429; WAHA Core signs nothing and never retries; WAHA Plus signs and
retries 5xx), and signed so that the controller's adapters accept them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from controller.instances import PROTOCOLS, InstanceEvent, SessionState, WebhookRejected
from controller.simulator import InstanceSimulator
from devtools.control_plane import free_port

SECRET = "sim-secret"


class Receiver:
    """Answers with the next status of `script` (then 200), reading every request."""

    def __init__(self, protocol: str, script: list[int]) -> None:
        self.protocol, self.script = protocol, script
        self.statuses: list[int] = []
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.events: list[InstanceEvent | WebhookRejected] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.paths.append(request.path)
        self.headers.append(dict(request.headers))
        try:
            event: Any = PROTOCOLS[self.protocol].read_webhook(
                request.headers, body, SECRET, time.time(), 300)
        except WebhookRejected as rejected:
            event = rejected
        status = self.script.pop(0) if self.script else 200
        self.statuses.append(status)
        if status == 200:
            self.events.append(event)
        return web.json_response({}, status=status)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Receiver], str]]:
    runners: list[web.AppRunner] = []

    async def start(receiver: Receiver) -> str:
        app = web.Application()
        app.router.add_post("/{path:.*}", receiver.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}"

    yield start  # type: ignore[misc]
    for runner in runners:
        await runner.cleanup()


async def until(what: str, condition: Callable[[], bool]) -> None:
    """Wait (at most 10 s) for `condition`, failing with what never happened."""
    try:
        async with asyncio.timeout(10):
            while not condition():  # noqa: ASYNC110 - polls counters the sender owns
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after 10 s waiting for {what}") from None


def simulator(protocol: str, url: str, **options: Any) -> InstanceSimulator:
    sim = InstanceSimulator(protocol, api_key="k", worker_id="wa-7", webhook_url=url,
                            webhook_secret=SECRET, **options)
    assert sim.webhooks is not None
    sim.webhooks.delay_scale = 0.01  # the real delays are seconds
    return sim


async def test_blazz_posts_to_its_fixed_path_signed_and_retries_429_only(serve) -> None:
    receiver = Receiver("blazz", [429, 429, 500])
    sim = simulator("blazz", await serve(receiver))
    sim.put("s1", "connected", "ws-1")
    await until("the event given up", lambda: sim.webhooks.results["refused"] == 1)
    # 429 twice retried, then a 500 drops the event: the seed's notifier loses it.
    assert receiver.statuses == [429, 429, 500]
    assert set(receiver.paths) == {"/api/whatsapp/webhooks/webjs"}
    assert receiver.headers[0]["X-Instance-Url"] == "http://localhost:3000"
    await sim.aclose()


async def test_blazz_events_verify_with_the_adapter(serve) -> None:
    receiver = Receiver("blazz", [])
    sim = simulator("blazz", await serve(receiver))
    sim.put("s1", "connected", "ws-1")
    await until("the event delivered", lambda: sim.webhooks.results["delivered"] == 1)
    [event] = receiver.events
    assert isinstance(event, InstanceEvent)
    assert (event.name, event.session, event.state) == (
        "session_ready", "s1", SessionState.WORKING)
    await sim.aclose()


async def test_the_idealized_blazz_retries_server_errors(serve) -> None:
    receiver = Receiver("blazz", [500, 503])
    sim = simulator("blazz", await serve(receiver), ideal=True)
    sim.put("s1", "connected", "ws-1")
    await until("the event delivered", lambda: sim.webhooks.results["delivered"] == 1)
    assert receiver.statuses == [500, 503, 200]
    await sim.aclose()


async def test_an_unreachable_receiver_is_retried_three_times_by_blazz() -> None:
    sim = simulator("blazz", f"http://127.0.0.1:{free_port()}")
    sim.put("s1", "connected")
    await until("the event given up", lambda: sim.webhooks.results["failed"] == 1)
    assert sim.webhooks.results["attempts"] == 4  # the first try and 3 retries
    await sim.aclose()


async def test_waha_core_sends_once_unsigned_without_id(serve) -> None:
    receiver = Receiver("waha", [500])
    sim = simulator("waha", await serve(receiver), tier="core")
    sim.put("default", "WORKING")
    await until("the event given up", lambda: sim.webhooks.results["refused"] == 1)
    assert receiver.statuses == [500]
    assert "X-Webhook-Hmac" not in receiver.headers[0]
    assert receiver.headers[0]["User-Agent"] == "WAHA/2024.10.8"
    await sim.aclose()


async def test_waha_plus_signs_names_its_worker_and_retries(serve) -> None:
    receiver = Receiver("waha", [500, 503, 429])
    sim = simulator("waha", await serve(receiver), tier="plus")
    sim.put("s1", "WORKING")
    await until("the event delivered", lambda: sim.webhooks.results["delivered"] == 1)
    assert receiver.statuses == [500, 503, 429, 200]
    [event] = receiver.events
    assert isinstance(event, InstanceEvent)
    assert (event.session, event.state, event.worker_id) == ("s1", SessionState.WORKING, "wa-7")
    await sim.aclose()


async def test_a_refusal_is_not_retried(serve) -> None:
    receiver = Receiver("waha", [401])
    sim = simulator("waha", await serve(receiver), tier="plus")
    sim.put("s1", "SCAN_QR_CODE")
    await until("the refusal", lambda: sim.webhooks.results["refused"] == 1)
    assert receiver.statuses == [401]
    assert sim.webhooks.results["attempts"] == 1
    await sim.aclose()
