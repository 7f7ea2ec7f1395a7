"""Every Prometheus metric the operator exports, in one place (names start wa_controller_)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

ACCOUNTS = Gauge("wa_controller_accounts", "WAAccounts by namespace and status phase "
                 "(New: not decided yet).", ["namespace", "phase"])
RECONCILE_ERRORS = Counter("wa_controller_reconcile_errors",
                           "Reconcile passes that failed (retried), by namespace.", ["namespace"])

INSTANCE_SESSIONS = Gauge("wa_controller_instance_sessions",
                          "Sessions an instance pod reported at its last probe.",
                          ["namespace", "pod"])
INSTANCE_CAPACITY = Gauge("wa_controller_instance_capacity",
                          "Most sessions an instance pod may hold.", ["namespace", "pod"])
UNMANAGED_SESSIONS = Gauge("wa_controller_unmanaged_sessions",
                           "Sessions an instance pod runs that no WAAccount names.",
                           ["namespace", "pod"])
PROBE_SECONDS = Histogram("wa_controller_probe_duration_seconds",
                          "Time an instance pod took to answer an inventory probe.",
                          ["namespace", "pod"],
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
PROBE_FAILURES = Counter("wa_controller_probe_failures",
                         "Inventory probes that failed, by pod and kind.",
                         ["namespace", "pod", "kind"])
PLACEMENTS = Counter("wa_controller_placements", "Sessions placed on an instance pod.",
                     ["namespace"])
REASSIGNMENTS = Counter("wa_controller_reassignments",
                        "Accounts whose session was found on another pod.", ["namespace"])
REDISCOVERIES = Counter("wa_controller_rediscoveries",
                        "Rediscoveries of one account requested, by trigger (annotation, http).",
                        ["trigger"])
WEBHOOKS = Counter("wa_controller_webhooks",
                   "Instance webhooks received, by result (accepted, replayed, or why refused).",
                   ["result"])
RELAY_EVENTS = Counter("wa_controller_relay_events",
                       "Instance webhooks relayed to the application, by result (queued, "
                       "delivered, retried, dropped_<why>, no_destination).", ["result"])
RELAY_QUEUED = Gauge("wa_controller_relay_queued_events",
                     "Webhooks waiting to be delivered to the application.")
RELAY_SECONDS = Histogram("wa_controller_relay_delivery_seconds",
                          "From an instance's webhook arriving to the application taking it.",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
LOSSES = Counter("wa_controller_losses", "Accounts declared Lost.", ["namespace"])

MIRROR_ROWS = Counter("wa_controller_mirror_rows_written", "Mirror rows written, by operation.",
                      ["operation"])
MIRROR_STATEMENTS = Counter("wa_controller_mirror_statements",
                            "SQL statements the mirror sent to the database.")
MIRROR_PENDING = Gauge("wa_controller_mirror_pending_rows",
                       "Account changes not yet written to the mirror.")
MIRROR_LAG = Gauge("wa_controller_mirror_lag_seconds",
                   "Age of the oldest account change not yet in the mirror (0: caught up).")
MIRROR_RESYNCS = Counter("wa_controller_mirror_resyncs", "Full resyncs of the mirror table.")
MIRROR_FAILURES = Counter("wa_controller_mirror_failures",
                          "Failed mirror writes, by reason.", ["reason"])


class PhaseCensus:
    """Keeps `wa_controller_accounts` right from the accounts' watch events."""

    def __init__(self) -> None:
        self._counted: dict[str, tuple[str, str]] = {}  # uid -> (namespace, phase)

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        metadata = body.get("metadata") or {}
        uid = str(metadata.get("uid"))
        before = self._counted.pop(uid, None)
        if before is not None:
            ACCOUNTS.labels(*before).dec()
        if event_type != "DELETED":
            now = (str(metadata.get("namespace")), (body.get("status") or {}).get("phase") or "New")
            self._counted[uid] = now
            ACCOUNTS.labels(*now).inc()
