"""How an instance call can fail, in words the controller can count and report."""

from __future__ import annotations


class InstanceError(Exception):
    """An instance could not answer usefully. `kind` is a short metric label."""

    kind = "error"


class InstanceUnavailable(InstanceError):
    """Timeout, refused connection, 5xx, or an answer that is not what the protocol says."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class InstanceAuthError(InstanceError):
    """HTTP 401: the API key is wrong. A configuration error, never "session missing"."""

    kind = "auth"
