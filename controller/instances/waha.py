"""The `waha` protocol: WAHA (devlikeapro/waha). The API key is the `X-Api-Key` header."""

from __future__ import annotations

from pydantic import BaseModel, TypeAdapter, ValidationError

from controller.instances.base import (
    InstanceAdapter,
    Inventory,
    ObservedSession,
    SessionRequest,
    SessionState,
)
from controller.instances.errors import InstanceUnavailable

_STATES = {
    "WORKING": SessionState.WORKING,
    "SCAN_QR_CODE": SessionState.PAIRING,
    "STARTING": SessionState.STARTING,
    "STOPPED": SessionState.STOPPED,
    "FAILED": SessionState.FAILED,
}


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
