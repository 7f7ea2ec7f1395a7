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


class InstanceRefused(InstanceUnavailable):
    """The instance answered and said no (a 4xx other than 401), in its own words.

    `instance_message` is what the instance said, quoted to the user in events and
    conditions: it names the cause (a WAHA Core pod asked for a second session, ...).
    """

    def __init__(self, status: int, instance_message: str, detail: str) -> None:
        super().__init__("http_4xx", detail)
        self.status = status
        self.instance_message = instance_message


class InstanceAuthError(InstanceError):
    """HTTP 401: the API key is wrong. A configuration error, never "session missing"."""

    kind = "auth"
