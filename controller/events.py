"""Kubernetes events about accounts and instance pods, posted from one bounded queue.

kopf posts the events of each object from a task of its own: a burst of 10,000 placements
held 10,000 tasks at once, each with a request waiting for a connection to the API server,
a large share of the operator's memory in the burst (and memory Python does not give back
after it). Here an event waits in one queue as a small record, and a few posters send them
in the order they came. Events are auxiliary: one that cannot be posted is dropped and
logged (once a minute), never retried for long, and never holds anything else up.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from controller.clock import Clock, SystemClock

logger = logging.getLogger("wa_controller.events")

COMPONENT = "wa-controller"  # the "From" column of `kubectl describe`
MAX_MESSAGE = 1024  # the API server refuses longer event messages
RETRY_DELAYS = (1.0, 2.0)  # a failed post is tried again after these, then dropped
PostEvent = Callable[[str, dict[str, Any]], Awaitable[object]]  # (namespace, Event body)


@dataclass(frozen=True, slots=True)
class _Pending:
    involved: dict[str, str]
    type: str
    reason: str
    message: str
    at: datetime


class EventRecorder:
    def __init__(self, post: PostEvent, *, posters: int = 16, limit: int = 10_000,
                 clock: Clock | None = None) -> None:
        self._post = post
        self._posters = posters
        self._limit = limit
        self._clock = clock or SystemClock()
        self._queue: deque[_Pending] = deque()
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._told: dict[str, float] = {}  # what went wrong -> when it was last logged

    def record(self, involved: Mapping[str, Any], type_: Literal["Normal", "Warning"],
               reason: str, message: str) -> None:
        """Queue an event about `involved` (an object with apiVersion, kind and metadata);
        returns at once. Past `limit` waiting, the event is dropped (and that logged)."""
        if not self._tasks:  # started with the first event, inside the running loop
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._poster(), name=f"event poster {i}")
                           for i in range(self._posters)]
        if len(self._queue) >= self._limit:
            self._tell("queue_full", f"{len(self._queue)} events wait to be posted: dropped "
                       f"{reason} for {involved.get('metadata', {}).get('name')}")
            return
        metadata = involved.get("metadata") or {}
        reference = {"apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
                     "name": metadata.get("name"), "namespace": metadata.get("namespace"),
                     "uid": metadata.get("uid")}
        self._queue.append(_Pending({k: v for k, v in reference.items() if v}, type_, reason,
                                    message[:MAX_MESSAGE], self._clock.now()))
        self._ready.set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _poster(self) -> None:
        while True:
            if not self._queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            await self._send(self._queue.popleft())

    async def _send(self, event: _Pending) -> None:
        namespace = event.involved.get("namespace") or "default"
        stamp = event.at.isoformat()
        body = {
            "metadata": {"generateName": f"{event.involved.get('name', 'object')}.",
                         "namespace": namespace},
            "involvedObject": event.involved,
            "type": event.type, "reason": event.reason, "message": event.message,
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        for delay in (*RETRY_DELAYS, None):
            try:
                await self._post(namespace, body)
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the API server refused or is away
                if delay is None:
                    self._tell(type(error).__name__, f"event {event.reason} for "
                               f"{event.involved.get('name')} not posted: {error}")
                    return
                await asyncio.sleep(delay)

    def _tell(self, what: str, detail: str) -> None:
        """One log line per kind of trouble a minute: events are not worth a log storm."""
        now = self._clock.monotonic()
        if now - self._told.get(what, -60.0) >= 60.0:
            self._told[what] = now
            logger.warning("%s", detail)
