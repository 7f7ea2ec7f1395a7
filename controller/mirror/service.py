"""The mirror's shell: account events in, batched table writes out, on one worker thread.

Events only record the latest row per account and wake the writer, so reconciliation
never waits for the database. The writer resyncs the whole table against the listed
accounts at start and after every failure, compares it with what it wrote every
`resync_interval` (one read; rows changed behind its back are written again, and the rows
of accounts the API server no longer has, deleted with no event ever seen, are
soft-deleted), and in
between writes what changed, in batches. It touches only its installation's rows.

Every account carries a `Mirrored` condition saying whether its row is written (or why
not). The condition is applied server-side as its own field manager, so it never races
the reconciler's status writes; a work queue applies it, one account at a time, retried
with backoff until it is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from controller import metrics
from controller.api import Condition, ConditionType, Phase, account_reference, older_version
from controller.clock import Clock, SystemClock
from controller.events import EventRecorder
from controller.mirror.rows import MirrorFailure, MirrorRow, explain_failure, mirrored, row_of
from controller.mirror.store import ApplicationStore, MirrorStore
from controller.workqueue import Backoff, WorkQueue

logger = logging.getLogger("wa_controller.mirror")

MIRRORED = ConditionType.MIRRORED
ROW_MISSING = "ApplicationRowMissing"
CONDITION_MANAGER = "wa-controller-mirror"  # the field manager owning the Mirrored condition
# An account on its way (new, being started or moved, maybe waiting in line for a start
# slot) is written again by the reconciler when it moves on, and that write carries its
# condition: one write, not two (an apply between the two would also turn the second into
# a conflict). It shows its condition when it moves on, or after this long on its way.
CONDITION_HOLD = 300.0  # seconds
IN_MOTION = frozenset({None, Phase.STARTING.value, Phase.MOVING.value})
T = TypeVar("T")
ListAccounts = Callable[[], Awaitable[list[Mapping[str, Any]]]]
ListUids = Callable[[], Awaitable[set[str]]]
# (namespace, name, field manager, condition) -> False when the account is gone.
ApplyCondition = Callable[[str, str, str, dict[str, Any]], Awaitable[bool]]
Verdict = tuple[str, str, str]  # Mirrored (status, reason, message)


class AccountsUnlisted(Exception):
    """The API server did not list the accounts: not the database's fault."""


@dataclass(frozen=True, slots=True)
class _Change:
    row: MirrorRow
    deleted: bool
    since: float  # monotonic: when the mirror first lagged behind this account


@dataclass(slots=True)
class _Ref:
    """What the Mirrored condition needs of an account: where it is, and the condition
    as the newest event showed it (status, reason, lastTransitionTime)."""

    uid: str
    namespace: str
    name: str
    session: str
    generation: int
    version: str  # resourceVersion: a newer write's answer is not undone by an older event
    shown: tuple[str, str, str] | None
    in_motion: bool  # Starting or Moving: written again soon

    def object(self) -> dict[str, Any]:
        """The account as an event's involved object."""
        return account_reference(self.namespace, self.name, self.uid)


