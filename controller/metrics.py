"""Every Prometheus metric the operator exports, in one place (names start wa_controller_)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from controller.api import Phase
from controller.fleet import PodHealth

ACCOUNTS = Gauge("wa_controller_accounts", "WAAccounts by namespace and status phase.",
                 ["namespace", "phase"])
UNDECIDED_ACCOUNTS = Gauge("wa_controller_accounts_undecided",
                           "WAAccounts without a phase yet (not decided once).", ["namespace"])
RECONCILE_ERRORS = Counter("wa_controller_reconcile_errors",
                           "Reconcile passes that failed (retried), by namespace.", ["namespace"])

INSTANCE_SESSIONS = Gauge("wa_controller_instance_sessions",
                          "Sessions an instance pod reported at its last probe.",
                          ["namespace", "pod"])
INSTANCE_CAPACITY = Gauge("wa_controller_instance_capacity",
                          "Most sessions an instance pod may hold.", ["namespace", "pod"])
# The operator's view of each pod, for `wa-controller status` and the alerts: a state set
# (every health 0, the current one 1), so a pod's series never vanish while it is known.
INSTANCE_HEALTH = Gauge("wa_controller_instance_health",
                        "1 for an instance pod's health after its last probe (ok, suspect, "
                        "down, unreadable, auth_failed), 0 for the others; protocol: the one "
                        "the operator speaks to it.", ["namespace", "pod", "protocol", "health"])
INSTANCE_LAST_PROBE = Gauge("wa_controller_instance_last_probe_timestamp_seconds",
                            "When an instance pod's last probe ended (unix time), whatever "
                            "its outcome.", ["namespace", "pod"])
DRAINING_SESSIONS = Gauge("wa_controller_draining_sessions",
                          "Sessions a draining (or gracefully deleted) pod still holds at its "
                          "last probe: a drain's progress, 0 when done or not draining.",
                          ["namespace", "pod"])
STARTS_WAITING = Gauge("wa_controller_starts_waiting",
                       "Session starts waiting for a start slot on a pod.", ["namespace", "pod"])
STARTS_IN_FLIGHT = Gauge("wa_controller_starts_in_flight",
                         "Session starts (browser launches) under way on a pod.",
                         ["namespace", "pod"])
START_LIMIT = Gauge("wa_controller_start_limit",
                    "Starts a pod gets at once now (starts_per_pod, fewer while its starts "
                    "keep failing).", ["namespace", "pod"])
MOVES = Counter("wa_controller_moves",
                "Sessions moved by a drain or a rebalance, by result (done, failed).",
                ["namespace", "result"])
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
WOULD_ACT = Counter("wa_controller_would_act",
                    "Observe-only: starts and stops decided and not made, by action "
                    "(place, restart, stop).", ["namespace", "action"])

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
MIRROR_MISSING_ROWS = Gauge("wa_controller_mirror_missing_rows",
                            "Accounts whose row the application's own table lacks "
                            "(application mode: rows are never created).")
MIRROR_FOREIGN_ROWS = Gauge("wa_controller_mirror_foreign_rows",
                            "Accounts whose mirror row another installation owns (left as "
                            "they are).")

API_RETRIES = Counter("wa_controller_api_retries",
                      "Kubernetes API requests retried, by reason (throttled: HTTP 429, "
                      "server_error: 5xx).", ["reason"])
API_THROTTLED = Gauge("wa_controller_api_throttled",
                      "1 while the Kubernetes API server throttles this operator (HTTP 429).")
MISSING_NAMESPACES = Gauge("wa_controller_namespace_missing",
                           "1 for a served namespace that does not exist (served once it "
                           "appears).", ["namespace"])


_PHASES = frozenset(phase.value for phase in Phase)


_protocols: dict[tuple[str, str], str] = {}  # (namespace, pod) -> the protocol exported


def instance_probed(namespace: str, pod: str, protocol: str, health: PodHealth,
                    at: float) -> None:
    """A probe of the pod ended: its health and when."""
    before = _protocols.get((namespace, pod))
    if before is not None and before != protocol:
        _forget_health(namespace, pod, before)
    _protocols[(namespace, pod)] = protocol
    for state in PodHealth:
        INSTANCE_HEALTH.labels(namespace, pod, protocol, state.value).set(state is health)
    INSTANCE_LAST_PROBE.labels(namespace, pod).set(at)


def instance_gone(namespace: str, pod: str) -> None:
    """The pod was deleted: none of its series stays behind."""
    protocol = _protocols.pop((namespace, pod), None)
    if protocol is not None:
        _forget_health(namespace, pod, protocol)
    for gauge in (INSTANCE_SESSIONS, INSTANCE_CAPACITY, INSTANCE_LAST_PROBE,
                  DRAINING_SESSIONS):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, pod)


def _forget_health(namespace: str, pod: str, protocol: str) -> None:
    for state in PodHealth:
        with contextlib.suppress(KeyError):
            INSTANCE_HEALTH.remove(namespace, pod, protocol, state.value)


class PhaseCensus:
    """Keeps `wa_controller_accounts` (exactly the API's phases, each exported, zeros too)
    and `wa_controller_accounts_undecided` right from the accounts' watch events."""

    def __init__(self) -> None:
        self._counted: dict[str, tuple[str, str | None]] = {}  # uid -> (namespace, phase)
        self._namespaces: set[str] = set()

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        metadata = body.get("metadata") or {}
        uid = str(metadata.get("uid"))
        before = self._counted.pop(uid, None)
        if before is not None:
            self._gauge(*before).dec()
        if event_type != "DELETED":
            namespace = str(metadata.get("namespace"))
            phase = (body.get("status") or {}).get("phase")
            now = (namespace, phase if phase in _PHASES else None)
            if namespace not in self._namespaces:
                self._namespaces.add(namespace)
                for each in _PHASES:  # every phase exported, zeros too
                    ACCOUNTS.labels(namespace, each)
                UNDECIDED_ACCOUNTS.labels(namespace)
            self._counted[uid] = now
            self._gauge(*now).inc()

    @staticmethod
    def _gauge(namespace: str, phase: str | None) -> Gauge:
        return UNDECIDED_ACCOUNTS.labels(namespace) if phase is None \
            else ACCOUNTS.labels(namespace, phase)
