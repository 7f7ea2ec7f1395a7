"""The imperative shell around `decide`: a work queue of account keys, served by workers.

Account watch events update one compact record per account and enqueue its key (N
events while queued make one pass); probes enqueue only the accounts whose sessions
changed; a bounded pool of workers takes keys, gathers (the record, the fleet view),
asks `decide`, and applies: the status write guarded by resourceVersion, then the
instance calls. "Decide again in T" is a delayed requeue; a failing pass backs off per
account; a write conflict is requeued without counting as a failure. No task and no
finalizer per account: deleting a WAAccount never waits for the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import logging
import random
import sys
from collections import defaultdict
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from controller import metrics
from controller.api import (
    LEGACY_FINALIZER,
    MOVE_TO_ANNOTATION,
    REDISCOVER_ANNOTATION,
    WAITING_FOR_START_SLOT,
    Condition,
    Phase,
    WAAccountSpec,
    WAAccountStatus,
    account_reference,
    older_version,
)
from controller.clock import Clock, SystemClock
from controller.decisions import (
    WOULD_PLACE,
    WOULD_RESTART,
    WOULD_STOP,
    Account,
    CallFailure,
    Decision,
    Event,
    MoveStart,
    Policy,
    ProbePod,
    StartSession,
    StopSession,
    decide,
)
from controller.events import EventRecorder
from controller.fleet import PodHealth, PodSnapshot
from controller.instances import (
    InstanceError,
    InstanceRefused,
    SessionRequest,
    SessionState,
)
from controller.kube import Kube
from controller.observer import Observer
from controller.peering import PeeringGate
from controller.starts import StartSlots
from controller.workqueue import Backoff, WorkQueue

logger = logging.getLogger("wa_controller.reconciler")
T = TypeVar("T")
WOULD_ACT = {WOULD_PLACE: "place", WOULD_RESTART: "restart", WOULD_STOP: "stop"}
EVENT_COUNTERS = {"Placed": metrics.PLACEMENTS, "Reassigned": metrics.REASSIGNMENTS,
                  "Lost": metrics.LOSSES}
DELETED_WATCH = 600.0  # seconds a deleted account's session is looked for to be stopped
WARMUP_RECHECK = 0.5  # seconds between looks while the namespace's pods are first probed
CONFLICT_RECHECK = 1.0  # a lost write race: the fresh object's event usually comes first
# Seconds a version whose write was refused is not written again: the newer object's watch
# event brings the account back (a watch that lags behind must not make a conflict a loop).
CONFLICT_PATIENCE = 10.0
GC_AFTER_PASSES = 2000  # reconcile passes between two full garbage collections


def status_patch(old: Mapping[str, Any], new: WAAccountStatus) -> dict[str, Any]:
    """A merge patch that turns status `old` into `new` (null removes a field)."""
    wanted = new.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {**{key: None for key in old if key not in wanted}, **wanted}


@dataclass(slots=True)
class AccountRecord:
    """Everything the shell remembers of one account, in one place, and compactly: of the
    newest object the watch delivered, only what decisions read, spec and status as JSON
    text (parsed, they took ~4 KB per account; at 10,000 accounts that is 40 MB)."""

    uid: str
    namespace: str
    name: str
    session: str
    version: str = ""  # the object's resourceVersion: status writes are guarded by it
    generation: int = 0
    created: str = ""  # creationTimestamp: of two accounts naming one session, the older wins
    document: str = "{}"  # {"spec": ..., "status": ...} as JSON text
    pod: str | None = None  # status.instance.pod and status.phase, read at every pod change
    phase: str | None = None
    missing_since: datetime | None = None  # since when no pod shows the session
    duplicate_since: datetime | None = None  # since when more than one pod shows it
    failed_since: datetime | None = None  # since when the copies show failed
    accepted_at: datetime | None = None  # when an instance accepted the last start
    call_failure: CallFailure | None = None  # the last start an instance refused
    rediscover_mark: str | None = None  # the rediscover annotation's value last seen
    failing: str | None = None  # why the last pass failed (logged once per change)
    refused: tuple[str, float] | None = None  # (resourceVersion, when) a write was refused at
    move_to: str | None = None  # the rebalance's move-to annotation, when set
    moving_from: MoveStart | None = None  # a move's stop was accepted here, then
    told: frozenset[Event] = frozenset()  # observe-only: the events of the last pass
    start_ticket: tuple[str, int] | None = None  # (pod, ticket) of a start waiting its turn

    def keep(self, body: Mapping[str, Any]) -> bool:
        """Remember `body` unless it is older than what is known (the watch can deliver an
        object after a write that replaced it answered); whether it is not older. The
        same version again (a write's watch event after its answer) is not parsed again."""
        metadata = body.get("metadata") or {}
        version = str(metadata.get("resourceVersion", ""))
        if older_version(version, self.version):
            return False
        if version and version == self.version:
            return True
        spec, status = body.get("spec") or {}, body.get("status") or {}
        self.version = version
        self.generation = int(metadata.get("generation") or 0)
        self.created = sys.intern(str(metadata.get("creationTimestamp", "")))  # often shared
        self.document = json.dumps({"spec": spec, "status": status}, separators=(",", ":"))
        self.pod = _interned((status.get("instance") or {}).get("pod"))
        self.phase = _interned(status.get("phase"))
        self.move_to = (metadata.get("annotations") or {}).get(MOVE_TO_ANNOTATION)
        return True

    def content(self) -> dict[str, Any]:
        """The object's spec and status, parsed anew (decisions never change them)."""
        content: dict[str, Any] = json.loads(self.document)
        return content

    def reference(self) -> dict[str, Any]:
        """What an event about the account needs of it."""
        return account_reference(self.namespace, self.name, self.uid)


class CarriedCondition(Protocol):
    """A condition another part writes (the mirror's Mirrored), carried in the status
    writes the reconciler makes anyway: one write instead of two while an account is being
    placed, started or moved."""

    def to_show(self, uid: str) -> Condition | None:
        """The condition the account should show, when it shows otherwise."""

    def shown(self, body: Mapping[str, Any]) -> None:
        """The account as written (with the condition), before its watch event comes."""


class Reconciler:
    def __init__(
        self, *, observer: Observer, kube: Kube, policy: Policy, resync_interval: float,
        warmup_timeout: float, rediscover_window: float = 1.0, workers: int = 16,
        gate: PeeringGate | None = None, clock: Clock | None = None,
        backoff: Backoff | None = None, namespaces: list[str] | None = None,
        sweep_interval: float = 30.0, stop_unmanaged: bool = False,
        moves_in_flight: int = 4, starts_per_pod: int = 3, starts_in_flight: int = 64,
        start_spacing: float = 0.0, events: EventRecorder,
    ) -> None:
        self._observer = observer
        self._kube = kube
        self._events = events
        self._policy = policy
        self._resync_interval = resync_interval
        self._warmup_timeout = warmup_timeout
        self._rediscover_window = rediscover_window
        self._workers = workers
        self._gate = gate or PeeringGate(None, 0)
        self._clock = clock or SystemClock()
        self.queue: WorkQueue[str] = WorkQueue(self._clock, backoff or Backoff())
        self._records: dict[str, AccountRecord] = {}
        self._by_name: dict[tuple[str, str], str] = {}
        self._by_session: dict[tuple[str, str], set[str]] = defaultdict(set)
        # Single flight: (namespace, session) -> the pod a start call is on its way to.
        self._starting: dict[tuple[str, str], str] = {}
        self._start_slots = StartSlots(starts_per_pod, starts_in_flight, self._spawn,
                                       spacing=start_spacing, clock=self._clock)
        self._unfinalizing: set[str] = set()
        # Sessions of deleted accounts, stopped wherever a sweep finds them:
        # (namespace, session) -> (workspace, when to stop looking).
        self._deleted: dict[tuple[str, str], tuple[str | None, float]] = {}
        self._unmanaged: dict[tuple[str, str], frozenset[str]] = {}  # (ns, pod) -> reported
        self._stopping: set[tuple[str, str, str]] = set()  # (ns, pod, session) in flight
        self._would_stop: set[tuple[str, str, str]] = set()  # observe-only: said already
        # Moves under way (stopped, not yet seen running again): uid -> the pod left.
        self._moving: dict[str, str] = {}
        self._move_waiters: set[str] = set()  # accounts whose move waits for a turn
        self._moves_in_flight = moves_in_flight
        self._unmarking: set[str] = set()  # move-to annotations being taken off
        self._namespaces = namespaces or []
        self._sweep_interval = sweep_interval
        self._stop_unmanaged = stop_unmanaged
        self._sweep_now = asyncio.Event()
        self._synced = False  # every account that existed at start has its record
        self._started = False
        self._passes = 0  # reconcile passes since the last full garbage collection
        self._tasks: set[asyncio.Task[Any]] = set()
        self._rediscoveries: dict[str, tuple[float, asyncio.Task[list[str]]]] = {}
        self._carried: CarriedCondition | None = None

    def carry(self, condition: CarriedCondition) -> None:
        """Carry `condition` in this reconciler's status writes (see CarriedCondition)."""
        self._carried = condition

    # --- lifecycle -------------------------------------------------------------

    def _start_workers(self) -> None:
        """The workers start with the first account event (inside the running loop)."""
        if self._started:
            return
        self._started = True
        for index in range(self._workers):
            self._spawn(self._work(), name=f"reconcile worker {index}")
        self._spawn(self._sweeper(), name="sweeper")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def serving(self) -> bool:
        """Whether this replica acts now (a standby reconciles, probes and answers nothing)."""
        return self._gate.active.is_set()

    def resume(self) -> None:
        """This replica acts again: decide every account anew (level-triggered)."""
        for uid in self._records:
            self.queue.add(uid)

    # --- what the watch says ---------------------------------------------------

    def account_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A WAAccount was listed, added, changed or deleted: keep its record, enqueue it."""
        self._start_workers()
        metadata = body.get("metadata") or {}
        uid, name = str(metadata.get("uid", "")), str(metadata.get("name", ""))
        namespace = sys.intern(str(metadata.get("namespace", "")))
        if LEGACY_FINALIZER in (metadata.get("finalizers") or []):
            self._drop_legacy_finalizer(uid, namespace, name)
        if event_type == "DELETED":
            record = self._records.get(uid)
            self._forget(uid)
            if record is not None and (namespace, record.session) not in self._by_session:
                # Stop its session where it runs (keeping the stored login), now and
                # wherever it shows up for a while (a start may still be on its way).
                workspace = record.content()["spec"].get("workspaceId")
                self.sessions_deleted({(namespace, record.session, workspace)})
            return
        session = str((body.get("spec") or {}).get("sessionId", ""))
        mark = (metadata.get("annotations") or {}).get(REDISCOVER_ANNOTATION)
        record = self._records.get(uid)
        if record is None:  # a value seen first is only remembered: starting probes all
            record = self._records[uid] = AccountRecord(uid, namespace, name, session,
                                                        rediscover_mark=mark)
            self._by_name[(namespace, name)] = uid
            self._by_session[(namespace, session)].add(uid)
            metrics.RECONCILE_ERRORS.labels(namespace)  # exported as 0 before any error
        elif mark is not None and mark != record.rediscover_mark:
            self._spawn(self.rediscover(namespace, name, trigger="annotation"))
        record.rediscover_mark = mark
        record.keep(body)  # unless our own write's answer told us of a newer one already
        self._deleted.pop((namespace, session), None)  # an account names it again
        self.queue.add(uid)

    def written_by_others(self, body: Mapping[str, Any]) -> None:
        """Another writer's answer (the mirror's condition): the object as it is now, known
        before its watch event comes (seconds later under load), so that the next status
        write is not a conflict. The watch event still enqueues the account."""
        record = self._records.get(str((body.get("metadata") or {}).get("uid", "")))
        if record is not None:
            record.keep(body)

    def _forget(self, uid: str) -> None:
        self._move_done(uid)
        record = self._records.pop(uid, None)
        self.queue.discard(uid)
        self._rediscoveries.pop(uid, None)
        if record is not None:
            self._by_name.pop((record.namespace, record.name), None)
            holders = self._by_session.get((record.namespace, record.session))
            if holders is not None:
                holders.discard(uid)
                for other in holders:  # a newer account with that session may take it now
                    self.queue.add(other)
                if not holders:
                    del self._by_session[(record.namespace, record.session)]

    def fleet_changed(self, namespace: str, sessions: set[str], pod: str | None) -> None:
        """The observer saw `sessions` change on a pod (or the pod itself change): enqueue
        the accounts of those sessions, and for a pod change the accounts recorded on it
        and those waiting for room (Pending)."""
        for session in sessions:
            for uid in self._by_session.get((namespace, session), ()):
                self.queue.add(uid)
        if pod is None:
            return
        for uid, record in self._records.items():
            if record.namespace == namespace and (
                    record.pod == pod or record.phase in (None, "Pending")):
                self.queue.add(uid)

    # --- sessions no account claims ------------------------------------------------

    def sessions_deleted(self, sessions: set[tuple[str, str, str | None]]) -> None:
        """Sessions of accounts deleted (while running, or while the operator was away, as
        the mirror's soft-deleted rows say): stop them wherever they run."""
        until = self._clock.monotonic() + DELETED_WATCH
        for namespace, session, workspace in sessions:
            if (namespace, session) not in self._by_session:
                self._deleted[(namespace, session)] = (workspace, until)
        self._sweep_now.set()

    async def _sweeper(self) -> None:
        await self._sync_records()
        while True:
            await self._gate.active.wait()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._sweep_interval):
                    await self._sweep_now.wait()
            self._sweep_now.clear()
            if self._gate.active.is_set():
                self.sweep()
            self._collect_garbage()

    def _collect_garbage(self) -> None:
        """A burst leaves cyclic garbage (requests, API errors with their tracebacks, kopf's
        per-event objects) in Python's oldest generation, which is collected only once it
        grew by a quarter: at 10,000 accounts rarely, and the memory it holds stays in the
        RSS. Collect it once a burst's worth of passes ran (a quiet operator never does)."""
        if self._passes >= GC_AFTER_PASSES:
            self._passes = 0
            gc.collect()

    async def _sync_records(self) -> None:
        """Wait until every account that exists has its record: before that, a session
        nobody seems to claim may just belong to an account not listed yet."""
        while True:
            try:
                expected = await self._kube.account_uids(self._namespaces)
                break
            except Exception as error:  # the API server is away: try again
                logger.warning("cannot list WAAccounts to start sweeping: %s", error)
                await asyncio.sleep(5)
        for _ in range(120):
            if expected <= self._records.keys():
                break
            await asyncio.sleep(0.5)
        self._synced = True
        self._sweep_now.set()

    def sweep(self) -> None:
        """Stop the sessions of deleted accounts; report (never stop, unless told to) the
        sessions no account claims, per pod. Reads only pods that answered just now."""
        if not self._synced:
            return
        now = self._clock.monotonic()
        self._deleted = {k: v for k, v in self._deleted.items() if v[1] > now}
        for namespace in self._observer.namespaces():
            for pod in self._observer.snapshot(namespace):
                if pod.health is not PodHealth.OK:
                    continue
                unclaimed = {name for name, seen in pod.sessions.items()
                             if seen.state is not SessionState.STOPPED
                             and (namespace, name) not in self._by_session}
                unmanaged = set()
                for session in unclaimed:
                    deleted = self._deleted.get((namespace, session))
                    if (deleted is not None or self._stop_unmanaged) \
                            and self._policy.observe_only:
                        self._would_stop_unclaimed(namespace, pod.name, session)
                    elif deleted is not None or self._stop_unmanaged:
                        self._stop_unclaimed(namespace, pod.name, session,
                                             deleted[0] if deleted else None)
                    else:
                        unmanaged.add(session)
                self._report_unmanaged(namespace, pod.name, frozenset(unmanaged))

    def _report_unmanaged(self, namespace: str, pod: str, sessions: frozenset[str]) -> None:
        metrics.UNMANAGED_SESSIONS.labels(namespace, pod).set(len(sessions))
        before = self._unmanaged.get((namespace, pod), frozenset())
        self._unmanaged[(namespace, pod)] = sessions
        if sessions - before:
            shown = ", ".join(sorted(sessions)[:20]) + (" ..." if len(sessions) > 20 else "")
            self._observer.event(namespace, pod, "Warning", "UnmanagedSessions",
                                 f"{len(sessions)} sessions run here that no WAAccount names "
                                 f"(left running; import them or set stop_unmanaged_sessions):"
                                 f" {shown}")

    def _would_stop_unclaimed(self, namespace: str, pod: str, session: str) -> None:
        """Observing only: say once that this session would be stopped."""
        if (namespace, pod, session) in self._would_stop:
            return
        self._would_stop.add((namespace, pod, session))
        metrics.WOULD_ACT.labels(namespace, "stop").inc()
        self._observer.event(namespace, pod, "Normal", WOULD_STOP,
                             f"observe-only: would stop session {session}: no WAAccount "
                             "names it")

    def _stop_unclaimed(self, namespace: str, pod: str, session: str,
                        workspace: str | None) -> None:
        key = (namespace, pod, session)
        if key in self._stopping:
            return
        self._stopping.add(key)

        async def stop() -> None:
            try:
                adapter = self._observer.adapter(namespace, pod, await self._observer.api_key())
                if adapter is None:
                    return
                await adapter.stop(session, workspace)
            except InstanceError as error:
                logger.warning("%s: stopping session %s (no account names it) on %s failed: %s",
                               namespace, session, pod, error)
            else:
                logger.info("%s: stopped session %s on %s: its account is deleted",
                            namespace, session, pod)
                self._observer.forget(namespace, pod, session)
                self._observer.event(namespace, pod, "Normal", "SessionStopped",
                                     f"stopped session {session}: no WAAccount names it")
            finally:
                self._stopping.discard(key)

        self._spawn(stop())

    # --- rediscovery -----------------------------------------------------------

    async def rediscover(self, namespace: str, name: str, *, trigger: str) -> list[str] | None:
        """Re-probe every pod of the account's namespace now, then decide the account again.

        Returns the pods that hold its session after the re-probe (None: no such account
        served here). Requests for one account within `rediscover_window` seconds of each
        other share one rediscovery; overlapping ones for different accounts share probes.
        """
        uid = self._by_name.get((namespace, name))
        if uid is None:
            return None
        metrics.REDISCOVERIES.labels(trigger).inc()
        now = self._clock.monotonic()
        recent = self._rediscoveries.get(uid)
        if recent is None or now - recent[0] >= self._rediscover_window:
            session = self._records[uid].session
            recent = (now, self._spawn(self._rediscover(namespace, uid, session)))
            self._rediscoveries[uid] = recent
        return await asyncio.shield(recent[1])

    async def _rediscover(self, namespace: str, uid: str, session: str) -> list[str]:
        await self._observer.reprobe(namespace, self._warmup_timeout)
        self.queue.add(uid)
        return [p.name for p in self._observer.snapshot(namespace)
                if p.trusted and session in p.sessions]

    # --- the workers -----------------------------------------------------------

    async def _work(self) -> None:
        while True:
            await self._gate.active.wait()
            uid = await self.queue.get()
            try:
                if self._gate.active.is_set():  # a standby leaves keys for `resume`
                    await self.process(uid)
            finally:
                self.queue.done(uid)

    async def process(self, uid: str) -> None:
        """One worker step for one key: gather, decide, apply; back off on failure."""
        record = self._records.get(uid)
        if record is None:
            return
        if not self._observer.ready(record.namespace, self._warmup_timeout):
            self.queue.add_after(uid, WARMUP_RECHECK)  # no decision before the fleet is known
            return
        self._passes += 1
        try:
            await self.reconcile(record)
        except Exception as error:  # the API server or an instance failed: back off
            delay = self.queue.fail(uid)
            metrics.RECONCILE_ERRORS.labels(record.namespace).inc()
            reason = f"{type(error).__name__}: {error}"[:300]
            if reason != record.failing:  # once per change of reason, not every retry
                logger.warning("%s/%s: reconcile failed (%s); retrying with backoff, "
                               "next in %.0f s", record.namespace, record.name, reason, delay)
                logger.debug("reconcile failure", exc_info=True)
            record.failing = reason
        else:
            self.queue.forget(uid)
            if record.failing is not None:
                logger.info("%s/%s: reconciles again", record.namespace, record.name)
                record.failing = None

    async def reconcile(self, record: AccountRecord) -> None:
        precise_now = self._clock.now()
        now = precise_now.replace(microsecond=0)  # what status records
        namespace, uid, session = record.namespace, record.uid, record.session
        content = record.content()
        version, recorded = record.version, content["status"]
        fleet = self._observer.snapshot(namespace)
        self._remember(record, fleet, precise_now)
        account = self._account(record, content)
        if account is None:
            return
        decision = decide(account, fleet, self._policy, now)
        # Look again at the latest in `resync_interval` (spread), sooner when decide says.
        self.queue.add_after(uid, self._resync_interval * random.uniform(0.9, 1.1))  # noqa: S311
        if decision.recheck_after is not None:
            self.queue.add_after(uid, decision.recheck_after.total_seconds() + 0.1)
        write = decision.changes(account.status)
        if write and record.refused is not None and record.refused[0] == version \
                and self._clock.monotonic() - record.refused[1] < CONFLICT_PATIENCE:
            self.queue.add_after(uid, CONFLICT_RECHECK)  # this version is known to be stale
            return
        starts = [a for a in decision.actions if isinstance(a, StartSession)]
        for start in starts:
            # Before any await: no other pass sends a start for this session meanwhile.
            self._starting[(namespace, session)] = start.pod
            self._observer.reserve(namespace, start.pod, session, in_flight=True)
        moving = decision.status.phase is Phase.MOVING and record.moving_from is None
        moves = [a for a in decision.actions if isinstance(a, StopSession) and moving]
        for move in moves:  # counted before any await: a wave is a few moves at a time
            self._moving[uid] = move.pod
        if not account.may_move:
            self._move_waiters.add(uid)  # woken when a move ends
        if write:
            status = decision.status
            carrier = self._carried
            carried = carrier.to_show(uid) if carrier is not None else None
            if carried is not None:
                status = status.model_copy(update={"conditions": sorted(
                    [*(c for c in status.conditions if c.type != carried.type), carried],
                    key=lambda c: c.type)})
            try:
                written = await self._kube.patch_status(
                    namespace, account.name, version, status_patch(recorded, status))
            except BaseException:
                self._abandon(record, starts, moves)
                raise
            if not written:  # conflict: decide again on the fresh object, no failure
                record.refused = (version, self._clock.monotonic())
                self._abandon(record, starts, moves)
                self.queue.add_after(uid, CONFLICT_RECHECK)
                # Read it: under load the watch brings the newer object seconds, even a
                # minute, later, and nothing can be written meanwhile.
                fresh = await self._kube.get_account(namespace, account.name)
                if fresh is not None and record.keep(fresh):
                    self.queue.add(uid)
                return
            # The object as written: the next write builds on it, whenever its watch event
            # comes (under load, seconds later; writing on the older one is a conflict).
            record.keep(written)
            if carrier is not None and carried is not None:
                carrier.shown(written)
        self._unmark_moved(record, account, decision, fleet)
        # A placement is told once the instance accepted it, never for a call not made.
        placed = [e for e in decision.events if e.reason == "Placed"]
        told = record.told
        if self._policy.observe_only:  # nothing changes what is said: each is said once
            record.told = frozenset(decision.events)
        for event in decision.events:
            if event not in placed and event not in told:
                self._post(record.reference(), namespace, event)
        await self._act(record, account, decision, placed)

    def _abandon(self, record: AccountRecord, starts: list[StartSession],
                 moves: list[StopSession]) -> None:
        for start in starts:
            self._starting.pop((record.namespace, record.session), None)
            self._observer.release(record.namespace, start.pod, record.session)
        if moves:
            self._move_done(record.uid)

    def _move_done(self, uid: str) -> None:
        """A move ended (or never began): the moves waiting for a turn decide again."""
        if self._moving.pop(uid, None) is not None:
            for waiter in self._move_waiters:
                self.queue.add(waiter)
            self._move_waiters.clear()

    def _unmark_moved(self, record: AccountRecord, account: Account, decision: Decision,
                      fleet: list[PodSnapshot]) -> None:
        """Take a rebalance's move-to mark off once the session runs there, or when that
        pod is gone (a mark left behind would move the session back after a crash)."""
        target = account.move_to
        if target is None or record.uid in self._unmarking:
            return
        holder = decision.status.instance.pod if decision.status.instance else None
        arrived = holder == target and decision.status.phase is Phase.CONNECTED
        if not arrived and any(p.name == target for p in fleet):
            return
        if not arrived:
            logger.info("%s/%s: the pod %s it was to move to is gone; not moving it",
                        record.namespace, record.name, target)
        self._unmarking.add(record.uid)

        async def unmark() -> None:
            try:
                await self._kube.remove_annotation(record.namespace, record.name,
                                                   MOVE_TO_ANNOTATION)
            except Exception as error:  # the next pass tries again
                logger.warning("%s/%s: cannot take %s off: %s", record.namespace,
                               record.name, MOVE_TO_ANNOTATION, error)
            finally:
                self._unmarking.discard(record.uid)

        self._spawn(unmark())

    def _post(self, reference: dict[str, Any], namespace: str, event: Event) -> None:
        self._events.record(reference, event.type, event.reason, event.message)
        if event.reason in EVENT_COUNTERS:
            EVENT_COUNTERS[event.reason].labels(namespace).inc()
        elif event.reason in WOULD_ACT:
            metrics.WOULD_ACT.labels(namespace, WOULD_ACT[event.reason]).inc()

    def _remember(self, record: AccountRecord, fleet: list[PodSnapshot], now: datetime
                  ) -> None:
        """Since when the session shows on no pod, on more than one, and failed. A
        session seen again ends the story of its last start."""
        session = record.session
        copies = [p.sessions[session] for p in fleet if p.trusted and session in p.sessions]
        if copies:
            record.accepted_at = None
            if any(c.state is not SessionState.FAILED for c in copies):
                record.call_failure = None
        move = record.moving_from
        arrived = move is not None and any(
            p.name != move.pod for p in fleet if p.trusted and session in p.sessions)
        if move is not None and (arrived or now - move.stopped_at > self._policy.start_grace * 2):
            record.moving_from = None  # there (or the start's own rules take over)
            metrics.MOVES.labels(record.namespace, "done" if arrived else "failed").inc()
            self._move_done(record.uid)
        failed = bool(copies) and all(c.state is SessionState.FAILED for c in copies)
        record.missing_since = _since(record.missing_since, now, not copies)
        record.duplicate_since = _since(record.duplicate_since, now, len(copies) > 1)
        record.failed_since = _since(record.failed_since, now, failed)

    def _account(self, record: AccountRecord, content: Mapping[str, Any]) -> Account | None:
        """The account as plain data; a body the schema let through but we cannot read is
        reported on the object, never raised."""
        try:
            return Account(
                namespace=record.namespace,
                name=record.name,
                generation=record.generation,
                spec=WAAccountSpec.model_validate(content["spec"]),
                status=WAAccountStatus.model_validate(content["status"]),
                missing_since=record.missing_since,
                duplicate_since=record.duplicate_since,
                failed_since=record.failed_since,
                start_in_flight=self._starting.get((record.namespace, record.session)),
                start_waiting=self._start_slots.place(record.namespace, *record.start_ticket)
                if record.start_ticket else None,
                start_lines=self._start_slots.lines(record.namespace),
                start_accepted_at=record.accepted_at,
                call_failure=record.call_failure,
                duplicate_of=self._older_holder(record),
                move_to=record.move_to,
                moving_from=record.moving_from,
                may_move=record.uid in self._moving
                or len(self._moving) < self._moves_in_flight,
            )
        except ValidationError as error:
            message = f"cannot read this WAAccount: {error.errors()[0]['msg']}"
            if message != record.failing:
                logger.warning("%s/%s: %s", record.namespace, record.name, message)
                self._events.record(record.reference(), "Warning", "InvalidAccount", message)
            record.failing = message
            return None

    def _older_holder(self, record: AccountRecord) -> str | None:
        """The account that keeps the session when several name it: the oldest (creation
        time, then name). None when it is this one."""
        uids = self._by_session.get((record.namespace, record.session), set())
        if len(uids) < 2:
            return None
        oldest = min((self._records[u] for u in uids if u in self._records),
                     key=lambda r: (r.created, r.name))
        return None if oldest.uid == record.uid else oldest.name

    # --- instance calls --------------------------------------------------------

    async def _act(self, record: AccountRecord, account: Account, decision: Decision,
                   placed: list[Event]) -> None:
        api_key = await self._observer.api_key()
        for action in decision.actions:
            if isinstance(action, ProbePod):
                self._observer.refresh(account.namespace, action.pod)
                continue
            if isinstance(action, StartSession):
                # A start is a browser launch (blazz answers after WhatsApp Web loaded):
                # it waits for its slot and runs on its own, so no worker is held up by it.
                request = SessionRequest(
                    session_id=account.spec.session_id,
                    workspace_id=account.spec.workspace_id,
                    account_id=account.spec.account_uuid,
                    resume=action.resume,
                )
                ticket = self._start_slots.submit(account.namespace, action.pod,
                                                  functools.partial(self._start, record,
                                                                    request, action.pod, placed))
                record.start_ticket = (action.pod, ticket)
                continue
            adapter = self._observer.adapter(account.namespace, action.pod, api_key)
            moving = decision.status.phase is Phase.MOVING
            try:
                if adapter is None:
                    raise InstanceError(f"pod {action.pod} is gone")
                await adapter.stop(account.spec.session_id, account.spec.workspace_id)
            except InstanceError as error:
                if moving:
                    metrics.MOVES.labels(record.namespace, "failed").inc()
                self._move_done(record.uid)
                self._call_failed(record, "stop", action.pod, error)
            else:
                self._observer.forget(account.namespace, action.pod, account.spec.session_id)
                if moving:
                    record.moving_from = MoveStart(action.pod, self._clock.now())
                    self.queue.add(record.uid)
            self._observer.refresh(account.namespace, action.pod)

    async def _start(self, record: AccountRecord, request: SessionRequest, pod: str,
                     placed: list[Event]) -> bool:
        """A start whose turn came (see StartSlots); True when the instance accepted it."""
        namespace, session = record.namespace, request.session_id
        record.start_ticket = None
        if WAITING_FOR_START_SLOT in record.document:
            self.queue.add(record.uid)  # it shows it waits: say it starts now
        try:
            adapter = self._observer.adapter(namespace, pod, await self._observer.api_key(),
                                             starting=True)
            if adapter is None:
                raise InstanceError(f"pod {pod} is gone")
            await adapter.start(request)
        except InstanceError as error:
            message = error.instance_message if isinstance(error, InstanceRefused) and \
                error.instance_message else str(error)
            record.call_failure = CallFailure(pod, message, self._clock.now())
            self._observer.release(namespace, pod, session)
            self._call_failed(record, "start", pod, error)
            return False
        else:
            record.accepted_at = self._clock.now()
            record.call_failure = None
            self._observer.reserve(namespace, pod, session)  # its grace starts now
            for event in placed:
                self._post(record.reference(), namespace, event)
            return True
        finally:
            self._starting.pop((namespace, session), None)
            self._observer.refresh(namespace, pod)
            self.queue.add(record.uid)

    def _call_failed(self, record: AccountRecord, verb: str, pod: str,
                     error: InstanceError) -> None:
        said = error.instance_message if isinstance(error, InstanceRefused) else ""
        logger.warning("%s/%s: %s of session %s on %s failed: %s", record.namespace,
                       record.name, verb, record.session, pod, error)
        self._events.record(record.reference(), "Warning", "InstanceCallFailed",
                            f"{verb} on {pod} failed ({error.kind}): {said or error}")

    # --- housekeeping ----------------------------------------------------------

    def _drop_legacy_finalizer(self, uid: str, namespace: str, name: str) -> None:
        """Earlier versions finalized every account; without this, deleting one would wait
        for an operator that no longer handles deletions that way."""
        if uid in self._unfinalizing:
            return
        self._unfinalizing.add(uid)

        async def drop() -> None:
            try:
                await self._kube.remove_finalizer(namespace, name, LEGACY_FINALIZER)
            except Exception as error:  # the next event of the account tries again
                logger.warning("%s/%s: cannot remove the finalizer %s: %s",
                               namespace, name, LEGACY_FINALIZER, error)
            finally:
                self._unfinalizing.discard(uid)

        self._spawn(drop())

    def _spawn(self, work: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _interned(value: object) -> str | None:
    """One copy of a string thousands of accounts share (a pod name, a phase)."""
    return sys.intern(value) if isinstance(value, str) else None


def _since(since: datetime | None, now: datetime, holds: bool) -> datetime | None:
    """When a condition that holds now started holding (forgotten once it does not)."""
    if holds:
        return since or now
    return None
