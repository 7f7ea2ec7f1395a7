"""The fleet as plain data: instance pods as the API server describes them, and what probes saw.

Everything here is pure: parsing a Pod body, eligibility, load and placement are
functions of their inputs, so the decision code can be tested without a cluster.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from controller.api import (
    CAPACITY_ANNOTATION,
    DRAIN_ANNOTATION,
    LABEL_KEY_MAX,
    LABEL_KEY_PATTERN,
    LABEL_VALUE_PATTERN,
    MAX_SELECTOR_LABELS,
    PORT_ANNOTATION,
    PROTOCOL_ANNOTATION,
    STORAGE_GROUP_ANNOTATION,
    WEBHOOK_AUTH_ANNOTATION,
)
from controller.instances import ObservedSession, SessionState


@dataclass(frozen=True)
class InstanceDefaults:
    """Cluster-wide defaults for pods that carry no per-pod annotation."""

    protocol: str = "blazz"
    port: int = 3000
    capacity: int = 50
    url_template: str = "http://{ip}:{port}"
    storage_group: str = "shared"  # pods without the annotation share their stored logins


@dataclass(frozen=True)
class PodView:
    """An instance pod as the API server describes it, never as it describes itself."""

    name: str
    namespace: str
    ip: str | None
    ready: bool
    terminating: bool
    labels: Mapping[str, str]
    protocol: str
    port: int
    capacity: int
    url: str | None
    problem: str | None = None  # why the pod's annotations could not be used
    trusts_source_address: bool = False  # its unsigned webhooks are taken by its IP alone
    storage_group: str = "shared"  # sessions move only between pods of one group
    # Its sessions are moved away and none placed there: annotated, or being deleted with
    # a grace period (a rolling update), which leaves time to move them.
    draining: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


def _int_annotation(
    annotations: Mapping[str, str], name: str, default: int, lowest: int, highest: int
) -> int:
    raw = annotations.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number") from None
    if not lowest <= value <= highest:
        raise ValueError(f"{name}={raw!r} is outside {lowest}..{highest}")
    return value


def pod_view(
    body: Mapping[str, Any], defaults: InstanceDefaults, protocols: Sequence[str]
) -> PodView:
    """Read what the controller needs from a Pod object. Bad annotations make the pod
    ineligible with a `problem`, never an exception."""
    metadata = body.get("metadata") or {}
    status = body.get("status") or {}
    annotations: Mapping[str, str] = metadata.get("annotations") or {}
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    ip = status.get("podIP") or None
    problem = None
    protocol = annotations.get(PROTOCOL_ANNOTATION, defaults.protocol)
    port, capacity = defaults.port, defaults.capacity
    try:
        port = _int_annotation(annotations, PORT_ANNOTATION, defaults.port, 1, 65535)
        # Capacity 0 drains a pod: it keeps its sessions but gets no new ones.
        capacity = _int_annotation(
            annotations, CAPACITY_ANNOTATION, defaults.capacity, 0, 100_000
        )
    except ValueError as error:
        problem = f"bad annotation: {error}"
    if protocol not in protocols:
        known = ", ".join(protocols)
        problem = f"unknown protocol {protocol!r} in {PROTOCOL_ANNOTATION} (known: {known})"
    name = metadata.get("name", "")
    namespace = metadata.get("namespace", "")
    url = None
    if ip and problem is None:
        url = defaults.url_template.format(
            ip=ip, port=port, pod=name, namespace=namespace,
            subdomain=(body.get("spec") or {}).get("subdomain") or "",
        )
    return PodView(
        name=name,
        namespace=namespace,
        ip=ip,
        ready=ready,
        terminating=metadata.get("deletionTimestamp") is not None,
        labels=dict(metadata.get("labels") or {}),
        protocol=protocol,
        port=port,
        capacity=capacity,
        url=url,
        problem=problem,
        trusts_source_address=annotations.get(WEBHOOK_AUTH_ANNOTATION) == "source-address",
        storage_group=annotations.get(STORAGE_GROUP_ANNOTATION) or defaults.storage_group,
        draining=annotations.get(DRAIN_ANNOTATION, "").lower() == "true"
        or bool(metadata.get("deletionTimestamp") and metadata.get("deletionGracePeriodSeconds")),
    )


class PodHealth(StrEnum):
    """What the controller knows of a pod from its probes."""

    UNPROBED = "unprobed"  # no answer yet: its sessions are unknown
    OK = "ok"  # last probe answered: its inventory is current
    SUSPECT = "suspect"  # recent probes failed, below the threshold: trust the last inventory
    AUTH_FAILED = "auth_failed"  # 401: a configuration error; its sessions are unknown
    UNREADABLE = "unreadable"  # it answers, but not what its protocol says: sessions unknown
    DOWN = "down"  # failed past the threshold, or unusable: it holds nothing


@dataclass(frozen=True)
class PodSnapshot:
    """One pod at one moment: its description, its health, and its sessions."""

    view: PodView
    health: PodHealth
    sessions: Mapping[str, ObservedSession] = field(default_factory=dict)
    pending: AbstractSet[str] = frozenset()  # placed here, not yet observed
    observed_at: datetime | None = None  # when the inventory in `sessions` was asked for
    capacity: int = -1  # the pod's, within the service's own limit; -1: the pod's
    # Sessions running (not stopped) plus placements not yet observed; -1: count them.
    # The observer keeps it per probe, so a decision never counts a whole inventory.
    load: int = -1

    def __post_init__(self) -> None:
        if self.capacity < 0:
            object.__setattr__(self, "capacity", self.view.capacity)
        if self.load < 0:
            running = {n for n, s in self.sessions.items()
                       if s.state is not SessionState.STOPPED}
            object.__setattr__(self, "load", len(running | set(self.pending)))

    @property
    def name(self) -> str:
        return self.view.name

    @property
    def trusted(self) -> bool:
        """Whether `sessions` says what the pod holds."""
        return self.health in (PodHealth.OK, PodHealth.SUSPECT)

    @property
    def eligible(self) -> bool:
        """Eligible for new sessions: Ready, not terminating, answering, with room."""
        return (
            self.view.ready
            and not self.view.terminating
            and not self.view.draining
            and self.view.url is not None
            and self.health is PodHealth.OK
            and self.load < self.capacity
        )

    def why_not_eligible(self) -> str:
        view = self.view
        if view.problem:
            return view.problem
        if view.terminating:
            return "terminating"
        if view.draining:
            return "draining"
        if not view.ready:
            return "not Ready"
        if view.url is None:
            return "no pod IP"
        if self.health is not PodHealth.OK:
            return f"probe {self.health.value}"
        if self.load >= self.capacity:
            return f"full ({self.load}/{self.capacity})"
        return "eligible"


_LABEL_KEY = re.compile(LABEL_KEY_PATTERN)
_LABEL_VALUE = re.compile(LABEL_VALUE_PATTERN)


def selector_problem(selector: Mapping[str, str] | None) -> str | None:
    """Why an account's instanceSelector cannot select pods (the label syntax and sizes the
    API server enforces), or None when it can. Only the first problem is named."""
    if not selector:
        return None
    if len(selector) > MAX_SELECTOR_LABELS:
        return f"instanceSelector has {len(selector)} labels; at most {MAX_SELECTOR_LABELS}"
    for key, value in selector.items():
        shown = key if len(key) <= 80 else f"{key[:80]}... ({len(key)} characters)"
        if len(key) > LABEL_KEY_MAX or not _LABEL_KEY.match(key):
            return f"instanceSelector key {shown!r} is not a label key"
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            return f"instanceSelector value of {shown!r} is not a label value"
    return None


def matches(labels: Mapping[str, str], selector: Mapping[str, str] | None) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def least_loaded(candidates: Sequence[PodSnapshot]) -> PodSnapshot:
    """Lowest load/capacity; ties break on absolute load, then on name (deterministic)."""
    return min(candidates, key=lambda p: (p.load / p.capacity, p.load, p.name))
