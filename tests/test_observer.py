"""The observer's probe loop against a real (loopback) instance: a rediscovery is answered
at once, never held back by the gap that coalesces the pokes of a burst of placements."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from controller import observer as observer_module
from controller.events import EventRecorder
from controller.fleet import InstanceDefaults
from controller.instances import InstanceHttp
from controller.observer import Observer
from controller.secrets import SecretValue


async def key() -> str | None:
    return "k"


async def no_post(namespace: str, event: dict[str, Any]) -> None:
    """Events go nowhere here."""


async def test_a_rediscovery_probes_at_once_whatever_the_gap(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(observer_module, "MIN_PROBE_GAP", 3600.0)
    inventories = 0

    async def sessions(request: web.Request) -> web.Response:
        nonlocal inventories
        inventories += 1
        return web.json_response({"success": True, "sessions": [], "total": 0})

    app = web.Application()
    app.router.add_get("/api/sessions", sessions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    active, http = asyncio.Event(), InstanceHttp(timeout=5)
    active.set()
    events = EventRecorder(no_post)
    observer = Observer(http=http, api_key=SecretValue(key, "key"),
                        defaults=InstanceDefaults(port=port), interval=3600,
                        failure_threshold=3, pending_ttl=60, active=active, events=events)
    try:
        observer.pod_event("ADDED", {
            "metadata": {"name": "wa-0", "namespace": "ns", "uid": "u0"},
            "status": {"podIP": "127.0.0.1",
                       "conditions": [{"type": "Ready", "status": "True"}]}})
        await observer.reprobe("ns", within=30)  # the first probe
        assert inventories == 1
        await observer.reprobe("ns", within=30)  # right after it: not an hour later
        assert inventories == 2
    finally:
        await observer.close()
        await events.close()
        await http.aclose()
        await runner.cleanup()
