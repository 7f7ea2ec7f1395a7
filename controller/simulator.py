"""An instance simulator that speaks the `blazz` and `waha` protocols, for tests and demos.

It holds sessions in memory and answers with the paths, auth styles, state words,
error bodies and codes of DESIGN.md section 4. A control API under `/_sim/`
(unauthenticated; bind it to loopback) lets tests and demos add, remove and move
sessions, set their state, and make the instance crash, hang, answer slowly or
answer garbage. The control API keeps answering whatever the fault.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import httpx
from aiohttp import web

from controller.instances import PROTOCOLS, SessionState, blazz, waha

logger = logging.getLogger("wa_controller.simulator")

# The word each protocol uses for a normalized state (the inverse of its adapter's map).
_WORDS: dict[str, dict[SessionState, str]] = {
    "blazz": {
        SessionState.WORKING: "connected",
        SessionState.PAIRING: "qr_scanning",
        SessionState.STARTING: "authenticated",
        SessionState.FAILED: "error",
        SessionState.STOPPED: "disconnected",
    },
    "waha": {
        SessionState.WORKING: "WORKING",
        SessionState.PAIRING: "SCAN_QR_CODE",
        SessionState.STARTING: "STARTING",
        SessionState.FAILED: "FAILED",
        SessionState.STOPPED: "STOPPED",
    },
}
RESUME_METADATA = "wa-controller.io/resume"
_BLAZZ_EVENTS = {
    SessionState.WORKING: "session_ready",
    SessionState.STARTING: "session_authenticated",
    SessionState.PAIRING: "qr_code_generated",
    SessionState.FAILED: "session_disconnected",
    SessionState.STOPPED: "session_disconnected",
}


@dataclass
class WebhookSender:
    """Sends the instance's webhooks to `url`, signed as its protocol signs them.

    Every event is retried with backoff on refused connections, timeouts, 429 and 5xx
    answers (the seed's notifier gave up on 5xx, losing the event); other 4xx answers
    mean the event itself is refused, so it is dropped and logged.
    """

    protocol: str
    url: str
    secret: str
    worker_id: str
    source_address: str | None = None  # bind here, so the receiver sees the pod's IP
    max_attempts: int = 8
    first_delay: float = 0.2
    max_delay: float = 5.0
    results: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        transport = httpx.AsyncHTTPTransport(local_address=self.source_address)
        self._client = httpx.AsyncClient(transport=transport, timeout=5)
        self._tasks: set[asyncio.Task[None]] = set()

    def session_changed(self, name: str, status: str, state: SessionState,
                        workspace_id: str | None) -> None:
        """Queue the event a real instance sends when a session changes state."""
        event = self._blazz_event(name, status, state, workspace_id) \
            if self.protocol == "blazz" else self._waha_event(name, status)
        if event is None:
            return
        task = asyncio.get_running_loop().create_task(self._deliver(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _blazz_event(self, name: str, status: str, state: SessionState,
                     workspace_id: str | None) -> dict[str, Any] | None:
        event = _BLAZZ_EVENTS.get(state)
        if event is None:
            return None
        return {"event": event, "session": name, "timestamp": int(time.time() * 1000),
                "data": {"session_id": name, "workspace_id": workspace_id, "status": status}}

    def _waha_event(self, name: str, status: str) -> dict[str, Any]:
        return {
            "id": f"evt_{uuid.uuid4().hex}", "timestamp": int(time.time() * 1000),
            "event": "session.status", "session": name, "me": None,
            "payload": {"name": name, "status": status},
            "engine": "WEBJS",
            "environment": {"version": "simulator", "engine": "WEBJS", "tier": "CORE",
                            "worker": {"id": self.worker_id}},
        }

    def _signed(self, event: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(event, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        if self.protocol == "blazz":
            timestamp = str(int(time.time()))  # signed afresh on every attempt
            headers |= {"X-Timestamp": timestamp,
                        "X-HMAC-Signature": blazz.webhook_signature(self.secret, timestamp, body)}
        else:
            headers |= {"X-Webhook-Request-Id": event["id"],
                        "X-Webhook-Timestamp": str(event["timestamp"]),
                        "X-Webhook-Hmac": waha.webhook_signature(self.secret, body),
                        "X-Webhook-Hmac-Algorithm": "sha512"}
        return body, headers

    async def _deliver(self, event: dict[str, Any]) -> None:
        delay = self.first_delay
        for attempt in range(1, self.max_attempts + 1):
            body, headers = self._signed(event)
            self.results["attempts"] += 1
            try:
                answer = await self._client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as error:
                outcome = f"transport error {type(error).__name__}"
            else:
                if answer.is_success:
                    self.results["delivered"] += 1
                    return
                if answer.status_code < 500 and answer.status_code != 429:
                    self.results["refused"] += 1
                    logger.warning("webhook %s refused with %d: %s", event.get("event"),
                                   answer.status_code, answer.text[:200])
                    return
                outcome = f"HTTP {answer.status_code}"
            if attempt < self.max_attempts:
                logger.info("webhook %s attempt %d failed (%s); retrying in %.1f s",
                            event.get("event"), attempt, outcome, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_delay)
        self.results["failed"] += 1
        logger.warning("webhook %s failed after %d attempts", event.get("event"), self.max_attempts)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()


class Fault(StrEnum):
    NONE = "none"
    CRASH = "crash"  # drop every connection without an answer
    HANG = "hang"  # never answer
    SLOW = "slow"  # answer after `delay` seconds
    GARBAGE = "garbage"  # answer 200 with a body that is not JSON


@dataclass
class SimSession:
    name: str
    status: str  # the protocol's own word
    workspace_id: str | None = None
    phone_number: str | None = None
    connected_at: float | None = None


@dataclass
class InstanceSimulator:
    protocol: str
    api_key: str
    worker_id: str = "sim"
    auto_pair: float | None = None
    fault: Fault = Fault.NONE
    delay: float = 0.0
    drop_starts: bool = False
    webhooks: WebhookSender | None = None
    sessions: dict[str, SimSession] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    started_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.protocol not in _WORDS:
            raise ValueError(f"unknown protocol {self.protocol!r}: choose blazz or waha")
        self._words = _WORDS[self.protocol]
        self._normalize = PROTOCOLS[self.protocol].normalize
        self._pairing_tasks: set[asyncio.Task[None]] = set()

    # --- state helpers -------------------------------------------------------

    def word(self, state: SessionState) -> str:
        return self._words[state]

    def put(self, name: str, status: str, workspace_id: str | None = None, *,
            quiet: bool = False) -> SimSession:
        """Set a session's status; unless `quiet`, send the webhook a real instance would."""
        session = self.sessions.get(name)
        changed = session is None or session.status != status
        session = session or SimSession(name, status, workspace_id)
        session.status = status
        session.workspace_id = workspace_id or session.workspace_id
        if self._normalize(status) is SessionState.WORKING:
            session.connected_at = session.connected_at or time.time()
        self.sessions[name] = session
        if self.webhooks is not None and changed and not quiet:
            self.webhooks.session_changed(name, status, self._normalize(status),
                                          session.workspace_id)
        if self._normalize(status) is SessionState.PAIRING and self.auto_pair is not None:
            task = asyncio.get_running_loop().create_task(self._pair_later(name))
            self._pairing_tasks.add(task)
            task.add_done_callback(self._pairing_tasks.discard)
        return session

    async def _pair_later(self, name: str) -> None:
        await asyncio.sleep(self.auto_pair or 0)
        session = self.sessions.get(name)
        if session and self._normalize(session.status) is SessionState.PAIRING:
            self.put(name, self.word(SessionState.WORKING))

    def start(self, name: str, workspace_id: str | None, *, resume: bool) -> SimSession | None:
        if self.drop_starts:
            return None
        state = SessionState.WORKING if resume else SessionState.PAIRING
        return self.put(name, self.word(state), workspace_id)

    # --- the aiohttp application ---------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._faults], client_max_size=1 << 20)
        routes = self._blazz_routes() if self.protocol == "blazz" else self._waha_routes()
        app.add_routes(routes + self._control_routes())
        return app

    @web.middleware
    async def _faults(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/_sim/"):
            return await handler(request)
        self.requests[f"{request.method} {request.match_info.route.resource.canonical}"
                      if request.match_info.route.resource else request.path] += 1
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
        return await handler(request)

    # --- blazz: the seed's Node.js service -------------------------------------

    def _blazz_key_ok(self, given: object) -> bool:
        return isinstance(given, str) and hmac.compare_digest(given, self.api_key)

    def _blazz_routes(self) -> list[web.RouteDef]:
        invalid = {"error": "Invalid API key"}

        async def health(_: web.Request) -> web.Response:
            working = sum(
                self._normalize(s.status) is SessionState.WORKING for s in self.sessions.values()
            )
            return web.json_response({
                "status": "healthy",
                "uptime": round(time.time() - self.started_at, 1),
                "sessions": {
                    "total": len(self.sessions),
                    "connected": working,
                    "disconnected": len(self.sessions) - working,
                },
                "memory": {"used": 64, "total": 1024, "unit": "MB"},
            })

        def describe(s: SimSession) -> dict[str, Any]:
            return {"session_id": s.name, "workspace_id": s.workspace_id, "status": s.status,
                    "phone_number": s.phone_number, "connected_at": s.connected_at}

        async def list_sessions(request: web.Request) -> web.Response:
            if not self._blazz_key_ok(request.query.get("api_key")):
                return web.json_response(invalid, status=401)
            sessions = [describe(s) for s in self.sessions.values()]
            return web.json_response(
                {"success": True, "sessions": sessions, "total": len(sessions)}
            )

        async def session_status(request: web.Request) -> web.Response:
            if not self._blazz_key_ok(request.query.get("api_key")):
                return web.json_response(invalid, status=401)
            session = self.sessions.get(request.match_info["id"])
            if session is None:
                return web.json_response({"error": "Session not found"}, status=404)
            return web.json_response({**describe(session), "last_activity": time.time()})

        async def body_of(request: web.Request) -> dict[str, Any] | None:
            try:
                body = await request.json()
            except ValueError:
                return None
            return body if isinstance(body, dict) else None

        async def create(request: web.Request) -> web.Response:
            body = await body_of(request)
            if body is None or not isinstance(body.get("session_id"), str):
                return web.json_response({"error": "session_id is required"}, status=400)
            if not self._blazz_key_ok(body.get("api_key")):
                return web.json_response(invalid, status=401)
            name = body["session_id"]
            if name in self.sessions:
                return web.json_response({"error": "Session already exists"}, status=409)
            session = self.start(name, body.get("workspace_id"), resume=False)
            status = session.status if session else self.word(SessionState.PAIRING)
            return web.json_response({"success": True, "session_id": name, "status": status})

        async def restore(request: web.Request) -> web.Response:
            body = await body_of(request) or {}
            if not self._blazz_key_ok(body.get("api_key")):
                return web.json_response(invalid, status=401)
            name = request.match_info["id"]
            session = self.start(name, body.get("workspace_id"), resume=True)
            status = session.status if session else self.word(SessionState.STARTING)
            return web.json_response({"success": True, "session_id": name, "status": status})

        async def delete(request: web.Request) -> web.Response:
            body = await body_of(request) or {}
            if not self._blazz_key_ok(body.get("api_key")):
                return web.json_response(invalid, status=401)
            if self.sessions.pop(request.match_info["id"], None) is None:
                return web.json_response({"error": "Session not found"}, status=404)
            return web.json_response({"success": True})

        return [
            web.get("/health", health),
            web.get("/api/sessions", list_sessions),
            web.get("/api/sessions/{id}/status", session_status),
            web.post("/api/sessions", create),
            web.post("/api/sessions/{id}/restore", restore),
            web.delete("/api/sessions/{id}", delete),
        ]

    # --- waha ----------------------------------------------------------------

    def _waha_routes(self) -> list[web.RouteDef]:
        def authorized(request: web.Request) -> bool:
            return hmac.compare_digest(request.headers.get("X-Api-Key", ""), self.api_key)

        unauthorized = {"message": "Unauthorized", "statusCode": 401}

        def describe(s: SimSession) -> dict[str, Any]:
            me = {"id": f"{s.phone_number}@c.us"} if s.phone_number else None
            return {"name": s.name, "status": s.status, "me": me,
                    "assignedWorker": self.worker_id, "config": {}}

        def missing(name: str) -> web.Response:
            return web.json_response(
                {"message": f"Session '{name}' does not exist", "statusCode": 404}, status=404
            )

        async def ping(_: web.Request) -> web.Response:
            return web.json_response({"message": "pong"})

        async def server_status(request: web.Request) -> web.Response:
            if not authorized(request):
                return web.json_response(unauthorized, status=401)
            return web.json_response(
                {"startTimestamp": int(self.started_at * 1000), "worker": {"id": self.worker_id}}
            )

        async def list_sessions(request: web.Request) -> web.Response:
            if not authorized(request):
                return web.json_response(unauthorized, status=401)
            everything = request.query.get("all") == "true"
            stopped = self.word(SessionState.STOPPED)
            return web.json_response([
                describe(s) for s in self.sessions.values() if everything or s.status != stopped
            ])

        async def get_session(request: web.Request) -> web.Response:
            if not authorized(request):
                return web.json_response(unauthorized, status=401)
            session = self.sessions.get(request.match_info["name"])
            return web.json_response(describe(session)) if session else missing(
                request.match_info["name"]
            )

        async def create(request: web.Request) -> web.Response:
            if not authorized(request):
                return web.json_response(unauthorized, status=401)
            try:
                body = await request.json()
            except ValueError:
                body = None
            if not isinstance(body, dict) or not isinstance(body.get("name"), str):
                return web.json_response({"message": "name is required"}, status=400)
            name = body["name"]
            if name in self.sessions:
                return web.json_response(
                    {"message": f"Session '{name}' already exists", "statusCode": 422}, status=422
                )
            config = body.get("config") if isinstance(body.get("config"), dict) else {}
            metadata = config.get("metadata") if isinstance(config.get("metadata"), dict) else {}
            resume = metadata.get(RESUME_METADATA) == "true"
            if body.get("start", True):
                session = self.start(name, None, resume=resume)
            else:
                session = self.put(name, self.word(SessionState.STOPPED))
            if session is None:  # dropped start: answer as if accepted
                session = SimSession(name, self.word(SessionState.STARTING))
            return web.json_response(describe(session), status=201)

        async def action(request: web.Request) -> web.Response:
            if not authorized(request):
                return web.json_response(unauthorized, status=401)
            name, verb = request.match_info["name"], request.match_info["action"]
            session = self.sessions.get(name)
            if session is None:
                return missing(name)
            if verb == "stop":
                self.put(name, self.word(SessionState.STOPPED))
            elif not self.drop_starts:
                # A session that ran here before has its auth here: it comes back working.
                self.put(name, self.word(SessionState.WORKING))
            return web.json_response(describe(self.sessions[name]), status=201)

        async def delete(request: web.Request) -> web.Response:
            if not authorized(request):
                return web.json_response(unauthorized, status=401)
            if self.sessions.pop(request.match_info["name"], None) is None:
                return missing(request.match_info["name"])
            return web.json_response({}, status=200)

        return [
            web.get("/ping", ping),
            web.get("/api/server/status", server_status),
            web.get("/api/sessions", list_sessions),
            web.get("/api/sessions/{name}", get_session),
            web.post("/api/sessions", create),
            web.post("/api/sessions/{name}/{action:start|stop|restart}", action),
            web.delete("/api/sessions/{name}", delete),
        ]

    # --- control API -----------------------------------------------------------

    def _control_routes(self) -> list[web.RouteDef]:
        async def list_all(_: web.Request) -> web.Response:
            return web.json_response({
                name: {"status": s.status, "state": self._normalize(s.status).value,
                       "workspace_id": s.workspace_id}
                for name, s in self.sessions.items()
            })

        async def put_session(request: web.Request) -> web.Response:
            body = await request.json()
            if "status" in body:
                status = str(body["status"])
            else:
                status = self.word(SessionState(body.get("state", "working")))
            session = self.put(request.match_info["name"], status, body.get("workspace_id"),
                               quiet=bool(body.get("quiet")))
            return web.json_response({"name": session.name, "status": session.status})

        async def remove_session(request: web.Request) -> web.Response:
            removed = self.sessions.pop(request.match_info["name"], None)
            return web.json_response({"removed": removed is not None})

        async def move(request: web.Request) -> web.Response:
            body = await request.json()
            session = self.sessions.get(body["session"])
            if session is None:
                return web.json_response({"error": "no such session"}, status=404)
            state = body.get("state", self._normalize(session.status).value)
            async with httpx.AsyncClient(timeout=5) as client:
                answer = await client.put(
                    f"{str(body['to']).rstrip('/')}/_sim/sessions/{session.name}",
                    json={"state": state, "workspace_id": session.workspace_id,
                          "quiet": bool(body.get("quiet"))},
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
            return web.json_response({"dropStarts": self.drop_starts, "autoPair": self.auto_pair})

        async def reset(_: web.Request) -> web.Response:
            """An instance restart: every session in memory is gone."""
            self.sessions.clear()
            return web.json_response({"sessions": 0})

        async def stats(_: web.Request) -> web.Response:
            webhooks = dict(self.webhooks.results) if self.webhooks else {}
            return web.json_response({"requests": dict(self.requests),
                                      "total": sum(self.requests.values()),
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
        if simulator.webhooks is not None:
            await simulator.webhooks.aclose()
