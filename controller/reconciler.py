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
import logging
import random
from collections import defaultdict
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import kopf
from pydantic import ValidationError

from controller import metrics
from controller.api import LEGACY_FINALIZER, REDISCOVER_ANNOTATION, WAAccountSpec, WAAccountStatus
from controller.clock import Clock, SystemClock
from controller.decisions import (
    Account,
    CallFailure,
    Decision,
    Event,
    Policy,
    ProbePod,
    StartSession,
    decide,
)
from controller.fleet import PodHealth, PodSnapshot
from controller.instances import (
    InstanceAdapter,
    InstanceError,
    InstanceRefused,
    SessionRequest,
    SessionState,
)
from controller.kube import Kube
from controller.observer import Observer
from controller.peering import PeeringGate
from controller.workqueue import Backoff, WorkQueue

logger = logging.getLogger("wa_controller.reconciler")
T = TypeVar("T")
EVENT_COUNTERS = {"Placed": metrics.PLACEMENTS, "Reassigned": metrics.REASSIGNMENTS,
                  "Lost": metrics.LOSSES}
DELETED_WATCH = 600.0  # seconds a deleted account's session is looked for to be stopped
WARMUP_RECHECK = 0.5  # seconds between looks while the namespace's pods are first probed
CONFLICT_RECHECK = 1.0  # a lost write race: the fresh object's event usually comes first


def status_patch(old: Mapping[str, Any], new: WAAccountStatus) -> dict[str, Any]:
    """A merge patch that turns status `old` into `new` (null removes a field)."""
    wanted = new.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {**{key: None for key in old if key not in wanted}, **wanted}


