"""A controller-style work queue: keys, not tasks, with delayed requeues and per-key backoff.

The shape of client-go's rate-limited delaying queue (which cert-manager's controllers
use): a key added while it waits is one entry (N events make one reconcile); a key added
while a worker holds it is marked dirty and handed out again once the worker is done, so
no key is ever processed by two workers at once; "look again in T" is `add_after`; a
failing key backs off exponentially until it succeeds. Time comes from a `Clock`, so
delays and backoff are tested without waiting.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from controller.clock import Clock, SystemClock

K = TypeVar("K", bound=Hashable)


@dataclass
class Backoff:
    """Exponential per-key backoff: base, doubled per failure in a row, capped."""

    base: float = 1.0
    cap: float = 300.0

    def delay(self, failures: int) -> float:
        return min(self.cap, self.base * 2 ** max(0, failures - 1))


@dataclass
class WorkQueue(Generic[K]):
    clock: Clock = field(default_factory=SystemClock)
    backoff: Backoff = field(default_factory=Backoff)
    _ready: deque[K] = field(default_factory=deque, init=False)  # FIFO of keys to hand out
    _queued: set[K] = field(default_factory=set, init=False)  # in _ready
    _processing: set[K] = field(default_factory=set, init=False)
    _dirty: set[K] = field(default_factory=set, init=False)  # re-added while processing
    _delayed: list[tuple[float, int, K]] = field(default_factory=list, init=False)
    _due: dict[K, float] = field(default_factory=dict, init=False)  # earliest due per key
    _failures: dict[K, int] = field(default_factory=dict, init=False)
    _counter: int = field(default=0, init=False)
    _changed: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def __len__(self) -> int:
        return len(self._ready)

    def add(self, key: K) -> None:
        """Hand the key out as soon as a worker is free (once, however often it is added)."""
        self._due.pop(key, None)
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.append(key)
            self._changed.set()

    def add_after(self, key: K, delay: float) -> None:
        """Hand the key out in `delay` seconds, unless it is due sooner already."""
        if delay <= 0:
            self.add(key)
            return
        due = self.clock.monotonic() + delay
        if key in self._queued or self._due.get(key, float("inf")) <= due:
            return
        self._due[key] = due
        self._counter += 1
        heapq.heappush(self._delayed, (due, self._counter, key))
        self._changed.set()

    def fail(self, key: K) -> float:
        """The key's work failed: hand it out again after its backoff; returns the delay."""
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        delay = self.backoff.delay(failures)
        self.add_after(key, delay)
        return delay

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    def forget(self, key: K) -> None:
        """The key's work succeeded (or the key is gone): its backoff starts over."""
        self._failures.pop(key, None)

    def discard(self, key: K) -> None:
        """The key is gone: no pending work or backoff for it."""
        self.forget(key)
        self._due.pop(key, None)
        self._dirty.discard(key)
        if key in self._queued:
            self._queued.discard(key)
            self._ready.remove(key)

    def promote(self) -> float | None:
        """Move every delayed key that is due to the ready list; seconds until the next."""
        now = self.clock.monotonic()
        while self._delayed:
            due, _, key = self._delayed[0]
            if self._due.get(key) != due:  # superseded by an earlier add or discarded
                heapq.heappop(self._delayed)
                continue
            if due > now:
                return due - now
            heapq.heappop(self._delayed)
            del self._due[key]
            self.add(key)
        return None

    def pop(self) -> K | None:
        """The next ready key (now held by the caller until `done`), or None."""
        self.promote()
        if not self._ready:
            return None
        key = self._ready.popleft()
        self._queued.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: K) -> None:
        """The caller finished with the key; one added meanwhile is handed out again."""
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    async def get(self) -> K:
        """Wait for the next ready key (delayed keys become ready when they are due)."""
        while True:
            key = self.pop()
            if key is not None:
                return key
            self._changed.clear()
            wait = self.promote()
            if self._ready:
                continue
            try:
                async with asyncio.timeout(wait):
                    await self._changed.wait()
            except TimeoutError:
                pass
