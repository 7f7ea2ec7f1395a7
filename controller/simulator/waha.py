"""WAHA (devlikeapro/waha), as recorded for 2024.10.8 Core, and a newer Plus release.

Core (the default, as recorded): only the session `default` (422 for any other name on
create, start and stop), `default` always listed (STOPPED when never created), stop and
delete sleep about 3 s, no API-key check, `/api/version`, unsigned webhooks without
`id`, `timestamp` or worker and without retries. Plus (`tier="plus"`, as the release
notes describe 2026.1+): any name, `X-Api-Key` (or `x-api-key` query) checked with 401,
`/api/server/version`, HMAC-SHA512 webhooks with `id`, `timestamp` and worker id, retried.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from typing import Any, ClassVar

from aiohttp import web

from controller.instances import SessionState, WahaAdapter
from controller.instances.waha import CORE_SESSION, webhook_signature
from controller.simulator.core import InstanceSimulator, SimProtocol, SimSession, body_of

_CORE_ONLY = ("WAHA Core support only 'default' session. If you want to run more then one "
              "WhatsApp account - please get WAHA PLUS version. Check this out: "
              "https://waha.devlike.pro/")
_PLUS_ONLY = ("The feature is available only in Plus version. Check this out: "
              "https://waha.devlike.pro/")
_VERSIONS = {"core": "2024.10.8", "plus": "2026.1.4"}
_MAX_ATTEMPTS = 15


def _unprocessable(message: str) -> web.Response:
    return web.json_response(
        {"statusCode": 422, "message": message, "error": "Unprocessable Entity"}, status=422)


class WahaProtocol(SimProtocol):
    name = "waha"
    adapter = WahaAdapter
    words: ClassVar[dict[SessionState, str]] = {
        SessionState.WORKING: "WORKING",
        SessionState.PAIRING: "SCAN_QR_CODE",
        SessionState.STARTING: "STARTING",
        SessionState.FAILED: "FAILED",
        SessionState.STOPPED: "STOPPED",
    }

    def __init__(self, sim: InstanceSimulator) -> None:
        super().__init__(sim)
        if sim.tier == "default":
            sim.tier = "core"
        if sim.tier not in _VERSIONS:
            raise ValueError(f"unknown WAHA tier {sim.tier!r}: choose core or plus")
        if self.core and not sim.stop_delay:
            sim.stop_delay = 3.0  # stop and delete sleep ~3 s before answering

    @property
    def core(self) -> bool:
        return self.sim.tier == "core"

    @property
    def environment(self) -> dict[str, Any]:
        env: dict[str, Any] = {"version": _VERSIONS[self.sim.tier], "engine": "NOWEB",
                               "tier": self.sim.tier.upper(), "browser": None}
        if not self.core:
            env["worker"] = {"id": self.sim.worker_id}
        return env

    def boot(self) -> None:
        if self.core:  # always listed, STOPPED until created
            self.sim.sessions[CORE_SESSION] = SimSession(CORE_SESSION, "STOPPED")

    def _authorized(self, request: web.Request) -> bool:
        if self.core:
            return True  # this release checks no key at all
        given = request.headers.get("X-Api-Key") or request.query.get("x-api-key") or ""
        return hmac.compare_digest(given, self.sim.api_key)

    def _describe(self, s: SimSession) -> dict[str, Any]:
        me = {"id": f"{s.phone_number}@c.us"} if s.phone_number else None
        entry = {"name": s.name, "status": s.status, "config": s.config, "me": me}
        if not self.core:
            entry["assignedWorker"] = self.sim.worker_id
        return entry

    def routes(self) -> list[web.RouteDef]:
        sim = self.sim

        def missing() -> web.Response:
            return web.json_response(
                {"statusCode": 404, "message": "Session not found", "error": "Not Found"},
                status=404)

        def guarded(handler: Any) -> Any:
            async def check(request: web.Request) -> web.StreamResponse:
                if not self._authorized(request):
                    return web.json_response(
                        {"message": "Unauthorized", "statusCode": 401}, status=401)
                return await handler(request)
            return check

        async def ping(_: web.Request) -> web.Response:
            return web.json_response({"message": "pong"})

        async def health(_: web.Request) -> web.Response:
            if self.core:
                return _unprocessable(_PLUS_ONLY)
            return web.json_response({"status": "ok"})

        async def server_status(_: web.Request) -> web.Response:
            return web.json_response({
                "startTimestamp": int(sim.started_at * 1000),
                "uptime": int((time.time() - sim.started_at) * 1000),
                "worker": {"id": sim.worker_id}})

        async def version(_: web.Request) -> web.Response:
            if not sim.version_endpoint:
                return web.json_response({"statusCode": 404, "message": "Cannot GET"},
                                         status=404)
            return web.json_response(self.environment)

        async def list_sessions(request: web.Request) -> web.Response:
            everything = request.query.get("all") == "true"
            return web.json_response([self._describe(s) for s in sim.sessions.values()
                                      if everything or s.status != "STOPPED"]
                                     + sim.extra_entries)

        async def get_session(request: web.Request) -> web.Response:
            session = sim.sessions.get(request.match_info["name"])
            if session is None:
                return missing()
            return web.json_response({**self._describe(session), "engine": {}})

        async def create(request: web.Request) -> web.Response:
            body = await body_of(request)
            if body is None or not isinstance(body.get("name"), str):
                return web.json_response({"statusCode": 400, "message": "name is required"},
                                         status=400)
            name = body["name"]
            if self.core and name != CORE_SESSION:
                return _unprocessable(_CORE_ONLY)
            if name in sim.sessions:  # Core's `default` always is
                return _unprocessable(f"Session '{name}' already exists. Use PUT to update it.")
            config = body.get("config") if isinstance(body.get("config"), dict) else {}
            session = sim.put(name, "STOPPED", quiet=True)
            session.config = config
            if body.get("start", True):
                await self._start(session)
            return web.json_response(self._describe(sim.sessions.get(name, session)),
                                     status=201)

        async def update(request: web.Request) -> web.Response:
            name = request.match_info["name"]
            if self.core and name != CORE_SESSION:
                return _unprocessable(_CORE_ONLY)
            session = sim.sessions.get(name)
            if session is None:
                return missing()
            body = await body_of(request) or {}
            if isinstance(body.get("config"), dict):
                session.config = body["config"]
            return web.json_response(self._describe(session))

        async def action(request: web.Request) -> web.Response:
            name, verb = request.match_info["name"], request.match_info["action"]
            if self.core and name != CORE_SESSION:
                return _unprocessable(_CORE_ONLY)
            session = sim.sessions.get(name)
            if session is None:
                return missing()
            if verb == "stop":
                sim.starts.stops += 1
                await asyncio.sleep(sim.stop_delay)
                sim.put(name, "STOPPED")
                return web.Response(status=201)
            await self._start(session)
            return web.Response(status=201)

        async def delete(request: web.Request) -> web.Response:
            name = request.match_info["name"]
            if self.core and name != CORE_SESSION:
                return _unprocessable(_CORE_ONLY)
            if name not in sim.sessions:
                return missing()
            sim.starts.stops += 1
            await asyncio.sleep(sim.stop_delay)
            sim.sessions.pop(name, None)
            if self.core:
                self.boot()
            return web.Response(status=200)

        return [
            web.get("/ping", ping),
            web.get("/health", health),
            web.get("/api/server/status", guarded(server_status)),
            web.get("/api/version" if self.core else "/api/server/version", guarded(version)),
            web.get("/api/sessions", guarded(list_sessions)),
            web.get("/api/sessions/{name}", guarded(get_session)),
            web.post("/api/sessions", guarded(create)),
            web.put("/api/sessions/{name}", guarded(update)),
            web.post("/api/sessions/{name}/{action:start|stop|restart}", guarded(action)),
            web.delete("/api/sessions/{name}", guarded(delete)),
        ]

    async def _start(self, session: SimSession) -> None:
        """The session goes STARTING at once (answered then), and up after the launch."""
        if self.sim.state_of(session) in (SessionState.WORKING, SessionState.PAIRING,
                                          SessionState.STARTING):
            return  # already running: a no-op
        self.sim.launch(session.name, None, listed_as=SessionState.STARTING, announce=True,
                        config=session.config)

    def webhook(self, session: SimSession) -> dict[str, Any] | None:
        config = session.config or {}
        event: dict[str, Any] = {
            "event": "session.status", "session": session.name,
            "metadata": config.get("metadata"), "me": None,
            "payload": {"name": session.name, "status": session.status},
            "engine": "NOWEB", "environment": self.environment,
        }
        if not self.core:
            event = {"id": f"evt_{uuid.uuid4().hex}", "timestamp": int(time.time() * 1000),
                     **event}
        return event

    def sign(self, body: bytes, event: dict[str, Any], secret: str) -> dict[str, str]:
        headers = {"User-Agent": f"WAHA/{_VERSIONS[self.sim.tier]}"}
        if self.core:
            return headers  # this release never signs
        return {**headers, "X-Webhook-Request-Id": event["id"],
                "X-Webhook-Timestamp": str(event["timestamp"]),
                "X-Webhook-Hmac": webhook_signature(secret, body),
                "X-Webhook-Hmac-Algorithm": "sha512"}

    def retry_after(self, status: int | None, attempt: int) -> float | None:
        if self.core or attempt >= _MAX_ATTEMPTS:
            return None  # 2024.10 sends once and only logs failures
        if status is None or status == 429 or status >= 500:
            return min(0.2 * 2 ** (attempt - 1), 5.0)
        return None
