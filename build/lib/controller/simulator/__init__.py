"""The instance simulator: one file per protocol over a shared core, registered here.

`wa-controller simulate-instance --protocol NAME` serves one simulated instance; the
protocol choices come from `PROTOCOLS`, the only place that lists them.
"""

from controller.simulator.blazz import BlazzProtocol
from controller.simulator.core import (
    Fault,
    InstanceSimulator,
    SimProtocol,
    SimSession,
    WebhookSender,
    serve,
)
from controller.simulator.waha import WahaProtocol

PROTOCOLS: dict[str, type[SimProtocol]] = {"blazz": BlazzProtocol, "waha": WahaProtocol}

__all__ = ["PROTOCOLS", "Fault", "InstanceSimulator", "SimProtocol", "SimSession",
           "WebhookSender", "serve"]
