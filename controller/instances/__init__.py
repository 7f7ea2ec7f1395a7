"""Instance protocols: the only code that knows an instance API's endpoints, auth and words."""

from controller.instances.base import (
    InstanceAdapter,
    InstanceEvent,
    Inventory,
    ObservedSession,
    SessionRequest,
    SessionState,
    WebhookRejected,
)
from controller.instances.blazz import BlazzAdapter
from controller.instances.errors import InstanceAuthError, InstanceError, InstanceUnavailable
from controller.instances.http import InstanceHttp
from controller.instances.waha import WahaAdapter

PROTOCOLS: dict[str, type[InstanceAdapter]] = {"blazz": BlazzAdapter, "waha": WahaAdapter}

__all__ = [
    "PROTOCOLS",
    "BlazzAdapter",
    "InstanceAdapter",
    "InstanceAuthError",
    "InstanceError",
    "InstanceEvent",
    "InstanceHttp",
    "InstanceUnavailable",
    "Inventory",
    "ObservedSession",
    "SessionRequest",
    "SessionState",
    "WahaAdapter",
    "WebhookRejected",
]
