"""The imperative shell around `decide`: one loop per account, woken by what concerns it.

A pass reads the account and the fleet view, asks `decide`, reserves placements
(before any await, so concurrent passes see them), writes the status guarded by
resourceVersion, then makes the instance calls and posts the events. A pass that
loses a write race does nothing else and runs again on the fresh object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import kopf
from pydantic import ValidationError

from controller import metrics
from controller.api import WAAccountSpec, WAAccountStatus
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
from controller.fleet import PodSnapshot
from controller.instances import (
    InstanceAdapter,
    InstanceError,
    InstanceRefused,
    SessionRequest,
    SessionState,
)
from controller.kube import Kube
from controller.observer import Observer

logger = logging.getLogger("wa_controller.reconciler")
T = TypeVar("T")
RETRY_AFTER_ERROR = 5.0
REDISCOVER_ANNOTATION = "wa-controller.io/rediscover"
EVENT_COUNTERS = {"Placed": metrics.PLACEMENTS, "Reassigned": metrics.REASSIGNMENTS,
                  "Lost": metrics.LOSSES}


def status_patch(old: Mapping[str, Any], new: WAAccountStatus) -> dict[str, Any]:
    """A merge patch that turns status `old` into `new` (null removes a field)."""
    wanted = new.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {**{key: None for key in old if key not in wanted}, **wanted}


class Reconciler:
    def __init__(
        self, *, observer: Observer, kube: Kube, policy: Policy, resync_interval: float,
        warmup_timeout: float, rediscover_window: float = 1.0,
    ) -> None:
        self._observer = observer
        self._kube = kube
        self._policy = policy
        self._resync_interval = resync_interval
        self._warmup_timeout = warmup_timeout
        self._wakes: dict[str, asyncio.Event] = {}
        self._rechecks: dict[str, float] = {}  # uid -> seconds until decide must run again
        self._missing_since: dict[str, datetime] = {}
        self._duplicate_since: dict[str, datetime] = {}
        self._failed_since: dict[str, datetime] = {}
        # Single flight: (namespace, session) -> the pod a start call is on its way to.
        self._starting: dict[tuple[str, str], str] = {}
        self._accepted: dict[str, datetime] = {}  # uid -> when the instance took the start
        self._call_failures: dict[str, CallFailure] = {}  # uid -> the last refused start
        self._running: dict[tuple[str, str], tuple[str, str]] = {}  # (ns, name) -> (uid, session)
        self._rediscover_marks: dict[str, str | None] = {}  # uid -> annotation value last seen
        self._tasks: set[asyncio.Task[Any]] = set()
        self._rediscover_window = rediscover_window
        self._rediscoveries: dict[str, tuple[float, asyncio.Task[list[str]]]] = {}

    @property
    def serving(self) -> bool:
        """Whether this replica runs account loops now (a paused standby runs none)."""
        return bool(self._running)

    def poke(self, uid: str) -> None:
        """Something about this account changed: run its loop now."""
        wake = self._wakes.get(uid)
        if wake is not None:
            wake.set()

    def rediscover_marked(self, namespace: str, name: str, uid: str,
                          annotations: Mapping[str, str], deleted: bool) -> None:
        """Rediscover the account when its `wa-controller.io/rediscover` annotation takes a
        new value. The value first seen (at start) is only remembered: starting probes all."""
        if deleted:
            self._rediscover_marks.pop(uid, None)
            return
        value = annotations.get(REDISCOVER_ANNOTATION)
        seen_before = uid in self._rediscover_marks
        previous = self._rediscover_marks.get(uid)
        self._rediscover_marks[uid] = value
        if seen_before and value is not None and value != previous:
            self._spawn(self.rediscover(namespace, name, trigger="annotation"))

    async def rediscover(self, namespace: str, name: str, *, trigger: str) -> list[str] | None:
        """Re-probe every pod of the account's namespace now, then decide the account again.

        Returns the pods that hold its session after the re-probe (None: no such account
        served here). Requests for one account within `rediscover_window` seconds of each
        other share one rediscovery; overlapping ones for different accounts share probes.
        """
        running = self._running.get((namespace, name))
        if running is None:
            return None
        uid, session = running
        metrics.REDISCOVERIES.labels(trigger).inc()
        now = time.monotonic()
        recent = self._rediscoveries.get(uid)
        if recent is None or now - recent[0] >= self._rediscover_window:
            recent = (now, self._spawn(self._rediscover(namespace, uid, session)))
            self._rediscoveries[uid] = recent
        return await asyncio.shield(recent[1])

    async def _rediscover(self, namespace: str, uid: str, session: str) -> list[str]:
        await self._observer.reprobe(namespace, self._warmup_timeout)
        self.poke(uid)
        return [p.name for p in self._observer.snapshot(namespace)
                if p.trusted and session in p.sessions]

    def _spawn(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def run_account(self, body: kopf.Body) -> None:
        """The account's loop, for as long as kopf keeps its daemon (cancelled on stop)."""
        namespace, uid = body.metadata.namespace, account_uid(body)
        session = str((body.spec or {}).get("sessionId", ""))
        metrics.RECONCILE_ERRORS.labels(namespace)  # exported as 0 before any error
        wake = self._wakes[uid] = asyncio.Event()
        self._running[(namespace, body.metadata.name)] = (uid, session)
        self._observer.watch(namespace, session, wake)
        try:
            await self._observer.wait_probed(namespace, self._warmup_timeout)
            while True:
                wake.clear()
                try:
                    await self.reconcile(body)
                except Exception:  # an API server or instance failure: count, log, retry
                    metrics.RECONCILE_ERRORS.labels(namespace).inc()
                    logger.exception("%s/%s: reconcile failed; retrying in %.0f s",
                                     namespace, body.metadata.name, RETRY_AFTER_ERROR)
                    self._rechecks[uid] = RETRY_AFTER_ERROR
                # Spread the periodic re-decisions so a restart does not stampede.
                timeout = min(self._resync_interval * random.uniform(0.9, 1.1),  # noqa: S311
                              self._rechecks.pop(uid, float("inf")))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await wake.wait()
        finally:
            self._observer.unwatch(namespace, session, wake)
            if self._wakes.get(uid) is wake:
                del self._wakes[uid]
                self._running.pop((namespace, body.metadata.name), None)
                self._rediscoveries.pop(uid, None)
                for memory in (self._missing_since, self._duplicate_since, self._failed_since,
                               self._accepted, self._call_failures):
                    memory.pop(uid, None)

    async def reconcile(self, body: kopf.Body) -> None:
        precise_now = datetime.now(UTC)
        now = precise_now.replace(microsecond=0)  # what status records
        namespace, uid = str(body.metadata.namespace), account_uid(body)
        session = str((body.spec or {}).get("sessionId", ""))
        fleet = self._observer.snapshot(namespace)
        account = _account(body, *self._memory(uid, session, fleet, precise_now),
                           start_in_flight=self._starting.get((namespace, session)),
                           call_failure=self._call_failures.get(uid))
        if account is None:
            return
        decision = decide(account, fleet, self._policy, now)
        if decision.recheck_after is not None:
            self._rechecks[uid] = decision.recheck_after.total_seconds() + 0.1
        starts = [a for a in decision.actions if isinstance(a, StartSession)]
        for start in starts:
            # Before any await: no other pass sends a start for this session meanwhile.
            self._starting[(namespace, session)] = start.pod
            self._observer.reserve(namespace, start.pod, session)
        if decision.changes(account.status):
            try:
                written = await self._kube.patch_status(
                    account.namespace, account.name, str(body.metadata["resourceVersion"]),
                    status_patch(body.get("status") or {}, decision.status),
                )
            except BaseException:
                self._abandon(namespace, session, starts)
                raise
            if not written:
                self._abandon(namespace, session, starts)
                return  # the fresh object's watch event wakes this loop again
        # A placement is told once the instance accepted it, never for a call not made.
        placed = [e for e in decision.events if e.reason == "Placed"]
        for event in decision.events:
            if event not in placed:
                self._post(body, account.namespace, event)
        await self._act(body, account, decision, placed)

    def _abandon(self, namespace: str, session: str, starts: list[StartSession]) -> None:
        for start in starts:
            self._starting.pop((namespace, session), None)
            self._observer.release(namespace, start.pod, session)

    @staticmethod
    def _post(body: kopf.Body, namespace: str, event: Event) -> None:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        if event.reason in EVENT_COUNTERS:
            EVENT_COUNTERS[event.reason].labels(namespace).inc()

    def _memory(
        self, uid: str, session: str, fleet: list[PodSnapshot], now: datetime
    ) -> tuple[datetime | None, ...]:
        """What the shell remembers of the account: since when its session shows on no
        pod, on more than one, and failed; when its last start was accepted; its last
        refused start. A session seen again ends the start's story."""
        copies = [p.sessions[session] for p in fleet if p.trusted and session in p.sessions]
        if copies:
            self._accepted.pop(uid, None)
            if any(c.state is not SessionState.FAILED for c in copies):
                self._call_failures.pop(uid, None)
        failed = bool(copies) and all(c.state is SessionState.FAILED for c in copies)
        return (_since(self._missing_since, uid, now, not copies),
                _since(self._duplicate_since, uid, now, len(copies) > 1),
                _since(self._failed_since, uid, now, failed),
                self._accepted.get(uid))

    async def _act(self, body: kopf.Body, account: Account, decision: Decision,
                   placed: list[Event]) -> None:
        api_key = await self._observer.api_key()
        for action in decision.actions:
            if isinstance(action, ProbePod):
                self._observer.refresh(account.namespace, action.pod)
                continue
            adapter = self._observer.adapter(account.namespace, action.pod, api_key)
            if isinstance(action, StartSession):
                # A start is a browser launch (blazz answers after WhatsApp Web loaded):
                # it runs on its own, so this account's next decisions are not held up.
                self._spawn(self._start(body, account, action, adapter, placed))
                continue
            try:
                if adapter is None:
                    raise InstanceError(f"pod {action.pod} is gone")
                await adapter.stop(account.spec.session_id, account.spec.workspace_id)
            except InstanceError as error:
                self._call_failed(body, account, "stop", action.pod, error)
            else:
                self._observer.forget(account.namespace, action.pod, account.spec.session_id)
            self._observer.refresh(account.namespace, action.pod)

    async def _start(self, body: kopf.Body, account: Account, action: StartSession,
                     adapter: InstanceAdapter | None, placed: list[Event]) -> None:
        namespace, session, uid = account.namespace, account.spec.session_id, account_uid(body)
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
            self._call_failures[uid] = CallFailure(action.pod, message, datetime.now(UTC))
            self._observer.release(namespace, action.pod, session)
            self._call_failed(body, account, "start", action.pod, error)
        else:
            self._accepted[uid] = datetime.now(UTC)
            self._call_failures.pop(uid, None)
            self._observer.reserve(namespace, action.pod, session)  # its grace starts now
            for event in placed:
                self._post(body, namespace, event)
        finally:
            self._starting.pop((namespace, session), None)
            self._observer.refresh(namespace, action.pod)
            self.poke(uid)

    @staticmethod
    def _call_failed(body: kopf.Body, account: Account, verb: str, pod: str,
                     error: InstanceError) -> None:
        said = error.instance_message if isinstance(error, InstanceRefused) else ""
        logger.warning("%s/%s: %s of session %s on %s failed: %s", account.namespace,
                       account.name, verb, account.spec.session_id, pod, error)
        kopf.event(body, type="Warning", reason="InstanceCallFailed",
                   message=f"{verb} on {pod} failed ({error.kind}): {said or error}"[:1000])


