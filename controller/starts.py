"""Where session starts wait their turn: one scheduler for every start (placement, restart
after a crash, move).

A browser launch costs a pod 300-400 MB and ~200 processes: mass starts OOM-kill pods, so
starts go in waves, as peers that restore fleets do (OpenWA: 3 at a time, 2 s apart; WAHA
advises 5 s between WEBJS starts). Per pod at most `per_pod` starts are in flight (fewer
while the pod keeps failing them), across the fleet at most `fleet`; the oldest waiting
goes first; launches on one pod are spaced by `spacing` seconds, jittered. A waiting start
is an entry in its pod's queue, not a task (10,000 waiting tasks held tens of MB).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from controller import metrics
from controller.clock import Clock, SystemClock

logger = logging.getLogger("wa_controller.starts")

StartCall = Callable[[], Awaitable[bool]]  # a start, ready to run; True when it succeeded
Spawn = Callable[[Coroutine[Any, Any, None]], object]
Sleep = Callable[[float], Awaitable[None]]
FAILURES_BEFORE_FEWER = 2  # starts failed in a row before a pod gets fewer at once


def next_limit(limit: int, per_pod: int, failures_in_a_row: int, succeeded: bool) -> int:
    """How many starts a pod gets at once after one more start ended: a pod that fails
    starts repeatedly gets half as many (down to one) until one succeeds again."""
    if succeeded:
        return per_pod
    if failures_in_a_row >= FAILURES_BEFORE_FEWER:
        return max(1, limit // 2)
    return limit


def launch_delay(last_launch: float | None, now: float, spacing: float, jitter: float
                 ) -> float:
    """Seconds to wait before the next launch on a pod: `spacing` after its last one,
    scaled by `jitter` (0.5 to 1.5), so that pods do not launch in lockstep."""
    if last_launch is None or spacing <= 0:
        return 0.0
    return max(0.0, last_launch + spacing * jitter - now)


@dataclass(slots=True)
class _PodLine:
    limit: int
    waiting: deque[StartCall] = field(default_factory=deque)
    runners: int = 0  # slots in use, each a task serving the queue
    submitted: int = 0  # tickets handed out
    taken: int = 0  # tickets whose turn came
    failures: int = 0  # starts failed in a row
    launching: int = 0  # starts under way (past both slots)
    last_launch: float | None = None


class StartSlots:
    def __init__(self, per_pod: int, fleet: int, spawn: Spawn, *, spacing: float = 0.0,
                 clock: Clock | None = None, sleep: Sleep = asyncio.sleep,
                 jitter: Callable[[], float] = lambda: random.uniform(0.5, 1.5),  # noqa: S311
                 ) -> None:
        self._per_pod = per_pod
        self._fleet = asyncio.Semaphore(fleet)
        self._spawn = spawn
        self._spacing = spacing
        self._clock = clock or SystemClock()
        self._sleep = sleep
        self._jitter = jitter
        self._pods: dict[tuple[str, str], _PodLine] = {}

    def submit(self, namespace: str, pod: str, start: StartCall) -> int:
        """Run `start` once the pod and the fleet have a free slot, after those before it.
        Returns its ticket (see `place`)."""
        line = self._pods.get((namespace, pod))
        if line is None:
            line = self._pods[(namespace, pod)] = _PodLine(self._per_pod)
        line.waiting.append(start)
        line.submitted += 1
        self._fill(namespace, pod, line)
        self._export(namespace, pod, line)
        return line.submitted

    def place(self, namespace: str, pod: str, ticket: int) -> int | None:
        """The place in line of the start with `ticket` (1: the next to go), or None once
        its turn came."""
        line = self._pods.get((namespace, pod))
        if line is None or ticket <= line.taken:
            return None
        return ticket - line.taken

    def line(self, namespace: str, pod: str) -> int:
        """The place a start submitted now would take: 0 when it would go at once."""
        line = self._pods.get((namespace, pod))
        if line is None or (line.runners < line.limit and not line.waiting):
            return 0
        return len(line.waiting) + 1

    def lines(self, namespace: str) -> dict[str, int]:
        """The namespace's pods where a start submitted now would wait: pod -> its place."""
        return {pod: place for (ns, pod) in self._pods if ns == namespace
                if (place := self.line(ns, pod))}

    def limit(self, namespace: str, pod: str) -> int:
        """Starts the pod gets at once now."""
        line = self._pods.get((namespace, pod))
        return self._per_pod if line is None else line.limit

    def _fill(self, namespace: str, pod: str, line: _PodLine) -> None:
        while line.runners < min(line.limit, len(line.waiting)):
            line.runners += 1
            self._spawn(self._run(namespace, pod, line))

    async def _run(self, namespace: str, pod: str, line: _PodLine) -> None:
        """One of the pod's slots: its starts, one at a time, while any wait and the pod's
        limit leaves this slot open."""
        try:
            while line.waiting and line.runners <= line.limit:
                start = line.waiting.popleft()
                line.taken += 1
                async with self._fleet:
                    delay = launch_delay(line.last_launch, self._clock.monotonic(),
                                         self._spacing, self._jitter())
                    if delay:
                        await self._sleep(delay)
                    line.last_launch = self._clock.monotonic()
                    line.launching += 1
                    self._export(namespace, pod, line)
                    try:
                        succeeded = await start()
                    except Exception:  # a bug: it must not stop the pod's other starts
                        logger.exception("a session start failed unexpectedly")
                        succeeded = False
                    finally:
                        line.launching -= 1
                self._ended(namespace, pod, line, succeeded)
                self._export(namespace, pod, line)
        finally:
            line.runners -= 1
            if not line.runners and not line.waiting and line.limit == self._per_pod:
                self._pods.pop((namespace, pod), None)  # nothing to remember of this pod
            elif line.runners < min(line.limit, len(line.waiting)):
                self._fill(namespace, pod, line)  # a start submitted as this slot closed

    @staticmethod
    def _export(namespace: str, pod: str, line: _PodLine) -> None:
        metrics.STARTS_WAITING.labels(namespace, pod).set(len(line.waiting))
        metrics.STARTS_IN_FLIGHT.labels(namespace, pod).set(line.launching)
        metrics.START_LIMIT.labels(namespace, pod).set(line.limit)

    def _ended(self, namespace: str, pod: str, line: _PodLine, succeeded: bool) -> None:
        line.failures = 0 if succeeded else line.failures + 1
        limit = next_limit(line.limit, self._per_pod, line.failures, succeeded)
        if limit != line.limit:
            if limit < line.limit:
                logger.warning("%s: %d starts on %s failed in a row; %d at a time there "
                               "until one succeeds", namespace, line.failures, pod, limit)
            else:
                logger.info("%s: a start on %s succeeded; %d at a time there again",
                            namespace, pod, limit)
            line.limit = limit
            self._fill(namespace, pod, line)
