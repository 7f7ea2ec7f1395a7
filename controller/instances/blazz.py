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
    Inventory,
    ObservedSession,
    SessionRequest,
    SessionState,
    WebhookRejected,
)
from controller.instances.errors import InstanceUnavailable
from controller.secrets import same_secret

_STATES = {
    "connected": SessionState.WORKING,
    "qr_scanning": SessionState.PAIRING,
    "authenticated": SessionState.STARTING,
    "disconnected": SessionState.FAILED,
    "error": SessionState.FAILED,
}


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


class _Session(BaseModel):
    session_id: str
    status: str


class _SessionList(BaseModel):
    success: bool
    sessions: list[_Session]


class BlazzAdapter(InstanceAdapter):
    protocol = "blazz"

    @staticmethod
    def normalize(word: str) -> SessionState:
        return _STATES.get(word, SessionState.UNKNOWN)

    async def inventory(self) -> Inventory:
        url = f"{self.base_url}/api/sessions"
        _, answer = await self.http.request("GET", url, params={"api_key": self.api_key})
        try:
            listing = _SessionList.model_validate(answer)
        except ValidationError as error:
            raise InstanceUnavailable("garbage", f"GET {url}: unexpected answer shape") from error
        if not listing.success:
            raise InstanceUnavailable("garbage", f"GET {url}: success=false")
        return {
            s.session_id: ObservedSession(s.session_id, self.normalize(s.status), s.status)
            for s in listing.sessions
        }

    async def start(self, request: SessionRequest) -> None:
        if request.resume:
            status, _ = await self.http.request(
                "POST",
                f"{self.base_url}/api/sessions/{request.session_id}/restore",
                body={"workspace_id": request.workspace_id, "api_key": self.api_key},
                ok=(200, 201, 404),
            )
            if status != 404:
                return
            # Nothing stored to restore from: create it (it will need a QR scan).
        await self.http.request(
            "POST",
            f"{self.base_url}/api/sessions",
            body={
                "session_id": request.session_id,
                "workspace_id": request.workspace_id,
                "account_id": request.account_id,
                "api_key": self.api_key,
                "priority": "normal",
            },
            ok=(200, 201, 409),
        )

    async def stop(self, session_id: str, workspace_id: str | None) -> None:
        await self.http.request(
            "DELETE",
            f"{self.base_url}/api/sessions/{session_id}",
            body={"workspace_id": workspace_id, "api_key": self.api_key},
            ok=(200, 204, 404),
        )

    @staticmethod
    def read_webhook(
        headers: Mapping[str, str], body: bytes, secret: str, now: float, max_age: float
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
