"""Instance protocols: the only code that knows an instance API's endpoints, auth and words."""

from controller.instances.base import (
    CallTimeouts,
    InstanceAdapter,
    InstanceEvent,
    InstanceInfo,
    Inventory,
    InventoryReport,
    ObservedSession,
    SessionRequest,
    SessionState,
    WebhookRejected,
)
from controller.instances.blazz import BlazzAdapter
from controller.instances.errors import (
    InstanceAuthError,
    InstanceError,
    InstanceRefused,
    InstanceUnavailable,
)
from controller.instances.http import InstanceHttp
from controller.instances.waha import WahaAdapter

PROTOCOLS: dict[str, type[InstanceAdapter]] = {"blazz": BlazzAdapter, "waha": WahaAdapter}


def build_adapter(protocol: str, http: InstanceHttp, url: str, api_key: str, *,
                  info: InstanceInfo | None = None, timeouts: CallTimeouts | None = None
                  ) -> InstanceAdapter:
    """The one place instance clients are built: the pod's protocol picks the adapter."""
    return PROTOCOLS[protocol](http, url, api_key, info=info, timeouts=timeouts)


__all__ = [
    "PROTOCOLS",
    "BlazzAdapter",
    "CallTimeouts",
    "InstanceAdapter",
    "InstanceAuthError",
    "InstanceError",
    "InstanceEvent",
    "InstanceHttp",
    "InstanceInfo",
    "InstanceRefused",
    "InstanceUnavailable",
    "Inventory",
    "InventoryReport",
    "ObservedSession",
    "SessionRequest",
    "SessionState",
    "WahaAdapter",
    "WebhookRejected",
    "build_adapter",
]
