"""The simulator's webhook sender against a real HTTP receiver on loopback: signed so the
controller's adapters accept it, retried on 5xx and refused connections, not on 4xx."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from controller.instances import PROTOCOLS, InstanceEvent, SessionState
from controller.simulator import WebhookSender
from controller.testing.control_plane import free_port

SECRET = "sim-secret"


class Receiver:
    """Answers with the next status of `script` (then 200), verifying every request."""

    def __init__(self, protocol: str, script: list[int]) -> None:
        self.protocol, self.script = protocol, script
        self.statuses: list[int] = []
        self.events: list[InstanceEvent] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        event = PROTOCOLS[self.protocol].read_webhook(request.headers, body, SECRET,
                                                      time.time(), 300)
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
        app.router.add_post("/webhooks", receiver.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}/webhooks"

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


def sender(protocol: str, url: str) -> WebhookSender:
    return WebhookSender(protocol=protocol, url=url, secret=SECRET, worker_id="wa-7",
                         first_delay=0.05, max_delay=0.2, max_attempts=5)


@pytest.mark.parametrize("protocol", ["blazz", "waha"])
async def test_server_errors_are_retried_until_delivered(serve, protocol: str) -> None:
    receiver = Receiver(protocol, [500, 503, 429])
    webhooks = sender(protocol, await serve(receiver))
    word = "connected" if protocol == "blazz" else "WORKING"
    webhooks.session_changed("s1", word, SessionState.WORKING, "ws-1")
    await until("the event delivered", lambda: webhooks.results["delivered"] == 1)
    assert receiver.statuses == [500, 503, 429, 200]
    [event] = receiver.events
    assert (event.session, event.state) == ("s1", SessionState.WORKING)
    if protocol == "waha":
        assert event.worker_id == "wa-7"
    await webhooks.aclose()


async def test_a_refusal_is_not_retried(serve) -> None:
    receiver = Receiver("blazz", [401])
    webhooks = sender("blazz", await serve(receiver))
    webhooks.session_changed("s1", "qr_scanning", SessionState.PAIRING, None)
    await until("the refusal", lambda: webhooks.results["refused"] == 1)
    assert receiver.statuses == [401]
    assert webhooks.results["attempts"] == 1
    await webhooks.aclose()


async def test_an_unreachable_receiver_is_retried_then_given_up(serve) -> None:
    webhooks = sender("blazz", f"http://127.0.0.1:{free_port()}/webhooks")
    webhooks.session_changed("s1", "connected", SessionState.WORKING, None)
    await until("the event given up", lambda: webhooks.results["failed"] == 1)
    assert webhooks.results["attempts"] == 5
    await webhooks.aclose()
