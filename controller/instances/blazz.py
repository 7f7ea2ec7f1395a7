"""The `blazz` protocol: the seed's Node.js whatsapp-web.js service.

The API key travels as the `api_key` query parameter (GET) or body field
(POST/DELETE), never as a header: the seed's own health check failed for
months because it sent a header.
"""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from controller.instances.base import (
    InstanceAdapter,
    Inventory,
    ObservedSession,
    SessionRequest,
    SessionState,
)
from controller.instances.errors import InstanceUnavailable

_STATES = {
    "connected": SessionState.WORKING,
    "qr_scanning": SessionState.PAIRING,
    "authenticated": SessionState.STARTING,
    "disconnected": SessionState.FAILED,
    "error": SessionState.FAILED,
}


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
