"""Events are posted from one bounded queue by a few posters, never a task per object."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from controller.events import EventRecorder
from tests.test_workqueue import FakeClock


def pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}"}}


async def test_a_burst_waits_in_the_queue_for_a_few_posters(
    caplog: pytest.LogCaptureFixture
) -> None:
    posted: list[tuple[str, dict[str, Any]]] = []
    in_flight, peak = 0, 0
    go_on = asyncio.Event()

    async def post(namespace: str, event: dict[str, Any]) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await go_on.wait()
        in_flight -= 1
        posted.append((namespace, event))

    recorder = EventRecorder(post, posters=2, limit=5, clock=FakeClock())
    tasks_before = len(asyncio.all_tasks())
    with caplog.at_level(logging.WARNING, logger="wa_controller.events"):
        for i in range(10):
            recorder.record(pod(f"p{i}"), "Normal", "Placed", f"event {i}")
            await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) - tasks_before == 2  # the posters, however many events
    go_on.set()
    for _ in range(50):
        await asyncio.sleep(0)
    await recorder.close()
    assert peak == 2
    # Two were being posted when the queue filled up with five: three were dropped.
    assert sorted(e["message"] for _, e in posted) == [f"event {i}" for i in range(7)]
    assert len([r for r in caplog.records if "dropped" in r.getMessage()]) == 1
    namespace, first = next(p for p in posted if p[1]["message"] == "event 0")
    assert namespace == "ns"
    assert first["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "name": "p0",
                                       "namespace": "ns", "uid": "uid-p0"}
    assert (first["type"], first["reason"], first["count"]) == ("Normal", "Placed", 1)
    assert first["source"] == {"component": "wa-controller"}
    assert first["metadata"] == {"generateName": "p0.", "namespace": "ns"}


async def test_an_event_the_api_server_refuses_is_tried_three_times_then_dropped(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = 0

    async def refuse(namespace: str, event: dict[str, Any]) -> None:
        nonlocal attempts
        attempts += 1
        raise RuntimeError("the API server is away")

    monkeypatch.setattr("controller.events.RETRY_DELAYS", (0.0, 0.0))
    recorder = EventRecorder(refuse, posters=1, clock=FakeClock())
    with caplog.at_level(logging.WARNING, logger="wa_controller.events"):
        recorder.record(pod("p0"), "Warning", "InstanceAuthFailed", "refused the key")
        recorder.record(pod("p1"), "Warning", "InstanceAuthFailed", "refused the key")
        for _ in range(50):
            await asyncio.sleep(0)
    await recorder.close()
    assert attempts == 6
    assert len([r for r in caplog.records if "not posted" in r.getMessage()]) == 1
