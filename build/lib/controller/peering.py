"""Whether this replica acts: kopf's peering, read from its peering object.

kopf pauses its own watchers on a replica that sees a live peer of higher (or equal)
priority, but the work queue, the probes and the receivers are ours: they follow the
same rule from the same object, so a standby reconciles, probes and relays nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

logger = logging.getLogger("wa_controller.peering")

ReadPeering = Callable[[], Awaitable[Mapping[str, Any] | None]]


def acting(peers: Mapping[str, Any], priority: int, now: datetime) -> bool:
    """kopf's rule: act unless a live peer has a higher priority, or another has ours.

    `peers` is the peering object's status: identity -> {priority, lastseen, lifetime}.
    Our own entry is the one with our priority; until kopf wrote it, we do not act.
    """
    same = higher = 0
    for info in peers.values():
        if not isinstance(info, Mapping) or _dead(info, now):
            continue
        theirs = info.get("priority", 0)
        higher += theirs > priority
        same += theirs == priority
    return higher == 0 and same == 1


def _dead(info: Mapping[str, Any], now: datetime) -> bool:
    try:
        seen = datetime.fromisoformat(str(info["lastseen"]))
        lifetime = timedelta(seconds=float(info.get("lifetime", 60)))
    except (KeyError, ValueError):
        return True
    if seen.tzinfo is None:
        seen = seen.replace(tzinfo=UTC)
    return seen + lifetime < now


class PeeringGate:
    """`active` is set while this replica acts. Standalone: always."""

    def __init__(self, read: ReadPeering | None, priority: int, *, interval: float = 2.0
                 ) -> None:
        self._read, self._priority, self._interval = read, priority, interval
        self.active = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        if read is None:
            self.active.set()

    def start(self, on_resume: Callable[[], None]) -> None:
        if self._read is not None:
            self._task = asyncio.get_running_loop().create_task(self._watch(on_resume))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _watch(self, on_resume: Callable[[], None]) -> None:
        assert self._read is not None
        while True:
            try:
                body = await self._read()
            except Exception as error:  # the API server is away: keep what we know
                logger.warning("cannot read the peering object: %s", error)
            else:
                peers = (body or {}).get("status") or {}
                now_acting = acting(peers, self._priority, datetime.now(UTC))
                if now_acting and not self.active.is_set():
                    logger.info("this replica acts now (peering priority %d)", self._priority)
                    self.active.set()
                    on_resume()
                elif not now_acting and self.active.is_set():
                    logger.info("another replica acts: standing by")
                    self.active.clear()
            await asyncio.sleep(self._interval)
