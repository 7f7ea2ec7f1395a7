"""The mirror's shell: account events in, batched table writes out, on one worker thread.

Events only record the latest row per account and wake the writer, so reconciliation
never waits for the database. The writer resyncs the whole table at start and after every
failure, then writes what changed in batches. While it cannot write, the accounts whose
rows lag show `Mirrored=False` with the reason; once written, `Mirrored=True`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from controller import metrics
from controller.api import Condition, ConditionType, set_condition
from controller.mirror.rows import (
    MirrorFailure,
    MirrorRow,
    deleted_sessions,
    explain_failure,
    mirrored,
    plan_resync,
    row_of,
)
from controller.mirror.store import MirrorStore, upgrade

logger = logging.getLogger("wa_controller.mirror")

MIRRORED = ConditionType.MIRRORED
T = TypeVar("T")
ListAccounts = Callable[[], Awaitable[list[Mapping[str, Any]]]]
PatchStatus = Callable[[str, str, str, dict[str, Any]], Awaitable[bool]]


@dataclass(frozen=True)
class _Change:
    row: MirrorRow
    deleted: bool
    since: float  # monotonic: when the mirror first lagged behind this account


@dataclass
class _AccountRef:
    """What a Mirrored condition patch needs: where the object is, and its conditions."""

    namespace: str
    name: str
    resource_version: str
    generation: int
    conditions: list[Condition]


class Mirror:
    def __init__(
        self, store: MirrorStore, *, list_accounts: ListAccounts, patch_status: PatchStatus,
        migrate: bool, batch_window: float = 0.1, retry_max: float = 30.0,
        on_deleted: Callable[[set[tuple[str, str, str | None]]], None] | None = None,
    ) -> None:
        self._store = store
        # Told after each resync which sessions belonged to accounts deleted meanwhile
        # (also while the operator was away), so that they are stopped.
        self._on_deleted = on_deleted
        self._list_accounts = list_accounts
        self._patch_status = patch_status
        self._migrate = migrate
        self._batch_window = batch_window
        self._retry_max = retry_max
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mirror")
        self._pending: dict[str, _Change] = {}
        self._written: dict[str, MirrorRow] | None = None  # None: resync before writing
        self._accounts: dict[str, _AccountRef] = {}
        self._failure: MirrorFailure | None = None
        self._patching: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        metrics.MIRROR_PENDING.set_function(lambda: len(self._pending))
        metrics.MIRROR_LAG.set_function(self.lag)

    def start(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._run(), name="mirror writer")

    async def close(self) -> None:
        tasks = [t for t in (self._writer, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._db(self._store.dispose)
        self._executor.shutdown(wait=False)

    def lag(self) -> float:
        """Seconds since the oldest change the table does not show yet."""
        oldest = min((c.since for c in self._pending.values()), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    # --- events in ---------------------------------------------------------------------

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        row = row_of(body)
        deleted = event_type == "DELETED" or not mirrored(body)
        if deleted:
            self._accounts.pop(row.uid, None)
        else:
            self._accounts[row.uid] = _ref(body)
        earlier = self._pending.get(row.uid)
        if earlier is None and not deleted and self._written is not None \
                and self._written.get(row.uid) == row:
            self._settle_condition(row.uid)  # in the table already
            return
        since = earlier.since if earlier else time.monotonic()
        self._pending[row.uid] = _Change(row, deleted, since)
        self._wake.set()

    # --- the writer --------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 1.0
        while True:
            self._wake.clear()
            try:
                if self._written is None:
                    await self._resync()
                await self._flush()
            except Exception as error:
                self._failed(error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._retry_max)
                continue
            if self._failure is not None:
                logger.info("the SQL mirror is writable again and resynced")
                self._failure = None
            backoff = 1.0
            await self._wake.wait()
            await asyncio.sleep(self._batch_window)  # let a burst of changes gather

    async def _resync(self) -> None:
        if self._migrate:
            await self._db(upgrade, self._store.engine, self._store.table.name)
            self._migrate = False
        bodies = await self._list_accounts()
        table = await self._db(self._store.load)
        accounts = {row.uid: row for row in map(row_of, filter(mirrored, bodies))}
        plan = plan_resync(accounts, table)
        if self._on_deleted is not None:
            self._on_deleted(deleted_sessions(accounts, table))
        await self._db(self._store.write, plan.upserts, plan.deletes, _now())
        metrics.MIRROR_RESYNCS.inc()
        metrics.MIRROR_ROWS.labels("upsert").inc(len(plan.upserts))
        metrics.MIRROR_ROWS.labels("delete").inc(len(plan.deletes))
        self._written = accounts
        for body in bodies:
            self._accounts.setdefault(str(body["metadata"]["uid"]), _ref(body))
        logger.info("SQL mirror resynced: %d accounts, %d rows written, %d soft-deleted",
                    len(accounts), len(plan.upserts), len(plan.deletes))
        for uid in accounts:
            if uid not in self._pending:
                self._settle_condition(uid)

    async def _flush(self) -> None:
        assert self._written is not None
        batch, self._pending = self._pending, {}
        written = self._written
        upserts = [c.row for c in batch.values()
                   if not c.deleted and written.get(c.row.uid) != c.row]
        deletes = [c.row for c in batch.values() if c.deleted and c.row.uid in written]
        try:
            if upserts or deletes:
                await self._db(self._store.write, upserts, deletes, _now())
        except BaseException:
            for uid, change in batch.items():
                self._pending.setdefault(uid, change)  # a newer change that came meanwhile wins
            raise
        metrics.MIRROR_ROWS.labels("upsert").inc(len(upserts))
        metrics.MIRROR_ROWS.labels("delete").inc(len(deletes))
        written.update((row.uid, row) for row in upserts)
        for row in deletes:
            written.pop(row.uid, None)
        for uid in batch:
            self._settle_condition(uid)

    def _failed(self, error: BaseException) -> None:
        failure = explain_failure(error)
        if failure != self._failure:
            logger.error("SQL mirror: %s [%s]; retrying, reconciliation goes on",
                         failure.message, failure.reason)
        self._failure = failure
        self._written = None  # whatever happened meanwhile, resync when it is back
        metrics.MIRROR_FAILURES.labels(failure.reason).inc()
        for uid in list(self._pending):
            self._settle_condition(uid)

    async def _db(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    # --- the Mirrored condition --------------------------------------------------------

    def _settle_condition(self, uid: str) -> None:
        """Patch the account's Mirrored condition when it says otherwise than the table."""
        ref = self._accounts.get(uid)
        if ref is None or uid in self._patching:
            return
        lagging = uid in self._pending or self._written is None
        if lagging and self._failure is None:
            return  # being written right now
        status: Literal["True", "False"] = "False" if lagging else "True"
        reason, message = ((self._failure.reason, self._failure.message)
                           if lagging and self._failure
                           else ("RowWritten", "the SQL mirror row matches this account"))
        current = next((c for c in ref.conditions if c.type == MIRRORED), None)
        if current is not None and (current.status, current.reason) == (status, reason):
            return
        conditions = set_condition(ref.conditions, MIRRORED, status, reason, message,
                                   now=_now().replace(microsecond=0), generation=ref.generation)
        self._patching.add(uid)
        task = asyncio.get_running_loop().create_task(self._patch_condition(uid, ref, conditions))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _patch_condition(self, uid: str, ref: _AccountRef,
                               conditions: list[Condition]) -> None:
        try:
            # A conflict is fine: the newer object's event settles the condition again.
            await self._patch_status(ref.namespace, ref.name, ref.resource_version, {
                "conditions": [c.model_dump(mode="json", by_alias=True, exclude_none=True)
                               for c in conditions]})
        except Exception as error:
            logger.warning("%s/%s: cannot set the Mirrored condition: %s",
                           ref.namespace, ref.name, error)
        finally:
            self._patching.discard(uid)


def _ref(body: Mapping[str, Any]) -> _AccountRef:
    metadata = body["metadata"]
    conditions = []
    for raw in (body.get("status") or {}).get("conditions") or []:
        with contextlib.suppress(ValueError):
            conditions.append(Condition.model_validate(raw))
    return _AccountRef(namespace=metadata["namespace"], name=metadata["name"],
                       resource_version=str(metadata["resourceVersion"]),
                       generation=int(metadata.get("generation") or 0), conditions=conditions)


def _now() -> datetime:
    return datetime.now(UTC)