def _since(store: dict[str, datetime], uid: str, now: datetime, holds: bool) -> datetime | None:
    """When a condition that holds now started holding (forgotten once it does not)."""
    if holds:
        return store.setdefault(uid, now)
    store.pop(uid, None)
    return None


def account_uid(body: kopf.Body) -> str:
    return str(body.metadata.uid)


def _account(
    body: kopf.Body, missing_since: datetime | None, duplicate_since: datetime | None,
    failed_since: datetime | None, start_accepted_at: datetime | None, *,
    start_in_flight: str | None, call_failure: CallFailure | None,
) -> Account | None:
    """The account as plain data; a body the schema let through but we cannot read is
    reported on the object, never raised."""
    try:
        return Account(
            namespace=body.metadata.namespace,
            name=body.metadata.name,
            generation=int(body.metadata.get("generation") or 0),
            spec=WAAccountSpec.model_validate(dict(body.spec)),
            status=WAAccountStatus.model_validate(dict(body.status)),
            missing_since=missing_since,
            duplicate_since=duplicate_since,
            failed_since=failed_since,
            start_in_flight=start_in_flight,
            start_accepted_at=start_accepted_at,
            call_failure=call_failure,
        )
    except ValidationError as error:
        message = f"cannot read this WAAccount: {error.errors()[0]['msg']}"
        logger.warning("%s/%s: %s", body.metadata.namespace, body.metadata.name, message)
        kopf.event(body, type="Warning", reason="InvalidAccount", message=message)
        return None
