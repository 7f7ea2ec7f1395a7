"""The `blazz` protocol: the seed's Node.js whatsapp-web.js service.

The API key travels as the `api_key` query parameter (GET) or body field
(POST/DELETE), never as a header: the seed's own health check failed for
months because it sent a header.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from pydantic import BaseModel, ValidationError

from controller.instances.base import (
    InstanceAdapter,
    InstanceEvent,
    InventoryReport,
    ObservedSession,
    SessionRequest,
    SessionState,
    WebhookRejected,
)
from controller.instances.errors import InstanceAuthError, InstanceError, InstanceUnavailable
from controller.secrets import same_secret

_STATES = {
    "connected": SessionState.WORKING,
    "qr_scanning": SessionState.PAIRING,
    "authenticated": SessionState.STARTING,
    "disconnected": SessionState.FAILED,
    "error": SessionState.FAILED,
}
# WhatsApp dropped the session and the service's AutoReconnect is bringing it back.
_RECONNECTING = frozenset({"disconnected"})
# A copy in these states holds nothing alive: a start replaces it (delete, then create).
_DEAD = frozenset({"disconnected", "error"})


# What an event says of its session when its data carries no status word.
_EVENT_STATES = {
    "session_ready": SessionState.WORKING,
    "session_authenticated": SessionState.STARTING,
    "qr_code_generated": SessionState.PAIRING,
    "session_disconnected": SessionState.FAILED,
}


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of the timestamp header followed by the raw body."""
    return hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).hexdigest()


class _WebhookData(BaseModel):
    session_id: str | None = None
    status: str | None = None


class _Webhook(BaseModel):
    event: str
    session: str | None = None
    data: _WebhookData = _WebhookData()


