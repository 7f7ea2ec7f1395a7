"""The `waha` protocol: WAHA (devlikeapro/waha). The API key is the `X-Api-Key` header."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from pydantic import BaseModel, TypeAdapter, ValidationError

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
    "WORKING": SessionState.WORKING,
    "SCAN_QR_CODE": SessionState.PAIRING,
    "STARTING": SessionState.STARTING,
    "STOPPED": SessionState.STOPPED,
    "FAILED": SessionState.FAILED,
}


def webhook_signature(secret: str, body: bytes) -> str:
    """Hex HMAC-SHA512 of the raw body (WAHA's X-Webhook-Hmac)."""
    return hmac.new(secret.encode(), body, hashlib.sha512).hexdigest()


class _Worker(BaseModel):
    id: str | None = None


class _Environment(BaseModel):
    worker: _Worker = _Worker()


class _Payload(BaseModel):
    name: str | None = None
    status: str | None = None


class _Webhook(BaseModel):
    event: str
    id: str | None = None
    timestamp: int | None = None  # unix milliseconds, inside the signed body
    session: str | None = None
    payload: _Payload = _Payload()
    environment: _Environment = _Environment()


class _Session(BaseModel):
    name: str
    status: str


_SESSIONS = TypeAdapter(list[_Session])


class WahaAdapter(InstanceAdapter):
    protocol = "waha"

    @staticmethod
    def normalize(word: str) -> SessionState:
        return _STATES.get(word, SessionState.UNKNOWN)

    @property
    def _auth(self) -> dict[str, str]:
        return {"X-Api-Key": self.api_key}

    async def inventory(self) -> Inventory:
        url = f"{self.base_url}/api/sessions"
        _, answer = await self.http.request(
            "GET", url, params={"all": "true"}, headers=self._auth
        )
        try:
            sessions = _SESSIONS.validate_python(answer)
        except ValidationError as error:
            raise InstanceUnavailable("garbage", f"GET {url}: unexpected answer shape") from error
        return {s.name: ObservedSession(s.name, self.normalize(s.status), s.status)
                for s in sessions}

    async def start(self, request: SessionRequest) -> None:
        status, _ = await self.http.request(
            "POST",
            f"{self.base_url}/api/sessions",
            headers=self._auth,
            body={"name": request.session_id, "start": True, "config": self._config(request)},
            ok=(200, 201, 422),
        )
        if status == 422:  # it exists already: start it (a no-op when it runs)
            await self.http.request(
                "POST",
                f"{self.base_url}/api/sessions/{request.session_id}/start",
                headers=self._auth,
                ok=(200, 201, 422),
            )

    @staticmethod
    def _config(request: SessionRequest) -> dict[str, object]:
        # Session metadata is free-form in WAHA; it tells the instance (and the
        # simulator) that this session has paired before and its auth is stored.
        if not request.resume:
            return {}
        return {"metadata": {"wa-controller.io/resume": "true"}}

    async def stop(self, session_id: str, workspace_id: str | None) -> None:
        await self.http.request(
            "POST",
            f"{self.base_url}/api/sessions/{session_id}/stop",
            headers=self._auth,
            ok=(200, 201, 404),
        )

    @staticmethod
    def read_webhook(
        headers: Mapping[str, str], body: bytes, secret: str, now: float, max_age: float
    ) -> InstanceEvent:
        signature = headers.get("X-Webhook-Hmac")
        if not signature:
            raise WebhookRejected("unsigned", "X-Webhook-Hmac is required")
        algorithm = headers.get("X-Webhook-Hmac-Algorithm", "sha512").lower()
        if algorithm != "sha512":  # one algorithm only: no downgrade by header
            raise WebhookRejected("bad_signature", f"HMAC algorithm {algorithm!r} is not sha512")
        if not same_secret(signature.strip().lower(), webhook_signature(secret, body)):
            raise WebhookRejected("bad_signature", "X-Webhook-Hmac does not match the body")
        try:
            webhook = _Webhook.model_validate_json(body)
        except ValidationError as error:
            raise WebhookRejected("malformed", f"not a WAHA event: {error.errors()[0]['msg']}") \
                from None
        if webhook.timestamp is not None and abs(now - webhook.timestamp / 1000) > max_age:
            raise WebhookRejected("expired", f"event timestamp is older than {max_age:.0f} s")
        # The event id inside the signed body, not the unsigned X-Webhook-Request-Id header,
        # which a replayer could change.
        request_id = webhook.id or signature.strip().lower()
        status = webhook.payload.status if webhook.event == "session.status" else None
        return InstanceEvent(
            name=webhook.event,
            session=webhook.payload.name or webhook.session,
            state=WahaAdapter.normalize(status) if status else None,
            replay_key=f"waha:{request_id}",
            worker_id=webhook.environment.worker.id,
        )
