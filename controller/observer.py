"""The observer: one probe loop per instance pod, and the fleet view they keep.

Each pod gets one inventory request per interval, and one at once when its pod
event or a placement says something changed. Loops run concurrently with
timeouts, so a slow or dead pod never delays the others. What changed is told to
`notify` (the sessions that changed on a pod, and the pod when the pod itself
changed), so only the accounts concerned are decided again. Probing runs only
while this replica acts (`active`): a standby probes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from controller import metrics
from controller.clock import Clock, SystemClock
from controller.events import EventRecorder
from controller.fleet import InstanceDefaults, PodHealth, PodSnapshot, PodView, pod_view
from controller.instances import (
    PROTOCOLS,
    CallTimeouts,
    InstanceAdapter,
    InstanceAuthError,
    InstanceError,
    InstanceHttp,
    InstanceInfo,
    InstanceUnavailable,
    Inventory,
    SessionState,
    build_adapter,
)
from controller.secrets import SecretValue

logger = logging.getLogger("wa_controller.observer")

PodKey = tuple[str, str]  # (namespace, name)
# What changed: (namespace, sessions that changed on a pod, the pod if the pod itself did).
Notify = Callable[[str, set[str], str | None], None]
# Failures that mean the pod does not answer at all: only these count toward "down".
SILENT = frozenset({"refused", "timeout", "transport"})
MIN_PROBE_GAP = 1.0  # seconds between two probes of one pod, however often it is poked


@dataclass
class _PodState:
    view: PodView
    body: Mapping[str, Any]
    health: PodHealth = PodHealth.UNPROBED
    inventory: Inventory = field(default_factory=dict)
    failures: int = 0
    pending: dict[str, float] = field(default_factory=dict)  # session -> expiry (monotonic)
    poke: asyncio.Event = field(default_factory=asyncio.Event)
    urgent: asyncio.Event = field(default_factory=asyncio.Event)  # now, whatever the gap
    probed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    last_error: str | None = None
    info: InstanceInfo | None = None  # what the instance said of itself, once per run
    known: InstanceInfo | None = None  # the last description told (logged, warned about)
    warned: str | None = None  # the last inventory problem told in a Warning event
    observed_at: datetime | None = None
    started: int = 0  # probes begun, and probes finished: `reprobe` waits on these
    finished: int = 0
    finished_changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    running: int = 0  # sessions in the inventory that are not stopped (kept per probe)
    first_probe_at: float | None = None  # when this pod's first probe began
    last_probe: float = 0.0  # when its last probe began
    pruned_at: float = 0.0  # when expired reservations were last dropped

    def set_inventory(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self.running = sum(s.state is not SessionState.STOPPED for s in inventory.values())


class Observer:
    def __init__(
        self,
        *,
        http: InstanceHttp,
        api_key: SecretValue,
        defaults: InstanceDefaults,
        interval: float,
        failure_threshold: int,
        pending_ttl: float,
        active: asyncio.Event,
        timeouts: CallTimeouts | None = None,
        events: EventRecorder,
        clock: Clock | None = None,
        starts_in_flight: int = 64,
    ) -> None:
        self._http = http
        self._events = events
        self._start_http = http.lane(starts_in_flight)
        self._api_key = api_key
        self._defaults = defaults
        self._interval = interval
        self._failure_threshold = failure_threshold
        self._pending_ttl = pending_ttl
        self._timeouts = timeouts or CallTimeouts()
        self._notify: Notify = lambda namespace, sessions, pod: None
        self._active = active
        self._clock = clock or SystemClock()
        self._pods: dict[PodKey, _PodState] = {}

    def subscribe(self, notify: Notify) -> None:
        """Who is told what changed (the reconciler enqueues the accounts concerned)."""
        self._notify = notify

    # --- pods, from kopf's pod events ------------------------------------------

    def pod_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        view = pod_view(body, self._defaults, tuple(PROTOCOLS))
        state = self._pods.get(view.key)
        if event_type == "DELETED":
            metrics.instance_gone(view.namespace, view.name)
            if state is not None:
                if state.task:
                    state.task.cancel()
                del self._pods[view.key]
                self._notify(view.namespace, set(state.inventory) | set(state.pending),
                             view.name)
            return
        if state is None:
            state = self._pods[view.key] = _PodState(view=view, body=body)
            state.task = asyncio.get_running_loop().create_task(
                self._probe_loop(view.key), name=f"probe {view.namespace}/{view.name}"
            )
            self._notify(view.namespace, set(), view.name)
            return
        before = state.view
        state.view, state.body = view, body
        if before != view:
            state.poke.set()
            self._notify(view.namespace, set(state.inventory), view.name)

    async def close(self) -> None:
        tasks = [s.task for s in self._pods.values() if s.task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- what decisions read ---------------------------------------------------

    def snapshot(self, namespace: str) -> list[PodSnapshot]:
        """The namespace's pods as decisions read them: O(pods), never O(sessions). The
        inventories are shared, not copied (a probe replaces one whole, never edits it)."""
        now = self._clock.monotonic()
        pods = []
        for (ns, _), state in self._pods.items():
            if ns != namespace:
                continue
            if state.pending and now - state.pruned_at >= 1.0:
                state.pending = {s: t for s, t in state.pending.items() if t > now}
                state.pruned_at = now
            pods.append(PodSnapshot(
                view=state.view,
                health=PodHealth.DOWN if state.view.problem else state.health,
                sessions=state.inventory,
                pending=state.pending.keys(),
                observed_at=state.observed_at,
                capacity=_capacity(state),
                load=state.running + len(state.pending),
            ))
        return pods

    def ready(self, namespace: str, warmup: float) -> bool:
        """Whether decisions may run in the namespace: every pod answered (or failed) once,
        or has been asked for longer than the warm-up (a silent pod holds nothing up)."""
        now = self._clock.monotonic()
        return all(
            s.probed.is_set() or (s.first_probe_at is not None and now - s.first_probe_at
                                  >= warmup)
            for (ns, _), s in self._pods.items() if ns == namespace)

    def reserve(self, namespace: str, pod: str, session: str, *, in_flight: bool = False
                ) -> None:
        """Count a placement on the pod until it is observed there, or until the grace
        after its start ends; while its start is `in_flight` (waiting for a start slot,
        or launching) however long that takes."""
        state = self._pods.get((namespace, pod))
        if state is not None and session not in state.inventory:  # else counted already
            state.pending[session] = math.inf if in_flight else \
                self._clock.monotonic() + self._pending_ttl
            state.poke.set()

    def release(self, namespace: str, pod: str, session: str) -> None:
        state = self._pods.get((namespace, pod))
        if state is not None:
            state.pending.pop(session, None)

    def forget(self, namespace: str, pod: str, session: str) -> None:
        """The pod stopped the session at our request: count it gone until the next probe
        says otherwise, so no other decision stops it there again meanwhile."""
        state = self._pods.get((namespace, pod))
        if state is not None and session in state.inventory:
            state.set_inventory({n: s for n, s in state.inventory.items() if n != session})
            state.poke.set()

    def refresh(self, namespace: str, pod: str) -> None:
        """Probe one pod now (after an instance call or a webhook)."""
        state = self._pods.get((namespace, pod))
        if state is not None:
            state.poke.set()

    async def reprobe(self, namespace: str, within: float) -> None:
        """Probe every pod of the namespace anew and wait for the answers (or `within` s).

        Only probes that begin after the call count. Calls that overlap share probes:
        a burst of requests costs each pod one or two probes, not one per request.
        """
        targets = [(state, state.started + 1) for (ns, _), state in self._pods.items()
                   if ns == namespace]

        async def answered(state: _PodState, target: int) -> None:
            async with state.finished_changed:
                await state.finished_changed.wait_for(lambda: state.finished >= target)

        for state, _ in targets:  # someone waits for the answer: not held by the gap
            state.urgent.set()
            state.poke.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await asyncio.gather(*(answered(state, target) for state, target in targets))

    def views(self) -> list[PodView]:
        """Every instance pod known, as the API server describes it."""
        return [state.view for state in self._pods.values()]

    def adapter(self, namespace: str, pod: str, api_key: str, *, starting: bool = False
                ) -> InstanceAdapter | None:
        """A client for the pod; `starting`: on the starts' own connection budget."""
        state = self._pods.get((namespace, pod))
        return None if state is None else self._adapter(state, api_key, starting=starting)

    def _adapter(self, state: _PodState, api_key: str, *, starting: bool = False
                 ) -> InstanceAdapter | None:
        view = state.view
        if view.url is None or view.problem:
            return None
        return build_adapter(view.protocol, self._start_http if starting else self._http,
                             view.url, api_key, info=state.info, timeouts=self._timeouts)

    async def api_key(self) -> str:
        return await self._api_key.get() or ""

    def namespaces(self) -> set[str]:
        return {ns for ns, _ in self._pods}

    def event(self, namespace: str, pod: str, type_: Literal["Normal", "Warning"],
              reason: str, message: str) -> None:
        """An event on the instance pod (for what concerns it, not one account)."""
        state = self._pods.get((namespace, pod))
        if state is not None:
            self._post(state, type_, reason, message)

    def poke_all(self) -> None:
        """Probe every pod now (this replica acts again after standing by)."""
        for state in self._pods.values():
            state.poke.set()

    # --- probing ---------------------------------------------------------------

    async def _probe_loop(self, key: PodKey) -> None:
        while True:
            await self._active.wait()
            state = self._pods.get(key)
            if state is None:
                return
            state.poke.clear()
            state.urgent.clear()
            state.started += 1
            state.last_probe = self._clock.monotonic()
            if state.first_probe_at is None:
                state.first_probe_at = self._clock.monotonic()
            try:
                await self._probe(state)
            finally:
                state.finished += 1
                async with state.finished_changed:
                    state.finished_changed.notify_all()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await state.poke.wait()
            # "At once", but at most one probe per pod per MIN_PROBE_GAP: a burst of
            # placements on a pod costs one inventory read, not one per placement. A
            # rediscovery waits for its answer: it goes at once (and shares the probe).
            gap = state.last_probe + MIN_PROBE_GAP - self._clock.monotonic()
            if gap > 0 and not state.urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(gap):
                        await state.urgent.wait()

    async def _probe(self, state: _PodState) -> None:
        view = state.view
        before_health, before_inventory = state.health, state.inventory
        adapter = self._adapter(state, await self.api_key())
        asked_at = self._clock.now()
        if adapter is None:
            state.health = PodHealth.DOWN
            state.set_inventory({})
        else:
            try:
                if state.info is None:
                    adapter = await self._describe(state, adapter)
                with metrics.PROBE_SECONDS.labels(view.namespace, view.name).time():
                    report = await adapter.inventory()
            except InstanceAuthError as error:
                metrics.PROBE_FAILURES.labels(view.namespace, view.name, "auth").inc()
                await self._auth_failed(state, error)
            except InstanceUnavailable as error:
                metrics.PROBE_FAILURES.labels(view.namespace, view.name, error.kind).inc()
                state.last_error = f"{error.kind}: {error}"
                if error.kind not in SILENT:
                    # It answers: not a dead pod. Its sessions stay where they are, unknown
                    # for now; no new ones go there.
                    self._warn(state, "InstanceUnreadable",
                               f"the instance's inventory cannot be read ({error})")
                    state.health = PodHealth.UNREADABLE
                    state.set_inventory({})
                    state.probed.set()
                    self._told(state, before_health, before_inventory)
                    return
                state.failures += 1
                state.info = None  # maybe a new process: ask what it is once it answers
                down = state.failures >= self._failure_threshold
                if down:
                    state.health = PodHealth.DOWN
                    state.set_inventory({})
                elif state.health is PodHealth.OK:
                    state.health = PodHealth.SUSPECT
                if down and before_health is not PodHealth.DOWN:
                    logger.warning("instance pod %s/%s is down after %d failed probes: %s",
                                   view.namespace, view.name, state.failures, state.last_error)
            else:
                if before_health is PodHealth.AUTH_FAILED:
                    logger.info("instance pod %s/%s accepts the API key again",
                                view.namespace, view.name)
                inventory = report.sessions
                state.health, state.failures = PodHealth.OK, 0
                state.set_inventory(inventory)
                state.observed_at = asked_at
                state.last_error = None
                if report.skipped:
                    self._warn(state, "InventoryEntrySkipped",
                               f"{len(report.skipped)} inventory entries could not be read and "
                               f"were skipped (the others count): {'; '.join(report.skipped)}")
                else:
                    state.warned = None
                for session in inventory:
                    state.pending.pop(session, None)
        state.probed.set()
        self._told(state, before_health, before_inventory)

    def _told(self, state: _PodState, before_health: PodHealth, before_inventory: Inventory
              ) -> None:
        """Metrics for the pod, and `notify` of what its probe changed."""
        view = state.view
        metrics.INSTANCE_SESSIONS.labels(view.namespace, view.name).set(len(state.inventory))
        metrics.DRAINING_SESSIONS.labels(view.namespace, view.name).set(
            state.running if view.draining else 0)
        metrics.INSTANCE_CAPACITY.labels(view.namespace, view.name).set(_capacity(state))
        metrics.instance_probed(view.namespace, view.name, view.protocol, state.health,
                                self._clock.now().timestamp())
        changed = _changed(before_inventory, state.inventory)
        if state.health is not before_health:
            logger.info("instance pod %s/%s is %s (was %s)", view.namespace, view.name,
                        state.health.value, before_health.value)
            self._notify(view.namespace, changed, view.name)
        elif changed:
            self._notify(view.namespace, changed, None)

    async def _describe(self, state: _PodState, adapter: InstanceAdapter) -> InstanceAdapter:
        """Ask the instance what it is (tier, limits, key checking) once per run."""
        view = state.view
        try:
            info = await adapter.describe()
        except InstanceAuthError:
            raise
        except InstanceError as error:
            logger.info("instance pod %s/%s did not describe itself: %s",
                        view.namespace, view.name, error)
            return adapter
        known, state.info = state.known, info
        state.known = info
        if info == known:
            return self._adapter(state, await self.api_key()) or adapter
        logger.info("instance pod %s/%s is %s %s %s", view.namespace, view.name, view.protocol,
                    info.version or "(version unknown)", info.tier or "")
        if info.checks_key is False:
            self._post(state, "Warning", "InstanceAcceptsAnyKey",
                  f"the instance ({view.protocol} {info.version or ''} {info.tier or ''}) "
                  "accepts any API key: anyone who reaches its port controls its sessions; "
                  "restrict it with a NetworkPolicy or upgrade it")
        return self._adapter(state, await self.api_key()) or adapter

    def _post(self, state: _PodState, type_: Literal["Normal", "Warning"], reason: str,
              message: str) -> None:
        """A Kubernetes event on the instance pod."""
        self._events.record(state.body, type_, reason, message)

    def _warn(self, state: _PodState, reason: str, message: str) -> None:
        """One Warning event on the pod per change of what is wrong, never a storm."""
        if state.warned == message:
            return
        state.warned = message
        logger.warning("instance pod %s/%s: %s", state.view.namespace, state.view.name, message)
        self._post(state, "Warning", reason, message)

    async def _auth_failed(self, state: _PodState, error: InstanceAuthError) -> None:
        view = state.view
        if state.health is not PodHealth.AUTH_FAILED:
            # One log line and one event per pod and transition: never a storm.
            logger.error("instance pod %s/%s refused the API key (HTTP 401); "
                         "check the Secret named by WA_API_KEY_SECRET", view.namespace, view.name)
            self._post(state, "Warning", "InstanceAuthFailed",
                  "the instance refused the controller's API key (HTTP 401)")
        state.health = PodHealth.AUTH_FAILED
        state.set_inventory({})
        state.last_error = f"auth: {error}"
        await self._api_key.refresh()  # the key may have been fixed: next probe uses it




def _capacity(state: _PodState) -> int:
    """The pod's capacity, within any limit the service itself has (WAHA Core: 1)."""
    limit = state.info.max_sessions if state.info else None
    return state.view.capacity if limit is None else min(state.view.capacity, limit)


def _changed(before: Inventory, after: Inventory) -> set[str]:
    return {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