class BlazzAdapter(InstanceAdapter):
    protocol = "blazz"

    @staticmethod
    def normalize(word: str) -> SessionState:
        return _STATES.get(word, SessionState.UNKNOWN)

    @classmethod
    def observed(cls, session_id: str, status: object) -> ObservedSession:
        """One listed session. A restored session is listed without `status` (the service
        stores none): it is still held there, in a state we do not know."""
        word = status if isinstance(status, str) else ""
        state = cls.normalize(word) if word else SessionState.UNKNOWN
        return ObservedSession(session_id, state, word, reconnecting=word in _RECONNECTING)

    async def inventory(self) -> InventoryReport:
        url = f"{self.base_url}/api/sessions"
        _, answer = await self.http.request(
            "GET", url, params={"api_key": self.api_key}, deadline=self.timeouts.probe)
        if not isinstance(answer, dict) or not isinstance(answer.get("sessions"), list):
            raise InstanceUnavailable("garbage", f"GET {url}: not a session list "
                                      f"(got {type(answer).__name__})")
        if answer.get("success") is False:
            raise InstanceUnavailable("garbage", f"GET {url}: success=false")
        sessions, skipped = {}, []
        for index, entry in enumerate(answer["sessions"]):
            session_id = entry.get("session_id") if isinstance(entry, dict) else None
            if not isinstance(session_id, str) or not session_id:
                skipped.append(f"entry {index}: no session_id in {str(entry)[:80]}")
                continue
            sessions[session_id] = self.observed(session_id, entry.get("status"))
        return InventoryReport(sessions, tuple(skipped))

    async def _held(self, session_id: str, deadline: float) -> ObservedSession | None:
        """The session as this pod holds it now, or None (one request). It is part of a
        start or a stop and has its deadline: a pod busy launching browsers answers slowly,
        and a start given up at a probe's deadline would go elsewhere for nothing."""
        status, answer = await self.http.request(
            "GET", f"{self.base_url}/api/sessions/{session_id}/status",
            params={"api_key": self.api_key}, ok=(200, 404), deadline=deadline)
        if status == 404:
            return None
        return self.observed(session_id, (answer or {}).get("status"))

    async def start(self, request: SessionRequest) -> None:
        """Bring the session up here, sending at most one create.

        The service has no existence check (a second create for one id starts a second
        client whose failure deletes the first one's entries), so the pod is asked first.
        Restore is tried for a session that ran before; whatever its answer short of
        `success: true` (the recorded service always answers 500), create follows.
        """
        session = request.session_id
        held = await self._held(session, self.timeouts.start)
        if held is not None and held.raw_status not in _DEAD:
            return  # it runs here already (or is being created): nothing to send
        if held is not None:  # a dead copy: replace it
            await self._delete(session, request.workspace_id)
        if request.resume and await self._restored(request):
            return
        if request.resume and await self._held(session, self.timeouts.start) is not None:
            return  # the failed restore brought it back after all
        await self.http.request(
            "POST",
            f"{self.base_url}/api/sessions",
            body={
                "session_id": session,
                "workspace_id": request.workspace_id,
                "account_id": request.account_id,
                "api_key": self.api_key,
                "priority": "normal",
            },
            deadline=self.timeouts.start,
        )

    async def _restored(self, request: SessionRequest) -> bool:
        try:
            _, answer = await self.http.request(
                "POST",
                f"{self.base_url}/api/sessions/{request.session_id}/restore",
                body={"workspace_id": request.workspace_id, "api_key": self.api_key},
                deadline=self.timeouts.start,
            )
        except InstanceAuthError:
            raise
        except InstanceError:
            return False  # 5xx, 4xx, timeout: create instead
        return isinstance(answer, dict) and answer.get("success") is True

    async def stop(self, session_id: str, workspace_id: str | None) -> None:
        """Close the session's browser; its stored login stays (`client.destroy()`).

        Only a session the pod holds is deleted: for one it does not hold, the service
        deletes the session's files from disk, which is its stored login.
        """
        if await self._held(session_id, self.timeouts.stop) is None:
            return
        await self._delete(session_id, workspace_id)

    async def _delete(self, session_id: str, workspace_id: str | None) -> None:
        await self.http.request(
            "DELETE",
            f"{self.base_url}/api/sessions/{session_id}",
            body={"workspace_id": workspace_id, "api_key": self.api_key},
            ok=(200, 204, 404),
            deadline=self.timeouts.stop,
        )

    @staticmethod
    def sign_webhook(body: bytes, secret: str, now: float) -> dict[str, str]:
        timestamp = str(int(now))
        return {"X-Timestamp": timestamp,
                "X-HMAC-Signature": webhook_signature(secret, timestamp, body)}

    @staticmethod
    def read_webhook(
        headers: Mapping[str, str], body: bytes, secret: str, now: float, max_age: float,
        *, unsigned_ok: bool = False,
    ) -> InstanceEvent:
        timestamp, signature = headers.get("X-Timestamp"), headers.get("X-HMAC-Signature")
        if not timestamp or not signature:
            raise WebhookRejected("unsigned", "X-Timestamp and X-HMAC-Signature are required")
        if not same_secret(signature.strip().lower(), webhook_signature(secret, timestamp, body)):
            raise WebhookRejected("bad_signature", "X-HMAC-Signature does not match the body")
        try:
            age = now - int(timestamp)
        except ValueError:
            raise WebhookRejected("malformed", "X-Timestamp is not unix seconds") from None
        if abs(age) > max_age:
            raise WebhookRejected(
                "expired", f"X-Timestamp is {age:.0f} s off (limit {max_age:.0f} s)")
        try:
            webhook = _Webhook.model_validate_json(body)
        except ValidationError as error:
            raise WebhookRejected("malformed", f"not a blazz event: {error.errors()[0]['msg']}") \
                from None
        status = webhook.data.status
        return InstanceEvent(
            name=webhook.event,
            session=webhook.session or webhook.data.session_id,
            state=BlazzAdapter.normalize(status) if status else _EVENT_STATES.get(webhook.event),
            replay_key=f"blazz:{signature.strip().lower()}",
        )
