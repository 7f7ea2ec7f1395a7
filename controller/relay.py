"""The relay: every verified instance webhook goes on to the application, as it came.

The operator is the one webhook endpoint of the fleet (a blazz instance has one
`LARAVEL_URL`), so the application gets its events (messages, receipts, QR codes) from
here: the original body byte for byte, re-signed in the protocol's own scheme with the
application's secret, with headers naming the pod that sent it and its URL built from
the pod (never the instance's self-reported `X-Instance-Url`).

Delivery is queued and runs on its own: the instance is answered as soon as the event is
queued. Events of one session are delivered in order; network errors, timeouts, 429 and
5xx are retried with exponential backoff; what cannot be delivered, or does not fit the
queue, is counted and logged (one line per destination per minute), never dropped
silently. Where the application URL comes from: a Secret in each served namespace
(`relay_secret`, keys `url` and `hmac-secret`), so a GitOps repository declares it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from controller import metrics
from controller.clock import Clock, SystemClock
from controller.instances import PROTOCOLS
from controller.workqueue import Backoff

logger = logging.getLogger("wa_controller.relay")

POD_HEADER = "X-WA-Controller-Pod"
NAMESPACE_HEADER = "X-WA-Controller-Namespace"
INSTANCE_URL_HEADER = "X-WA-Controller-Instance-Url"
EVENT_HEADER = "X-WA-Controller-Event"


@dataclass(frozen=True)
class Destination:
    url: str
    secret: str


@dataclass(frozen=True)
class RelayedEvent:
    namespace: str
    session: str
    protocol: str
    name: str
    body: bytes
    content_type: str
    pod: str
    instance_url: str
    queued_at: float


@dataclass(frozen=True)
class RelayLimits:
    max_events: int = 10_000  # queued at once, all sessions together
    max_bytes: int = 256 << 20
    attempts: int = 8
    first_delay: float = 0.5
    max_delay: float = 30.0
    timeout: float = 10.0


def retry_delay(status: int | None, attempt: int, limits: RelayLimits,
                retry_after: str | None = None) -> float | None:
    """Seconds before the next try of a delivery that got `status` (None: no answer), or
    None when it is not to be retried: a 2xx is done, other 4xx refuse the event itself."""
    if attempt >= limits.attempts:
        return None
    if status is not None and status != 429 and status < 500:
        return None
    delay = Backoff(limits.first_delay, limits.max_delay).delay(attempt)
    if retry_after is not None:
        with contextlib.suppress(ValueError):
            delay = min(limits.max_delay, max(delay, float(retry_after)))
    return delay


@dataclass
class Relay:
    destination: Callable[[str], Awaitable[Destination | None]]  # namespace -> where to
    limits: RelayLimits = field(default_factory=RelayLimits)
    clock: Clock = field(default_factory=SystemClock)

    def __post_init__(self) -> None:
        # aiohttp, as for the instances: httpx cost ~20 times the CPU per request.
        self._client: aiohttp.ClientSession | None = None  # opened on first use, in the loop
        self._queues: dict[tuple[str, str], deque[RelayedEvent]] = {}
        self._events = 0
        self._bytes = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._logged: dict[tuple[str, str], float] = {}
        metrics.RELAY_QUEUED.set_function(lambda: self._events)

    def offer(self, event: RelayedEvent) -> bool:
        """Queue an event for the application; False (counted, logged) when it does not fit."""
        if self._events + 1 > self.limits.max_events or \
                self._bytes + len(event.body) > self.limits.max_bytes:
            self._lost(event.namespace, "queue_full", "the relay queue is full")
            return False
        key = (event.namespace, event.session)
        queue = self._queues.get(key)
        self._events += 1
        self._bytes += len(event.body)
        metrics.RELAY_EVENTS.labels("queued").inc()
        if queue is not None:
            queue.append(event)
            return True
        self._queues[key] = deque([event])
        task = asyncio.get_running_loop().create_task(self._drain(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _drain(self, key: tuple[str, str]) -> None:
        """Deliver one session's events in order, each until done or given up."""
        queue = self._queues[key]
        try:
            while queue:
                event = queue[0]
                try:
                    await self._deliver(event)
                finally:
                    queue.popleft()
                    self._events -= 1
                    self._bytes -= len(event.body)
        finally:
            del self._queues[key]

    async def _deliver(self, event: RelayedEvent) -> None:
        attempt = 0
        while True:
            attempt += 1
            destination = await self.destination(event.namespace)
            if destination is None:
                metrics.RELAY_EVENTS.labels("no_destination").inc()
                return
            headers = {"Content-Type": event.content_type, POD_HEADER: event.pod,
                       NAMESPACE_HEADER: event.namespace, INSTANCE_URL_HEADER: event.instance_url,
                       EVENT_HEADER: event.name,
                       **PROTOCOLS[event.protocol].sign_webhook(event.body, destination.secret,
                                                                time.time())}
            status: int | None = None
            retry_after = None
            try:
                async with self._session().post(destination.url, data=event.body,
                                                headers=headers, allow_redirects=False
                                                ) as answer:
                    await answer.read()
            except (aiohttp.ClientError, TimeoutError) as error:
                outcome = f"{type(error).__name__}"
            else:
                if 200 <= answer.status < 300:
                    metrics.RELAY_EVENTS.labels("delivered").inc()
                    metrics.RELAY_SECONDS.observe(self.clock.monotonic() - event.queued_at)
                    return
                status, outcome = answer.status, f"HTTP {answer.status}"
                retry_after = answer.headers.get("Retry-After")
            delay = retry_delay(status, attempt, self.limits, retry_after)
            if delay is None:
                reason = "refused" if status is not None and status < 500 and status != 429 \
                    else "undeliverable"
                self._lost(event.namespace, reason,
                           f"{event.name} for session {event.session} not delivered to "
                           f"{destination.url} after {attempt} attempts ({outcome})")
                return
            metrics.RELAY_EVENTS.labels("retried").inc()
            await asyncio.sleep(delay)

    def _lost(self, namespace: str, reason: str, detail: str) -> None:
        metrics.RELAY_EVENTS.labels(f"dropped_{reason}").inc()
        now = self.clock.monotonic()
        if now - self._logged.get((namespace, reason), -60.0) >= 60.0:
            self._logged[(namespace, reason)] = now
            logger.warning("relay to the application of namespace %s lost an event (%s): %s",
                           namespace, reason, detail)

    def _session(self) -> aiohttp.ClientSession:
        if self._client is None:
            self._client = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.limits.timeout),
                cookie_jar=aiohttp.DummyCookieJar())
        return self._client

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
