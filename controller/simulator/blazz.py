"""The seed's Node.js whatsapp-web.js service ("blazz"), as recorded at commit 5d71136.

What the recording shows, reproduced by default: the API key only in the `api_key`
query parameter or body field; a create that answers only after the browser loaded
WhatsApp Web, lists the session as `qr_scanning` meanwhile, and has no existence check;
a restore that always answers 500; 200 for deleting an unknown session; webhooks to the
fixed path `/api/whatsapp/webhooks/webjs`, retried only on network errors and 429.
`ideal=True` gives the idealized service (working restore, 409 on a second create,
5xx retried) for tests that need it.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any, ClassVar

from aiohttp import web

from controller.instances import BlazzAdapter, SessionState
from controller.instances.blazz import webhook_signature
from controller.simulator.core import SimProtocol, SimSession, body_of

_EVENTS = {
    SessionState.WORKING: "session_ready",
    SessionState.STARTING: "session_authenticated",
    SessionState.PAIRING: "qr_code_generated",
    SessionState.FAILED: "session_disconnected",
    SessionState.STOPPED: "session_disconnected",
}
_INVALID_KEY = {"error": "Invalid API key"}
_MAX_RETRIES = 3  # WEBHOOK_MAX_RETRIES


class BlazzProtocol(SimProtocol):
    name = "blazz"
    adapter = BlazzAdapter
    words: ClassVar[dict[SessionState, str]] = {
        SessionState.WORKING: "connected",
        SessionState.PAIRING: "qr_scanning",
        SessionState.STARTING: "authenticated",
        SessionState.FAILED: "error",
        SessionState.STOPPED: "disconnected",
    }
    webhook_path = "/api/whatsapp/webhooks/webjs"

    def _key_ok(self, given: object) -> bool:
        return isinstance(given, str) and hmac.compare_digest(given, self.sim.api_key)

    @staticmethod
    def _entry(s: SimSession) -> dict[str, Any]:
        if s.status is None:  # restored by the service itself: stored without a status
            return {"session_id": s.name, "workspace_id": s.workspace_id}
        entry = {"session_id": s.name, "workspace_id": s.workspace_id, "status": s.status,
                 "phone_number": s.phone_number}
        if s.connected_at is not None:  # set once connected, absent before
            entry["connected_at"] = s.connected_at
        return entry

    def routes(self) -> list[web.RouteDef]:
        sim = self.sim

        async def health(_: web.Request) -> web.Response:
            working = sum(sim.state_of(s) is SessionState.WORKING for s in sim.sessions.values())
            return web.json_response({
                "status": "healthy",
                "uptime": round(time.time() - sim.started_at, 3),
                "sessions": {"total": len(sim.sessions), "connected": working,
                             "disconnected": len(sim.sessions) - working},
                "memory": {"used": 64, "total": 1024, "unit": "MB"},
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            })

        async def list_sessions(request: web.Request) -> web.Response:
            if not self._key_ok(request.query.get("api_key")):
                return web.json_response(_INVALID_KEY, status=401)
            sessions = [self._entry(s) for s in sim.sessions.values()] + sim.extra_entries
            return web.json_response(
                {"success": True, "sessions": sessions, "total": len(sessions)})

        async def session_status(request: web.Request) -> web.Response:
            if not self._key_ok(request.query.get("api_key")):
                return web.json_response(_INVALID_KEY, status=401)
            session = sim.sessions.get(request.match_info["id"])
            if session is None:
                return web.json_response({"error": "Session not found"}, status=404)
            return web.json_response({**self._entry(session),
                                      "last_activity": time.time()})

        async def create(request: web.Request) -> web.Response:
            body = await body_of(request) or {}
            if not self._key_ok(body.get("api_key")):
                return web.json_response(_INVALID_KEY, status=401)
            name = body.get("session_id")
            if not isinstance(name, str) or not name:
                return web.json_response({"error": "session_id is required"}, status=400)
            if sim.ideal and name in sim.sessions:
                return web.json_response({"error": "Session already exists"}, status=409)
            # The service goes on launching even if the caller hung up.
            launch = sim.launch(name, body.get("workspace_id"), listed_as=SessionState.PAIRING)
            session = await asyncio.shield(launch)
            if session is None and not sim.whatsapp_reachable:
                sim.sessions.pop(name, None)
                return web.json_response(
                    {"error": "net::ERR_NAME_NOT_RESOLVED at https://web.whatsapp.com/"},
                    status=500)
            return web.json_response({"success": True, "session_id": name,
                                      "status": self.words[SessionState.PAIRING]})

        async def restore(request: web.Request) -> web.Response:
            body = await body_of(request) or {}
            if not self._key_ok(body.get("api_key")):
                return web.json_response(_INVALID_KEY, status=401)
            sim.starts.restores += 1
            if not sim.ideal:  # SessionController reads workspace_id, passes workspaceId
                return web.json_response({"error": "workspaceId is not defined"}, status=500)
            name = request.match_info["id"]
            if not sim.logins.has(name):
                return web.json_response({"success": False, "message": "No stored session"})
            session = sim.put(name, self.words[SessionState.WORKING], body.get("workspace_id"))
            return web.json_response({"success": True, "session_id": name,
                                      "status": session.status})

        async def delete(request: web.Request) -> web.Response:
            body = await body_of(request) or {}
            if not self._key_ok(body.get("api_key")):
                return web.json_response(_INVALID_KEY, status=401)
            sim.starts.stops += 1
            name = request.match_info["id"]
            if sim.sessions.pop(name, None) is None:
                # Not in memory: the service removes sessions/<workspace>/<id> from disk
                # (ids shaped webjs_<workspace>_...), which is the stored login.
                if name.startswith("webjs_") and len(name.split("_")) >= 2:
                    sim.logins.forget(name)
                return web.json_response({
                    "success": True, "alreadyDisconnected": True,
                    "message": "Session already disconnected or not found in memory"})
            return web.json_response({"success": True, "message": "Session disconnected"})

        return [
            web.get("/health", health),
            web.get("/api/sessions", list_sessions),
            web.get("/api/sessions/{id}/status", session_status),
            web.post("/api/sessions", create),
            web.post("/api/sessions/{id}/restore", restore),
            web.delete("/api/sessions/{id}", delete),
        ]

    def webhook(self, session: SimSession) -> dict[str, Any] | None:
        state = self.sim.state_of(session)
        event = _EVENTS.get(state)
        if event is None:
            return None
        data: dict[str, Any] = {"workspace_id": session.workspace_id,
                                "session_id": session.name}
        if state is SessionState.WORKING:
            data |= {"phone_number": session.phone_number, "status": session.status}
        elif session.status is not None:
            data["status"] = session.status
        return {"event": event, "data": data}

    def sign(self, body: bytes, event: dict[str, Any], secret: str) -> dict[str, str]:
        timestamp = str(int(time.time()))
        return {"X-Timestamp": timestamp,
                "X-HMAC-Signature": webhook_signature(secret, timestamp, body),
                # Self-reported, and wrong in a pod: the receiver must never trust it.
                "X-Instance-Url": "http://localhost:3000"}

    def retry_after(self, status: int | None, attempt: int) -> float | None:
        if attempt > _MAX_RETRIES:
            return None
        if status is None:
            return 2.0 ** attempt  # 2, 4, 8 s
        if status == 429 or (self.sim.ideal and status >= 500):
            return 2.0 ** (attempt - 1)  # 1, 2, 4 s
        return None  # the real service drops the event on any other answer
