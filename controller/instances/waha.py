"""The `waha` protocol: WAHA (devlikeapro/waha). The API key is the `X-Api-Key` header."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from pydantic import BaseModel, ValidationError

from controller.api import SESSION_METADATA
from controller.instances.base import (
    InstanceAdapter,
    InstanceEvent,
    InstanceInfo,
    InventoryReport,
    ObservedSession,
    SessionRequest,
    SessionState,
    WebhookRejected,
)
from controller.instances.errors import (
    InstanceAuthError,
    InstanceError,
    InstanceRefused,
    InstanceUnavailable,
)
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
    metadata: dict[str, object] | None = None
    payload: _Payload = _Payload()
    environment: _Environment = _Environment()


# Session config metadata naming the account's session: WAHA Core runs every session as
# `default`, so the inventory maps `default` back to the account through this key.
CORE_SESSION = "default"
_RUNNING = frozenset({"WORKING", "SCAN_QR_CODE", "STARTING"})


def _owner(entry: dict[str, object]) -> str | None:
    """The session id our metadata gives a listed (or webhook) session, if any."""
    config = entry.get("config")
    metadata = config.get("metadata") if isinstance(config, dict) else entry.get("metadata")
    owner = metadata.get(SESSION_METADATA) if isinstance(metadata, dict) else None
    return owner if isinstance(owner, str) and owner else None


class WahaAdapter(InstanceAdapter):
    protocol = "waha"

    @staticmethod
    def normalize(word: str) -> SessionState:
        return _STATES.get(word, SessionState.UNKNOWN)

    @property
    def _auth(self) -> dict[str, str]:
        return {"X-Api-Key": self.api_key}

    @property
    def _core(self) -> bool:
        return self.info.tier == "CORE"

    def _instance_name(self, session_id: str) -> str:
        """What the instance calls the account's session: `default` on a Core pod."""
        return CORE_SESSION if self._core else session_id

    async def describe(self) -> InstanceInfo:
        """Version and tier from the version endpoint (`/api/server/version` in newer
        releases, `/api/version` in older ones), and whether the key is checked at all."""
        version: dict[str, object] = {}
        for path in ("/api/server/version", "/api/version"):
            try:
                _, answer = await self.http.request(
                    "GET", f"{self.base_url}{path}", headers=self._auth,
                    deadline=self.timeouts.probe)
            except InstanceAuthError:
                raise
            except InstanceError:
                continue
            if isinstance(answer, dict):
                version = answer
                break
        tier = version.get("tier") if isinstance(version.get("tier"), str) else None
        return InstanceInfo(
            version=version.get("version") if isinstance(version.get("version"), str) else None,
            tier=tier,
            max_sessions=1 if tier == "CORE" else None,
            checks_key=await self._checks_key(),
        )

    async def _checks_key(self) -> bool | None:
        # Releases before 2025 check no key at all: a wrong one is answered like the right one.
        try:
            await self.http.request(
                "GET", f"{self.base_url}/api/sessions", params={"all": "true"},
                headers={"X-Api-Key": f"not-{self.api_key}"}, deadline=self.timeouts.probe)
        except InstanceAuthError:
            return True
        except InstanceError:
            return None
        return False

    async def inventory(self) -> InventoryReport:
        url = f"{self.base_url}/api/sessions"
        _, answer = await self.http.request(
            "GET", url, params={"all": "true"}, headers=self._auth, deadline=self.timeouts.probe)
        if not isinstance(answer, list):
            raise InstanceUnavailable(
                "garbage", f"GET {url}: not a session list (got {type(answer).__name__})")
        sessions, skipped = {}, []
        for index, entry in enumerate(answer):
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str) or not name:
                skipped.append(f"entry {index}: no name in {str(entry)[:80]}")
                continue
            word = entry.get("status") if isinstance(entry.get("status"), str) else ""
            owner = _owner(entry)
            if name == CORE_SESSION and owner is None and word == "STOPPED":
                continue  # Core always lists `default`; never started, it is no session
            key = owner if name == CORE_SESSION and owner else name
            state = self.normalize(word) if word else SessionState.UNKNOWN
            sessions[key] = ObservedSession(key, state, word)
        return InventoryReport(sessions, tuple(skipped))

    async def start(self, request: SessionRequest) -> None:
        """Create and start the session, or start it where it exists; a 422 means "exists"
        only when the instance says so, any other refusal is raised with its words."""
        name = self._instance_name(request.session_id)
        config = {"metadata": {SESSION_METADATA: request.session_id}}
        base = f"{self.base_url}/api/sessions"
        status, current = await self.http.request(
            "GET", f"{base}/{name}", headers=self._auth, ok=(200, 404),
            deadline=self.timeouts.start)  # part of the start: a busy pod answers slowly
        if status == 200 and isinstance(current, dict):
            owner = _owner(current) or name
            word = current.get("status")
            if owner != request.session_id and word in _RUNNING:
                raise InstanceRefused(
                    409, f"this WAHA {self.info.tier or ''} pod already runs session {owner}",
                    f"start {request.session_id} on {self.base_url}: {owner} runs there")
            if owner == request.session_id and word in _RUNNING:
                return  # it runs already
            if owner != request.session_id:  # claim the Core pod's `default` for this account
                await self.http.request("PUT", f"{base}/{name}", headers=self._auth,
                                        body={"name": name, "config": config},
                                        deadline=self.timeouts.start)
            await self.http.request("POST", f"{base}/{name}/start", headers=self._auth,
                                    deadline=self.timeouts.start)
            return
        try:
            await self.http.request(
                "POST", base, headers=self._auth,
                body={"name": name, "start": True, "config": config},
                deadline=self.timeouts.start)
        except InstanceRefused as refused:
            if refused.status != 422 or "already exists" not in refused.instance_message:
                raise
            # Created meanwhile by someone else: start it (a no-op when it runs).
            await self.http.request("POST", f"{base}/{name}/start", headers=self._auth,
                                    deadline=self.timeouts.start)

    async def stop(self, session_id: str, workspace_id: str | None) -> None:
        await self.http.request(
            "POST",
            f"{self.base_url}/api/sessions/{self._instance_name(session_id)}/stop",
            headers=self._auth,
            ok=(200, 201, 404),
            deadline=self.timeouts.stop,
        )

    @staticmethod
    def sign_webhook(body: bytes, secret: str, now: float) -> dict[str, str]:
        return {"X-Webhook-Hmac": webhook_signature(secret, body),
                "X-Webhook-Hmac-Algorithm": "sha512"}

    @staticmethod
    def read_webhook(
        headers: Mapping[str, str], body: bytes, secret: str, now: float, max_age: float,
        *, unsigned_ok: bool = False,
    ) -> InstanceEvent:
        signature = headers.get("X-Webhook-Hmac")
        if not signature and not unsigned_ok:
            raise WebhookRejected("unsigned", "X-Webhook-Hmac is required")
        if signature:
            algorithm = headers.get("X-Webhook-Hmac-Algorithm", "sha512").lower()
            if algorithm != "sha512":  # one algorithm only: no downgrade by header
                raise WebhookRejected("bad_signature",
                                      f"HMAC algorithm {algorithm!r} is not sha512")
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
        # Without an id (older releases), the body itself: the same event twice is a replay.
        by_body = webhook.id is None and not signature
        request_id = webhook.id or (signature or hashlib.sha256(body).hexdigest()).strip().lower()
        status = webhook.payload.status if webhook.event == "session.status" else None
        # A Core pod's `default` speaks for the account our metadata names.
        owner = _owner({"metadata": webhook.metadata})
        return InstanceEvent(
            name=webhook.event,
            session=owner or webhook.payload.name or webhook.session,
            state=WahaAdapter.normalize(status) if status else None,
            replay_key=f"waha:{request_id}",
            worker_id=webhook.environment.worker.id,
            replay_by_body=by_body,
        )
