"""Starts in waves (controller.starts): per-pod and fleet-wide slots, the oldest first, a
place in line for each waiting start, fewer at once on a pod that keeps failing them, and
launches on one pod spaced with jitter."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter

import pytest

from controller.starts import FAILURES_BEFORE_FEWER, StartSlots, launch_delay, next_limit
from tests.test_workqueue import FakeClock


@pytest.mark.parametrize(("limit", "failures", "succeeded", "expected"), [
    (3, 0, True, 3),
    (1, 0, True, 3),  # one success: the whole limit again
    (3, 1, False, 3),  # one failure is not yet a pattern
    (3, FAILURES_BEFORE_FEWER, False, 1),
    (2, FAILURES_BEFORE_FEWER, False, 1),
    (2, 5, False, 1),
    (1, 9, False, 1),  # never none: the pod must be able to succeed again
])
def test_a_pod_failing_starts_gets_fewer_until_one_succeeds(
        limit: int, failures: int, succeeded: bool, expected: int) -> None:
    assert next_limit(limit, 3, failures, succeeded) == expected


@pytest.mark.parametrize(("last", "now", "spacing", "jitter", "expected"), [
    (None, 10.0, 2.0, 1.0, 0.0),  # the first launch goes at once
    (10.0, 10.0, 0.0, 1.0, 0.0),  # no spacing
    (10.0, 10.5, 2.0, 1.0, 1.5),
    (10.0, 10.5, 2.0, 0.5, 0.5),
    (10.0, 10.5, 2.0, 1.5, 2.5),
    (10.0, 20.0, 2.0, 1.5, 0.0),  # long enough ago
])
def test_launches_on_a_pod_are_spaced_with_jitter(
        last: float | None, now: float, spacing: float, jitter: float, expected: float) -> None:
    assert launch_delay(last, now, spacing, jitter) == pytest.approx(expected)


class Starts:
    """Starts that run until the test lets them end, with the peaks they reached."""

    def __init__(self) -> None:
        self.running: Counter[str] = Counter()
        self.peaks: Counter[str] = Counter()
        self.fleet_peak = 0
        self.started: list[str] = []
        self.release: dict[str, asyncio.Future[bool]] = {}

    async def start(self, pod: str, name: str) -> bool:
        self.started.append(name)
        self.running[pod] += 1
        self.peaks[pod] = max(self.peaks[pod], self.running[pod])
        self.fleet_peak = max(self.fleet_peak, sum(self.running.values()))
        self.release[name] = asyncio.get_running_loop().create_future()
        try:
            return await self.release[name]
        finally:
            self.running[pod] -= 1

    def end(self, name: str, succeeded: bool = True) -> None:
        self.release[name].set_result(succeeded)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def slots_for(per_pod: int, fleet: int, tasks: list[asyncio.Task[None]], **kwargs: object
              ) -> StartSlots:
    return StartSlots(per_pod=per_pod, fleet=fleet,
                      spawn=lambda work: tasks.append(asyncio.create_task(work)),
                      **kwargs)  # type: ignore[arg-type]


async def test_starts_wait_for_a_slot_per_pod_and_in_the_fleet_oldest_first() -> None:
    tasks: list[asyncio.Task[None]] = []
    slots = slots_for(2, 3, tasks)
    starts = Starts()
    tickets = {name: slots.submit("ns", pod, functools.partial(starts.start, pod, name))
               for pod, name in (("a", "a1"), ("a", "a2"), ("a", "a3"), ("a", "a4"),
                                 ("b", "b1"), ("b", "b2"), ("c", "c1"))}
    assert len(tasks) == 5  # a runner per slot a pod may use, not a task per start
    await settle()
    assert sum(starts.running.values()) == 3  # the fleet's cap, though pods have room
    assert starts.started == ["a1", "a2", "b1"]
    # Places in line: a3 is next on a, a4 after it; a start submitted now on a would be 3rd.
    assert [slots.place("ns", "a", tickets[n]) for n in ("a1", "a3", "a4")] == [None, 1, 2]
    assert slots.line("ns", "a") == 3
    # b's two slots are taken (b2 holds one, waiting for the fleet): next there would wait;
    # c has a slot free.
    assert slots.lines("ns") == {"a": 3, "b": 1}
    for name in ("a1", "a2", "b1"):
        starts.end(name)
    await settle()
    # The fleet's freed slots go first to the starts that waited for the fleet longest
    # (b2, c1: their pods had room); then a's next in line.
    assert starts.started[3:] == ["b2", "c1", "a3"]
    for name in ("b2", "c1", "a3"):
        starts.end(name)
    await settle()
    assert starts.started[6:] == ["a4"]
    starts.end("a4")
    await asyncio.gather(*tasks)
    assert starts.fleet_peak == 3
    assert starts.peaks == Counter({"a": 2, "b": 1, "c": 1})
    assert slots.lines("ns") == {}


async def test_a_pod_that_keeps_failing_starts_gets_one_at_a_time_until_one_succeeds() -> None:
    tasks: list[asyncio.Task[None]] = []
    slots = slots_for(4, 100, tasks)
    starts = Starts()
    names = [f"s{i}" for i in range(12)]
    for name in names:
        slots.submit("ns", "a", functools.partial(starts.start, "a", name))
    await settle()
    assert starts.started == names[:4]
    starts.end("s0", succeeded=False)
    starts.end("s1", succeeded=False)  # two in a row: half as many
    await settle()
    assert slots.limit("ns", "a") == 2
    starts.end("s2", succeeded=False)
    starts.end("s3", succeeded=False)
    await settle()
    assert slots.limit("ns", "a") == 1
    assert starts.running["a"] == 1  # the slots above the limit closed
    running = starts.started[-1]
    starts.end(running, succeeded=True)  # it works again: the whole limit
    await settle()
    assert slots.limit("ns", "a") == 4
    assert starts.running["a"] == 4
    for name in starts.started:
        if not starts.release[name].done():
            starts.end(name)
    await settle()
    for name in starts.started:
        if not starts.release[name].done():
            starts.end(name)
    await asyncio.gather(*tasks)
    assert sorted(starts.started) == sorted(names)  # every start ran, none was dropped


async def test_launches_on_one_pod_wait_the_spacing_and_other_pods_do_not() -> None:
    clock = FakeClock()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.advance(seconds)

    tasks: list[asyncio.Task[None]] = []
    slots = slots_for(1, 10, tasks, spacing=2.0, clock=clock, sleep=sleep,
                      jitter=lambda: 1.25)

    async def quick() -> bool:
        clock.advance(0.5)  # the launch itself takes half a second
        return True

    for pod in ("a", "a", "a", "b"):
        slots.submit("ns", pod, quick)
    await asyncio.gather(*tasks)
    assert waits == [2.0, 2.0]  # a's 2nd and 3rd: 2.5 s after the one before, minus 0.5 s
