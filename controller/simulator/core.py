"""The simulator's core: sessions in memory, stored logins, faults, the `/_sim/` control API
and webhook delivery. What a protocol says and how is in its own file (`blazz.py`,
`waha.py`); this file names none of them.

By default each protocol reproduces the recorded behaviour of the real service
(`../shared/recordings/`): slow creates, broken restores, missing fields and all.
The control API (unauthenticated; bind it to loopback) lets tests and demos add,
remove and move sessions, set their state, and make the instance crash, hang,
answer slowly or answer garbage. It keeps answering whatever the fault.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import httpx
from aiohttp import web

from controller.instances import InstanceAdapter, SessionState

logger = logging.getLogger("wa_controller.simulator")


@dataclass
class SimSession:
    name: str
    status: str | None  # the protocol's own word; None: listed without one (blazz restore)
    workspace_id: str | None = None
    phone_number: str | None = None
    connected_at: float | None = None
    config: dict[str, Any] | None = None  # WAHA session config (metadata, webhooks, ...)


class Fault(StrEnum):
    NONE = "none"
    CRASH = "crash"  # drop every connection without an answer
    HANG = "hang"  # never answer
    SLOW = "slow"  # answer after `delay` seconds
    GARBAGE = "garbage"  # answer 200 with a body that is not JSON
    TRICKLE = "trickle"  # answer 200, one byte every `delay` seconds
    HTML = "html"  # answer 500 with an HTML error page (a proxy in front of it)


class LoginStore:
    """Stored logins (whatsapp-web.js LocalAuth/RemoteAuth, WAHA's session store).

    A session that was ever WORKING has a stored login: started again, it comes back
    without a QR scan. Pods that share a directory (a storage group: the seed's four
    instances share one sessions folder) restore each other's sessions; without one,
    a simulator remembers only its own.
    """

    def __init__(self, directory: Path | None) -> None:
        self._directory = directory
        self._known: set[str] = set()
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def remember(self, session: str) -> None:
        self._known.add(session)
        if self._directory is not None:
            (self._directory / session).touch()

    def forget(self, session: str) -> None:
        self._known.discard(session)
        if self._directory is not None:
            (self._directory / session).unlink(missing_ok=True)

    def has(self, session: str) -> bool:
        if self._directory is not None:
            return (self._directory / session).exists()
        return session in self._known


class SimProtocol(abc.ABC):
    """One protocol's routes, words, webhooks and signing, over the simulator's core."""

    name: ClassVar[str]
    adapter: ClassVar[type[InstanceAdapter]]
    words: ClassVar[dict[SessionState, str]]  # the word for each normalized state
    webhook_path: ClassVar[str] = ""  # appended to --webhook-url (blazz's is fixed)

    def __init__(self, sim: InstanceSimulator) -> None:
        self.sim = sim

    @abc.abstractmethod
    def routes(self) -> list[web.RouteDef]:
        """The service's own API."""

    def boot(self) -> None:  # noqa: B027 - most services start empty
        """What the service holds right after it started (WAHA Core lists `default`)."""

    @abc.abstractmethod
    def webhook(self, session: SimSession) -> dict[str, Any] | None:
        """The event the real service sends when `session` changed; None: it sends none."""

    @abc.abstractmethod
    def sign(self, body: bytes, event: dict[str, Any], secret: str) -> dict[str, str]:
        """The headers that carry the event's signature (signed afresh on every attempt)."""

    @abc.abstractmethod
    def retry_after(self, status: int | None, attempt: int) -> float | None:
        """Seconds before retrying a delivery that got `status` (None: a network error),
        or None to give up, as the real service does."""


@dataclass
class WebhookSender:
    """Sends the instance's webhooks to `url` (plus the protocol's fixed path), signed and
    retried as the protocol's real service does."""

    protocol: SimProtocol
    url: str
    secret: str
    source_address: str | None = None  # bind here, so the receiver sees the pod's IP
    delay_scale: float = 1.0  # tests shrink the real services' retry delays
    results: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        # aiohttp: with hundreds of webhooks queued, httpx cost a simulated fleet of 20 more
        # than a core (benchmarks measured the simulators, not the operator).
        self._client: aiohttp.ClientSession | None = None  # opened with the first send
        self._tasks: set[asyncio.Task[None]] = set()
        self.target = self.url.rstrip("/") + self.protocol.webhook_path \
            if self.protocol.webhook_path else self.url

    def send(self, session: SimSession) -> None:
        event = self.protocol.webhook(session)
        if event is None:
            return
        task = asyncio.get_running_loop().create_task(self._deliver(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, event: dict[str, Any]) -> None:
        body = json.dumps(event, separators=(",", ":")).encode()
        attempt = 0
        while True:
            attempt += 1
            headers = {"Content-Type": "application/json",
                       **self.protocol.sign(body, event, self.secret)}
            self.results["attempts"] += 1
            status: int | None = None
            try:
                async with self._session().post(self.target, data=body, headers=headers) as answer:
                    status = answer.status
            except (aiohttp.ClientError, TimeoutError) as error:
                outcome = f"transport error {type(error).__name__}"
            else:
                if 200 <= status < 300:
                    self.results["delivered"] += 1
                    return
                outcome = f"HTTP {status}"
            delay = self.protocol.retry_after(status, attempt)
            if delay is None:
                self.results["refused" if status is not None else "failed"] += 1
                logger.warning("webhook %s given up after %d attempts (%s)",
                               event.get("event"), attempt, outcome)
                return
            logger.info("webhook %s attempt %d failed (%s); retrying in %.1f s",
                        event.get("event"), attempt, outcome, delay)
            await asyncio.sleep(delay * self.delay_scale)

    def _session(self) -> aiohttp.ClientSession:
        if self._client is None:  # from the address served: the receiver sees the pod's IP
            local = (self.source_address, 0) if self.source_address else None
            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(local_addr=local),
                timeout=aiohttp.ClientTimeout(total=5))
        return self._client

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()


@dataclass
class StartCounts:
    """What the simulator was asked to start, for tests that count double starts."""

    creates: int = 0  # session creations (and starts) received
    restores: int = 0
    stops: int = 0
    double_creates: int = 0  # a create for a session already held or being created
    in_flight: Counter[str] = field(default_factory=Counter)  # session -> creates running
    peak_concurrent: int = 0  # most creates running at once
    per_session: Counter[str] = field(default_factory=Counter)  # session -> creates received

    def as_json(self) -> dict[str, Any]:
        return {"creates": self.creates, "restores": self.restores, "stops": self.stops,
                "doubleCreates": self.double_creates,
                "peakConcurrentCreates": self.peak_concurrent,
                "creating": sum(self.in_flight.values()),
                "createdAgain": sorted(n for n, c in self.per_session.items() if c > 1)[:20]}


@dataclass
class InstanceSimulator:
    protocol_name: str
    api_key: str
    worker_id: str = "sim"
    tier: str = "default"  # a protocol's variant (WAHA: core or plus)
    ideal: bool = False  # the idealized service instead of the recorded one (tests only)
    auto_pair: float | None = None
    create_delay: float = 1.0  # a create answers only after the browser loaded WhatsApp Web
    stop_delay: float = 0.0
    whatsapp_reachable: bool = True  # False: as recorded, every create fails after the browser
    version_endpoint: bool = True  # False: a release without one (WAHA before /api/version)
    fault: Fault = Fault.NONE
    delay: float = 0.0
    drop_starts: bool = False
    storage_dir: Path | None = None
    boot_sessions: list[str] = field(default_factory=list)
    # Raw entries appended to the session list as they are (malformed ones, for tests).
    extra_entries: list[Any] = field(default_factory=list)
    webhook_url: str | None = None
    webhook_secret: str | None = None
    source_address: str | None = None
    sessions: dict[str, SimSession] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    starts: StartCounts = field(default_factory=StartCounts)
    started_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        from controller.simulator import PROTOCOLS  # the registry, beside the protocol files

        if self.protocol_name not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol_name!r}: "
                             f"choose {', '.join(PROTOCOLS)}")
        self.protocol: SimProtocol = PROTOCOLS[self.protocol_name](self)
        self.logins = LoginStore(self.storage_dir)
        self.webhooks = WebhookSender(self.protocol, self.webhook_url, self.webhook_secret,
                                      self.source_address) \
            if self.webhook_url and self.webhook_secret else None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.protocol.boot()

    # --- sessions ------------------------------------------------------------

    def word(self, state: SessionState) -> str:
        return self.protocol.words[state]

    def state_of(self, session: SimSession) -> SessionState:
        if session.status is None:
            return SessionState.UNKNOWN
        return self.protocol.adapter.normalize(session.status)

    def put(self, name: str, status: str | None, workspace_id: str | None = None, *,
            quiet: bool = False, launching: bool = False) -> SimSession:
        """Set a session's status; unless `quiet`, send the webhook a real instance would."""
        session = self.sessions.get(name)
        changed = session is None or session.status != status
        session = session or SimSession(name, status, workspace_id)
        session.status = status
        session.workspace_id = workspace_id or session.workspace_id
        state = self.state_of(session)
        if state is SessionState.WORKING:
            session.connected_at = session.connected_at or time.time()
            self.logins.remember(name)
        self.sessions[name] = session
        if self.webhooks is not None and changed and not quiet:
            self.webhooks.send(session)
        if state is SessionState.PAIRING and self.auto_pair is not None and not launching:
            # The QR code shows once the launch is over (blazz lists qr_scanning before).
            self.spawn(self._pair_later(name))
        return session

    def spawn(self, work: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _pair_later(self, name: str) -> None:
        await asyncio.sleep(self.auto_pair or 0)
        session = self.sessions.get(name)
        if session and self.state_of(session) is SessionState.PAIRING:
            self.put(name, self.word(SessionState.WORKING))

    def launch(self, name: str, workspace_id: str | None, *, listed_as: SessionState,
               announce: bool = False, config: dict[str, Any] | None = None
               ) -> asyncio.Task[SimSession | None]:
        """A browser launch: listed as `listed_as` at once, up after `create_delay`: WORKING
        when a stored login exists, else waiting for a QR scan. The task's result is None
        when the session did not come up (dropped, failed, or removed meanwhile)."""
        counts = self.starts
        counts.creates += 1
        counts.per_session[name] += 1
        current = self.sessions.get(name)
        if counts.in_flight[name] or (current is not None and self.state_of(current) not in (
                SessionState.STOPPED, SessionState.FAILED)):
            counts.double_creates += 1
        if self.drop_starts:
            return self.spawn(asyncio.sleep(0, None))
        counts.in_flight[name] += 1
        counts.peak_concurrent = max(counts.peak_concurrent, sum(counts.in_flight.values()))
        session = self.put(name, self.word(listed_as), workspace_id, quiet=not announce,
                           launching=True)
        if config is not None:
            session.config = config
        return self.spawn(self._come_up(session))

    async def _come_up(self, session: SimSession) -> SimSession | None:
        name = session.name
        try:
            if self.create_delay:
                await asyncio.sleep(self.create_delay)
            if self.sessions.get(name) is not session or not self.whatsapp_reachable:
                return None  # deleted (or replaced) while it launched, or WhatsApp is away
            ready = self.logins.has(name)
            return self.put(name, self.word(SessionState.WORKING if ready
                                            else SessionState.PAIRING))
        finally:
            self.starts.in_flight[name] -= 1
            if not self.starts.in_flight[name]:
                del self.starts.in_flight[name]

    def reboot(self) -> None:
        """An instance restart: every session in memory is gone; the service then brings up
        what it knows (the seed's boot-time re-creation of every active account)."""
        self.sessions.clear()
        self.protocol.boot()
        for name in self.boot_sessions:
            self.launch(name, None, listed_as=SessionState.PAIRING)

    # --- the aiohttp application ---------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._faults], client_max_size=16 << 20)
        app.add_routes(self.protocol.routes() + self._control_routes())
        return app

    @web.middleware
    async def _faults(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/_sim/"):
            return await handler(request)
        resource = request.match_info.route.resource
        self.requests[f"{request.method} {resource.canonical}" if resource
                      else request.path] += 1
        if self.fault is Fault.CRASH:
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable  # never reaches the client: the socket is gone
        if self.fault is Fault.HANG:
            await asyncio.sleep(3600)
        if self.fault is Fault.SLOW:
            await asyncio.sleep(self.delay)
        if self.fault is Fault.GARBAGE:
            return web.Response(
                status=200, body=b'{"sessions": [{"sess', content_type="application/json"
            )
        if self.fault is Fault.HTML:
            return web.Response(status=500, content_type="text/html",
                                text="<html><body><h1>502 Bad Gateway</h1></body></html>")
        if self.fault is Fault.TRICKLE:
            trickle = web.StreamResponse(headers={"Content-Type": "application/json"})
            await trickle.prepare(request)
            for byte in b'{"success": true, "sessions": []}':
                await asyncio.sleep(self.delay or 1.0)
                await trickle.write(bytes([byte]))
            return trickle
        return await handler(request)

    # --- control API -----------------------------------------------------------

    def _control_routes(self) -> list[web.RouteDef]:
        async def list_all(_: web.Request) -> web.Response:
            return web.json_response({
                name: {"status": s.status, "state": self.state_of(s).value,
                       "workspace_id": s.workspace_id, "config": s.config}
                for name, s in self.sessions.items()
            })

        async def put_session(request: web.Request) -> web.Response:
            body = await request.json()
            if "status" in body:
                status = None if body["status"] is None else str(body["status"])
            else:
                status = self.word(SessionState(body.get("state", "working")))
            session = self.put(request.match_info["name"], status, body.get("workspace_id"),
                               quiet=bool(body.get("quiet")))
            if isinstance(body.get("config"), dict):
                session.config = body["config"]
            return web.json_response({"name": session.name, "status": session.status})

        async def remove_session(request: web.Request) -> web.Response:
            removed = self.sessions.pop(request.match_info["name"], None)
            return web.json_response({"removed": removed is not None})

        async def move(request: web.Request) -> web.Response:
            body = await request.json()
            session = self.sessions.get(body["session"])
            if session is None:
                return web.json_response({"error": "no such session"}, status=404)
            state = body.get("state", self.state_of(session).value)
            async with httpx.AsyncClient(timeout=5) as client:
                answer = await client.put(
                    f"{str(body['to']).rstrip('/')}/_sim/sessions/{session.name}",
                    json={"state": state, "workspace_id": session.workspace_id,
                          "config": session.config, "quiet": bool(body.get("quiet"))},
                )
                answer.raise_for_status()
            del self.sessions[session.name]
            return web.json_response({"moved": session.name, "to": body["to"]})

        async def set_fault(request: web.Request) -> web.Response:
            body = await request.json()
            self.fault = Fault(body.get("mode", "none"))
            self.delay = float(body.get("delay", 0.0))
            return web.json_response({"mode": self.fault.value, "delay": self.delay})

        async def configure(request: web.Request) -> web.Response:
            body = await request.json()
            if "dropStarts" in body:
                self.drop_starts = bool(body["dropStarts"])
            if "autoPair" in body:
                self.auto_pair = None if body["autoPair"] is None else float(body["autoPair"])
            if "apiKey" in body:
                self.api_key = str(body["apiKey"])
            if "createDelay" in body:
                self.create_delay = float(body["createDelay"])
            if "stopDelay" in body:
                self.stop_delay = float(body["stopDelay"])
            if "whatsappReachable" in body:
                self.whatsapp_reachable = bool(body["whatsappReachable"])
            if "versionEndpoint" in body:
                self.version_endpoint = bool(body["versionEndpoint"])
            if "extraEntries" in body:
                self.extra_entries = list(body["extraEntries"])
            if "bootSessions" in body:
                self.boot_sessions = [str(s) for s in body["bootSessions"]]
            return web.json_response({
                "dropStarts": self.drop_starts, "autoPair": self.auto_pair,
                "createDelay": self.create_delay, "stopDelay": self.stop_delay,
                "whatsappReachable": self.whatsapp_reachable, "bootSessions": self.boot_sessions,
            })

        async def reset(_: web.Request) -> web.Response:
            self.reboot()
            return web.json_response({"sessions": len(self.sessions),
                                      "booting": len(self.boot_sessions)})

        async def stats(_: web.Request) -> web.Response:
            webhooks = dict(self.webhooks.results) if self.webhooks else {}
            return web.json_response({"requests": dict(self.requests),
                                      "total": sum(self.requests.values()),
                                      "starts": self.starts.as_json(),
                                      "webhooks": webhooks})

        return [
            web.get("/_sim/sessions", list_all),
            web.put("/_sim/sessions/{name}", put_session),
            web.delete("/_sim/sessions/{name}", remove_session),
            web.post("/_sim/move", move),
            web.post("/_sim/fault", set_fault),
            web.post("/_sim/config", configure),
            web.post("/_sim/reset", reset),
            web.get("/_sim/stats", stats),
        ]

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.webhooks is not None:
            await self.webhooks.aclose()


async def body_of(request: web.Request) -> dict[str, Any] | None:
    """The request's JSON object, or None when it is not one."""
    with contextlib.suppress(ValueError):
        body = await request.json()
        return body if isinstance(body, dict) else None
    return None


async def serve(simulator: InstanceSimulator, host: str, port: int) -> None:
    """Serve until cancelled."""
    runner = web.AppRunner(simulator.app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await simulator.aclose()