class Mirror:
    def __init__(
        self, store: MirrorStore | ApplicationStore, *, list_accounts: ListAccounts,
        apply_condition: ApplyCondition, migrate: bool, batch_window: float = 0.1,
        retry_max: float = 30.0, resync_interval: float = 600.0, condition_workers: int = 16,
        clock: Clock | None = None,
        on_deleted: Callable[[set[tuple[str, str, str | None]]], None] | None = None,
        events: EventRecorder | None = None, list_uids: ListUids | None = None,
    ) -> None:
        self._store = store
        self._events = events  # None: warnings are only logged
        # Told after each listed resync which sessions belonged to accounts deleted
        # meanwhile (also while the operator was away), so that they are stopped.
        self._on_deleted = on_deleted
        self._list_accounts = list_accounts
        # The uids of the accounts that exist (default: read off a full listing).
        self._list_uids = list_uids or self._uids_of_listing
        self._apply_condition = apply_condition
        self._migrate: bool | None = migrate  # None: the table is prepared
        self._batch_window = batch_window
        self._retry_max = retry_max
        self._resync_interval = resync_interval
        self._clock = clock or SystemClock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mirror")
        self._pending: dict[str, _Change] = {}
        self._writing: set[str] = set()  # uids whose row the writer is writing right now
        self._written: dict[str, MirrorRow] | None = None  # None: list and resync first
        self._foreign: dict[str, str] = {}  # uid -> the installation owning its row
        self._missing: set[str] = set()  # uids whose row the application's table lacks
        # The rows we would write for those accounts (a later resync may find them there).
        self._held: dict[str, MirrorRow] = {}
        self._accounts: dict[str, _Ref] = {}
        self._failure: MirrorFailure | None = None
        self._unlisted: str | None = None  # why the accounts could not be listed
        self._resynced_at = 0.0
        self._conditions: WorkQueue[str] = WorkQueue(self._clock, Backoff(1.0, retry_max))
        self._condition_workers = condition_workers
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        metrics.MIRROR_PENDING.set_function(lambda: len(self._pending))
        metrics.MIRROR_LAG.set_function(self.lag)
        metrics.MIRROR_FOREIGN_ROWS.set_function(lambda: len(self._foreign))
        metrics.MIRROR_MISSING_ROWS.set_function(lambda: len(self._missing))

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.add(loop.create_task(self._run(), name="mirror writer"))
        for index in range(self._condition_workers):
            self._tasks.add(loop.create_task(self._settle_conditions(),
                                             name=f"mirror condition {index}"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._db(self._store.dispose)
        self._executor.shutdown(wait=False)

    def lag(self) -> float:
        """Seconds since the oldest change the table does not show yet."""
        oldest = min((c.since for c in self._pending.values()), default=None)
        return 0.0 if oldest is None else self._clock.monotonic() - oldest

    # --- events in ---------------------------------------------------------------------

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        row = row_of(body)
        deleted = event_type == "DELETED" or not mirrored(body)
        if deleted:
            self._accounts.pop(row.uid, None)
            self._conditions.discard(row.uid)
        else:
            ref, known = _ref(body), self._accounts.get(row.uid)
            if known is None or not older_version(ref.version, known.version):
                self._accounts[row.uid] = ref
        earlier = self._pending.get(row.uid)
        if earlier is None and not deleted and self._written is not None \
                and self._written.get(row.uid) == row:
            self._settle(row.uid)  # in the table already
            return
        since = earlier.since if earlier else self._clock.monotonic()
        self._pending[row.uid] = _Change(row, deleted, since)
        self._settle(row.uid)
        self._wake.set()

    # --- the writer --------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 1.0
        while True:
            self._wake.clear()
            try:
                if self._written is None:
                    await self._resync(listed=True)
                elif self._clock.monotonic() - self._resynced_at >= self._resync_interval:
                    await self._resync(listed=False)
                await self._flush()
            except AccountsUnlisted as error:
                self._cannot_list(error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._retry_max)
                continue
            except Exception as error:
                self._failed(error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._retry_max)
                continue
            if self._failure is not None:
                logger.info("the SQL mirror is writable again and resynced")
                self._failure = None
                self._settle_all()
            backoff = 1.0
            due = self._resynced_at + self._resync_interval - self._clock.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(due, 0.0)):
                    await self._wake.wait()
            await asyncio.sleep(self._batch_window)  # let a burst of changes gather

    async def _uids_of_listing(self) -> set[str]:
        return {str(body["metadata"]["uid"]) for body in await self._list_accounts()}

    async def _resync(self, *, listed: bool) -> None:
        """Make our rows equal the accounts: listed from the API server (at start, after a
        failure), or as this process last wrote them, less those the API server no longer
        has (periodically: a list of uids and one read, and no write when nothing was
        changed behind its back)."""
        if self._migrate is not None:
            await self._db(self._store.prepare, self._migrate)
            self._migrate = None
        if listed:
            try:
                bodies = await self._list_accounts()
            except Exception as error:
                raise AccountsUnlisted(f"{type(error).__name__}: {error}"[:300]) from error
            accounts = {row.uid: row for row in map(row_of, filter(mirrored, bodies))}
            for body in bodies:
                self._accounts.setdefault(str(body["metadata"]["uid"]), _ref(body))
        else:
            # An account deleted before the watch began (between our listing and kopf's)
            # has no DELETED event ever: only the API server can say it is gone.
            try:
                live = await self._list_uids()
            except Exception as error:
                raise AccountsUnlisted(f"{type(error).__name__}: {error}"[:300]) from error
            known = {**(self._written or {}), **self._held}
            accounts = {uid: row for uid, row in known.items() if uid in live}
            for uid in known.keys() - live:
                self._accounts.pop(uid, None)
        if self._unlisted is not None:
            logger.info("the mirror lists the WAAccounts again")
            self._unlisted = None
        synced = await self._db(self._store.resync, accounts, self._clock.now())
        if self._on_deleted is not None:
            self._on_deleted(synced.deleted_sessions)
        metrics.MIRROR_RESYNCS.inc()
        metrics.MIRROR_ROWS.labels("upsert").inc(synced.upserts)
        metrics.MIRROR_ROWS.labels("delete").inc(synced.deletes)
        self._report_foreign(synced.foreign)
        self._report_missing(synced.missing, replace=True)
        left_out = synced.foreign.keys() | synced.missing
        self._held = {uid: accounts[uid] for uid in left_out}
        self._written = {uid: row for uid, row in accounts.items() if uid not in left_out}
        self._resynced_at = self._clock.monotonic()
        if listed or synced.upserts or synced.deletes:
            logger.info("SQL mirror resynced: %d accounts, %d rows written, %d soft-deleted",
                        len(accounts), synced.upserts, synced.deletes)
        self._settle_all()

    def _report_foreign(self, foreign: dict[str, str]) -> None:
        """Accounts whose row another installation owns: left as they are, and said."""
        for uid in foreign.keys() - self._foreign.keys():
            ref = self._accounts.get(uid)
            logger.warning("%s: the mirror row of this account belongs to installation %r; "
                           "it is left as it is (is another installation serving this "
                           "namespace?)", f"{ref.namespace}/{ref.name}" if ref else uid,
                           foreign[uid])
        self._foreign = foreign

    def _report_missing(self, missing: set[str], *, replace: bool = False,
                        among: set[str] | None = None) -> None:
        """Accounts whose row the application's table lacks: one Warning each when it
        starts lacking, never a created row. `among`: the accounts just written."""
        if replace:
            before, self._missing = self._missing, set(missing)
        else:
            before = set(self._missing)
            self._missing = (self._missing - (among or set())) | missing
        for uid in sorted(self._missing - before):
            ref = self._accounts.get(uid)
            if ref is not None:
                message = (f"the application's table has no row for session {ref.session}: "
                           "nothing is written until the application creates it")
                logger.warning("%s/%s: %s", ref.namespace, ref.name, message)
                self._warn(ref, message)

    def _warn(self, ref: _Ref, message: str) -> None:
        """A Warning event on the account."""
        if self._events is not None:
            self._events.record(ref.object(), "Warning", ROW_MISSING, message)

    async def _flush(self) -> None:
        assert self._written is not None
        batch, self._pending = self._pending, {}
        written, project = self._written, self._store.project
        for change in batch.values():  # left out of the table: kept for later resyncs
            if change.row.uid in self._foreign or change.row.uid in self._missing:
                if change.deleted:
                    self._held.pop(change.row.uid, None)
                else:
                    self._held[change.row.uid] = change.row
        upserts = [c.row for c in batch.values() if not c.deleted
                   and c.row.uid not in self._foreign
                   and (c.row.uid not in written or project(written[c.row.uid])
                        != project(c.row))]
        deletes = [c.row for c in batch.values() if c.deleted and c.row.uid in written]
        self._writing = set(batch)
        try:
            missing = await self._db(self._store.write, upserts, deletes, self._clock.now()) \
                if upserts or deletes else set()
        except BaseException:
            for uid, change in batch.items():
                self._pending.setdefault(uid, change)  # a newer change that came meanwhile wins
            raise
        finally:
            self._writing = set()
        metrics.MIRROR_ROWS.labels("upsert").inc(len(upserts) - len(missing))
        metrics.MIRROR_ROWS.labels("delete").inc(len(deletes))
        written.update((row.uid, row) for row in upserts if row.uid not in missing)
        for row in deletes:
            written.pop(row.uid, None)
        self._report_missing(missing, among={row.uid for row in upserts})
        for uid in batch:
            self._settle(uid)

    def _cannot_list(self, error: AccountsUnlisted) -> None:
        """The API server failed the listing: the database is fine, say so truthfully."""
        reason = str(error)
        if reason != self._unlisted:
            logger.warning("the mirror cannot list WAAccounts from the API server (%s); "
                           "retrying (the database is not at fault)", reason)
        self._unlisted = reason

    def _failed(self, error: BaseException) -> None:
        failure = explain_failure(error)
        if failure != self._failure:
            logger.error("SQL mirror: %s [%s]; retrying, reconciliation goes on",
                         failure.message, failure.reason)
        self._failure = failure
        self._written = None  # whatever happened meanwhile, resync when it is back
        metrics.MIRROR_FAILURES.labels(failure.reason).inc()
        self._settle_all()

    async def _db(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    # --- the Mirrored condition --------------------------------------------------------

    def _verdict(self, uid: str) -> Verdict | None:
        """What the account's Mirrored condition should say; None while its row is being
        written (nothing to say yet)."""
        owner = self._foreign.get(uid)
        if owner is not None:
            return ("False", "RowOwnedByAnotherInstallation",
                    f"the mirror row of this account belongs to installation {owner!r}; "
                    "it is left as it is")
        if uid in self._missing:
            return ("False", ROW_MISSING, "the application's table has no row for this "
                    "session; nothing is written until the application creates it")
        if uid not in self._pending and uid not in self._writing and self._written is not None:
            return "True", "RowWritten", "the SQL mirror row matches this account"
        if self._failure is not None:
            return "False", self._failure.reason, self._failure.message
        return None

    def _settle(self, uid: str) -> None:
        """Queue the account's condition when it shows otherwise than the table."""
        ref = self._accounts.get(uid)
        verdict = self._verdict(uid)
        if ref is not None and verdict is not None and (
                ref.shown is None or ref.shown[:2] != verdict[:2]):
            if ref.in_motion and verdict[0] == "True":  # bad news is told at once
                self._conditions.add_after(uid, CONDITION_HOLD)
            else:
                self._conditions.add(uid)

    def _settle_all(self) -> None:
        for uid in self._accounts:
            self._settle(uid)

    async def _settle_conditions(self) -> None:
        while True:
            uid = await self._conditions.get()
            try:
                await self._apply(uid)
            except Exception as error:
                delay = self._conditions.fail(uid)
                ref = self._accounts.get(uid)
                if self._conditions.failures(uid) == 1 and ref is not None:
                    logger.warning("%s/%s: cannot set the Mirrored condition (%s); retrying "
                                   "in %.0f s", ref.namespace, ref.name,
                                   f"{type(error).__name__}: {error}"[:300], delay)
            else:
                self._conditions.forget(uid)
            finally:
                self._conditions.done(uid)

    def to_show(self, uid: str) -> Condition | None:
        """The Mirrored condition the account should show, when it shows otherwise (the
        reconciler carries it in a status write it makes anyway)."""
        ref = self._accounts.get(uid)
        verdict = self._verdict(uid)
        if ref is None or verdict is None or (ref.shown and ref.shown[:2] == verdict[:2]):
            return None
        status, reason, message = verdict
        return Condition.model_validate({
            "type": MIRRORED.value, "status": status, "reason": reason, "message": message,
            # The transition time moves only when the status flips.
            "lastTransitionTime": ref.shown[2] if ref.shown and ref.shown[0] == status
            else self._clock.now().replace(microsecond=0),
            "observedGeneration": ref.generation,
        })

    def shown(self, body: Mapping[str, Any]) -> None:
        """The account as someone else just wrote it (its condition carried): what it shows
        is known before its watch event comes, and no apply of ours is needed."""
        written = _ref(body)
        ref = self._accounts.get(written.uid)
        if ref is not None and not older_version(written.version, ref.version):
            self._accounts[written.uid] = written

    async def _apply(self, uid: str) -> None:
        ref = self._accounts.get(uid)
        condition = self.to_show(uid)
        if ref is None or condition is None:
            return
        applied = condition.model_dump(mode="json", by_alias=True, exclude_none=True)
        if await self._apply_condition(ref.namespace, ref.name, CONDITION_MANAGER, applied):
            # The account's next event confirms it.
            ref.shown = (condition.status, condition.reason, applied["lastTransitionTime"])


def _ref(body: Mapping[str, Any]) -> _Ref:
    metadata = body["metadata"]
    shown = next(((str(c.get("status")), str(c.get("reason")),
                   str(c.get("lastTransitionTime")))
                  for c in (body.get("status") or {}).get("conditions") or []
                  if isinstance(c, dict) and c.get("type") == MIRRORED), None)
    return _Ref(uid=str(metadata["uid"]), namespace=metadata["namespace"],
                name=metadata["name"], session=str((body.get("spec") or {}).get("sessionId")),
                generation=int(metadata.get("generation") or 0),
                version=str(metadata.get("resourceVersion") or ""), shown=shown,
                in_motion=(body.get("status") or {}).get("phase") in IN_MOTION)

