"""Instance protocols: the only code that knows an instance API's endpoints, auth and words."""

from controller.instances.base import (
    InstanceAdapter,
    Inventory,
    ObservedSession,
    SessionRequest,
    SessionState,
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
    "InstanceHttp",
    "InstanceUnavailable",
    "Inventory",
    "ObservedSession",
    "SessionRequest",
    "SessionState",
    "WahaAdapter",
]