def compact(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the shell keeps of a WAAccount: no managedFields, no other annotations."""
    metadata = body.get("metadata") or {}
    kept = {key: metadata[key] for key in ("name", "namespace", "uid", "resourceVersion",
                                           "generation", "creationTimestamp") if key in metadata}
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": kept,
            "spec": dict(body.get("spec") or {}), "status": dict(body.get("status") or {})}


@dataclass
class AccountRecord:
    """Everything the shell remembers of one account, in one place."""

    uid: str
    namespace: str
    name: str
    session: str
    body: dict[str, Any]  # the newest object the watch delivered (compacted)
    missing_since: datetime | None = None  # since when no pod shows the session
    duplicate_since: datetime | None = None  # since when more than one pod shows it
    failed_since: datetime | None = None  # since when the copies show failed
    accepted_at: datetime | None = None  # when an instance accepted the last start
    call_failure: CallFailure | None = None  # the last start an instance refused
    rediscover_mark: str | None = None  # the rediscover annotation's value last seen
    failing: str | None = None  # why the last pass failed (logged once per change)


class Reconciler:
    def __init__(
        self, *, observer: Observer, kube: Kube, policy: Policy, resync_interval: float,
        warmup_timeout: float, rediscover_window: float = 1.0, workers: int = 16,
        gate: PeeringGate | None = None, clock: Clock | None = None,
        backoff: Backoff | None = None, namespaces: list[str] | None = None,
        sweep_interval: float = 30.0, stop_unmanaged: bool = False,
    ) -> None:
        self._observer = observer
        self._kube = kube
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
        self._unfinalizing: set[str] = set()
        # Sessions of deleted accounts, stopped wherever a sweep finds them:
        # (namespace, session) -> (workspace, when to stop looking).
        self._deleted: dict[tuple[str, str], tuple[str | None, float]] = {}
        self._unmanaged: dict[tuple[str, str], frozenset[str]] = {}  # (ns, pod) -> reported
        self._stopping: set[tuple[str, str, str]] = set()  # (ns, pod, session) in flight
        self._namespaces = namespaces or []
        self._sweep_interval = sweep_interval
        self._stop_unmanaged = stop_unmanaged
        self._sweep_now = asyncio.Event()
        self._synced = False  # every account that existed at start has its record
        self._started = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._rediscoveries: dict[str, tuple[float, asyncio.Task[list[str]]]] = {}

    # --- lifecycle -------------------------------------------------------------

    def _start_workers(self) -> None:
        """The workers start with the first account event: kopf's event posting lives in
        the context its handlers run in, and tasks keep the context they start in."""
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
        uid, namespace, name = (str(metadata.get(k, "")) for k in ("uid", "namespace", "name"))
        if LEGACY_FINALIZER in (metadata.get("finalizers") or []):
            self._drop_legacy_finalizer(uid, namespace, name)
        if event_type == "DELETED":
            record = self._records.get(uid)
            self._forget(uid)
            if record is not None and (namespace, record.session) not in self._by_session:
                # Stop its session where it runs (keeping the stored login), now and
                # wherever it shows up for a while (a start may still be on its way).
                workspace = (record.body.get("spec") or {}).get("workspaceId")
                self.sessions_deleted({(namespace, record.session, workspace)})
            return
        session = str((body.get("spec") or {}).get("sessionId", ""))
        mark = (metadata.get("annotations") or {}).get(REDISCOVER_ANNOTATION)
        record = self._records.get(uid)
        if record is None:  # a value seen first is only remembered: starting probes all
            record = self._records[uid] = AccountRecord(uid, namespace, name, session,
                                                        compact(body), rediscover_mark=mark)
            self._by_name[(namespace, name)] = uid
            self._by_session[(namespace, session)].add(uid)
            metrics.RECONCILE_ERRORS.labels(namespace)  # exported as 0 before any error
        elif mark is not None and mark != record.rediscover_mark:
            self._spawn(self.rediscover(namespace, name, trigger="annotation"))
        record.rediscover_mark = mark
        record.body = compact(body)
        self._deleted.pop((namespace, session), None)  # an account names it again
        self.queue.add(uid)

    def _forget(self, uid: str) -> None:
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
            status = record.body.get("status") or {}
            if record.namespace == namespace and (
                    (status.get("instance") or {}).get("pod") == pod
                    or status.get("phase") in (None, "Pending")):
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

    async def _sync_records(self) -> None:
        """Wait until every account that exists has its record: before that, a session
        nobody seems to claim may just belong to an account not listed yet."""
        while True:
            try:
                listed = await self._kube.list_accounts(self._namespaces)
                break
            except Exception as error:  # the API server is away: try again
                logger.warning("cannot list WAAccounts to start sweeping: %s", error)
                await asyncio.sleep(5)
        expected = {str(item["metadata"]["uid"]) for item in listed}
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
                    if deleted is not None or self._stop_unmanaged:
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
        body = record.body
        fleet = self._observer.snapshot(namespace)
        self._remember(record, fleet, precise_now)
        account = self._account(record)
        if account is None:
            return
        decision = decide(account, fleet, self._policy, now)
        # Look again at the latest in `resync_interval` (spread), sooner when decide says.
        self.queue.add_after(uid, self._resync_interval * random.uniform(0.9, 1.1))  # noqa: S311
        if decision.recheck_after is not None:
            self.queue.add_after(uid, decision.recheck_after.total_seconds() + 0.1)
        starts = [a for a in decision.actions if isinstance(a, StartSession)]
        for start in starts:
            # Before any await: no other pass sends a start for this session meanwhile.
            self._starting[(namespace, session)] = start.pod
            self._observer.reserve(namespace, start.pod, session)
        if decision.changes(account.status):
            try:
                written = await self._kube.patch_status(
                    namespace, account.name, str(body["metadata"]["resourceVersion"]),
                    status_patch(body.get("status") or {}, decision.status),
                )
            except BaseException:
                self._abandon(namespace, session, starts)
                raise
            if not written:  # conflict: decide again on the fresh object, no failure
                self._abandon(namespace, session, starts)
                self.queue.add_after(uid, CONFLICT_RECHECK)
                return
        # A placement is told once the instance accepted it, never for a call not made.
        placed = [e for e in decision.events if e.reason == "Placed"]
        for event in decision.events:
            if event not in placed:
                self._post(body, namespace, event)
        await self._act(record, account, decision, placed)

    def _abandon(self, namespace: str, session: str, starts: list[StartSession]) -> None:
        for start in starts:
            self._starting.pop((namespace, session), None)
            self._observer.release(namespace, start.pod, session)

    @staticmethod
    def _post(body: Mapping[str, Any], namespace: str, event: Event) -> None:
        kopf.event(dict(body), type=event.type, reason=event.reason, message=event.message)
        if event.reason in EVENT_COUNTERS:
            EVENT_COUNTERS[event.reason].labels(namespace).inc()

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
        failed = bool(copies) and all(c.state is SessionState.FAILED for c in copies)
        record.missing_since = _since(record.missing_since, now, not copies)
        record.duplicate_since = _since(record.duplicate_since, now, len(copies) > 1)
        record.failed_since = _since(record.failed_since, now, failed)

    def _account(self, record: AccountRecord) -> Account | None:
        """The account as plain data; a body the schema let through but we cannot read is
        reported on the object, never raised."""
        body = record.body
        try:
            return Account(
                namespace=record.namespace,
                name=record.name,
                generation=int(body["metadata"].get("generation") or 0),
                spec=WAAccountSpec.model_validate(body.get("spec") or {}),
                status=WAAccountStatus.model_validate(body.get("status") or {}),
                missing_since=record.missing_since,
                duplicate_since=record.duplicate_since,
                failed_since=record.failed_since,
                start_in_flight=self._starting.get((record.namespace, record.session)),
                start_accepted_at=record.accepted_at,
                call_failure=record.call_failure,
                duplicate_of=self._older_holder(record),
            )
        except ValidationError as error:
            message = f"cannot read this WAAccount: {error.errors()[0]['msg']}"
            if message != record.failing:
                logger.warning("%s/%s: %s", record.namespace, record.name, message)
                kopf.event(dict(body), type="Warning", reason="InvalidAccount", message=message)
            record.failing = message
            return None

    def _older_holder(self, record: AccountRecord) -> str | None:
        """The account that keeps the session when several name it: the oldest (creation
        time, then name). None when it is this one."""
        uids = self._by_session.get((record.namespace, record.session), set())
        if len(uids) < 2:
            return None
        oldest = min((self._records[u] for u in uids if u in self._records),
                     key=lambda r: (str(r.body["metadata"].get("creationTimestamp", "")),
                                    r.name))
        return None if oldest.uid == record.uid else oldest.name

    # --- instance calls --------------------------------------------------------

    async def _act(self, record: AccountRecord, account: Account, decision: Decision,
                   placed: list[Event]) -> None:
        api_key = await self._observer.api_key()
        for action in decision.actions:
            if isinstance(action, ProbePod):
                self._observer.refresh(account.namespace, action.pod)
                continue
            adapter = self._observer.adapter(account.namespace, action.pod, api_key)
            if isinstance(action, StartSession):
                # A start is a browser launch (blazz answers after WhatsApp Web loaded):
                # it runs on its own, so no worker is held up by it.
                self._spawn(self._start(record, account, action, adapter, placed))
                continue
            try:
                if adapter is None:
                    raise InstanceError(f"pod {action.pod} is gone")
                await adapter.stop(account.spec.session_id, account.spec.workspace_id)
            except InstanceError as error:
                self._call_failed(record.body, account, "stop", action.pod, error)
            else:
                self._observer.forget(account.namespace, action.pod, account.spec.session_id)
            self._observer.refresh(account.namespace, action.pod)

    async def _start(self, record: AccountRecord, account: Account, action: StartSession,
                     adapter: InstanceAdapter | None, placed: list[Event]) -> None:
        namespace, session = account.namespace, account.spec.session_id
        try:
            if adapter is None:
                raise InstanceError(f"pod {action.pod} is gone")
            await adapter.start(SessionRequest(
                session_id=session,
                workspace_id=account.spec.workspace_id,
                account_id=account.spec.account_uuid,
                resume=action.resume,
            ))
        except InstanceError as error:
            message = error.instance_message if isinstance(error, InstanceRefused) and \
                error.instance_message else str(error)
            record.call_failure = CallFailure(action.pod, message, self._clock.now())
            self._observer.release(namespace, action.pod, session)
            self._call_failed(record.body, account, "start", action.pod, error)
        else:
            record.accepted_at = self._clock.now()
            record.call_failure = None
            self._observer.reserve(namespace, action.pod, session)  # its grace starts now
            for event in placed:
                self._post(record.body, namespace, event)
        finally:
            self._starting.pop((namespace, session), None)
            self._observer.refresh(namespace, action.pod)
            self.queue.add(record.uid)

    @staticmethod
    def _call_failed(body: Mapping[str, Any], account: Account, verb: str, pod: str,
                     error: InstanceError) -> None:
        said = error.instance_message if isinstance(error, InstanceRefused) else ""
        logger.warning("%s/%s: %s of session %s on %s failed: %s", account.namespace,
                       account.name, verb, account.spec.session_id, pod, error)
        kopf.event(dict(body), type="Warning", reason="InstanceCallFailed",
                   message=f"{verb} on {pod} failed ({error.kind}): {said or error}"[:1000])

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


def _since(since: datetime | None, now: datetime, holds: bool) -> datetime | None:
    """When a condition that holds now started holding (forgotten once it does not)."""
    if holds:
        return since or now
    return None
