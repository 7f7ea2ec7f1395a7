"""The mirror's shell on an SQLite file, with the API server played by plain functions: a
failed listing is the API server's fault, not the database's, and the Mirrored condition
is retried until it is written."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from kubernetes_asyncio.client.exceptions import ApiException

from controller.mirror import Mirror, MirrorStore, engine_for
from controller.mirror.service import CONDITION_HOLD
from devtools.fake_clock import FakeClock
from tests.test_mirror import MIRROR


def account(name: str) -> dict[str, Any]:
    return {"metadata": {"uid": f"uid-{name}", "namespace": "ns", "name": name,
                         "resourceVersion": "1", "generation": 1},
            "spec": {"sessionId": name}, "status": {"phase": "Connected"}}


def store(tmp_path: Path) -> MirrorStore:
    return MirrorStore(engine_for(f"sqlite:///{tmp_path / 'mirror.sqlite'}"),
                       "whatsapp_accounts", None, owner="ns/wa-controller")


def recording_mirror(tmp_path: Path, clock: FakeClock, accounts: list[dict[str, Any]],
                     applied: list[str], table: MirrorStore | None = None) -> Mirror:
    """A started mirror listing `accounts`, whose condition applies are recorded as
    name or name=status."""

    async def listed() -> list[dict[str, Any]]:
        return accounts

    async def apply(namespace: str, name: str, manager: str, condition: dict[str, Any]) -> bool:
        applied.append(name if condition["status"] == "True" else f"{name}={condition['status']}")
        return True

    mirror = Mirror(table or store(tmp_path), list_accounts=listed, apply_condition=apply,
                    migrate=True, clock=clock)
    mirror.start()
    return mirror


async def until(what: str, condition: Any, within: float = 10.0) -> None:
    """Poll `condition` every 50 ms for `within` seconds, or fail saying what never happened."""
    for _ in range(int(within / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {within:.0f} s waiting for {what}")


async def test_a_listing_the_api_server_refuses_is_not_called_a_database_failure(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    listings = 0

    async def throttled() -> list[dict[str, Any]]:
        nonlocal listings
        listings += 1
        raise ApiException(status=429, reason="Too Many Requests")

    applied: list[dict[str, Any]] = []

    async def apply(namespace: str, name: str, manager: str, condition: dict[str, Any]) -> bool:
        applied.append(condition)
        return True

    caplog.set_level(logging.INFO, logger="wa_controller.mirror")
    mirror = Mirror(store(tmp_path), list_accounts=throttled, apply_condition=apply,
                    migrate=True, retry_max=0.05)
    mirror.observe("ADDED", account("a1"))
    mirror.start()
    try:
        await until("three listings tried", lambda: listings >= 3)
    finally:
        await mirror.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "wa_controller.mirror"]
    assert lines == ["the mirror cannot list WAAccounts from the API server (ApiException: "
                     "(429)\nReason: Too Many Requests\n); retrying (the database is not at "
                     "fault)"]
    assert applied == []  # no Mirrored=False: the database is not at fault


async def test_the_mirrored_condition_is_retried_until_it_is_written(tmp_path: Path) -> None:
    attempts = 0

    async def listed() -> list[dict[str, Any]]:
        return [account("a1")]

    async def flaky_apply(namespace: str, name: str, manager: str,
                          condition: dict[str, Any]) -> bool:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ApiException(status=500, reason="etcd is away")
        return True

    mirror = Mirror(store(tmp_path), list_accounts=listed, apply_condition=flaky_apply,
                    migrate=True, retry_max=1.0)
    mirror.observe("ADDED", account("a1"))
    mirror.start()
    try:
        await until("the condition written at the third attempt", lambda: attempts == 3)
        await asyncio.sleep(0.2)
    finally:
        await mirror.close()
    assert attempts == 3


async def test_an_account_deleted_before_the_watch_saw_it_is_soft_deleted_at_the_resync(
        tmp_path: Path) -> None:
    """Deleted between the mirror's listing and the watch's: no DELETED event ever comes.
    The periodic resync asks the API server which accounts exist."""
    existing = {"uid-a1", "uid-a2"}

    async def listed() -> list[dict[str, Any]]:
        return [account(n) for n in ("a1", "a2")]

    async def uids() -> set[str]:
        return set(existing)

    async def apply(namespace: str, name: str, manager: str, condition: dict[str, Any]) -> bool:
        return True

    mirror_store = store(tmp_path)
    mirror = Mirror(mirror_store, list_accounts=listed, list_uids=uids, apply_condition=apply,
                    migrate=True, resync_interval=0.2)

    def live_rows() -> set[str]:
        if not sa.inspect(mirror_store.engine).has_table(MIRROR.name):
            return set()  # not migrated yet
        with mirror_store.engine.connect() as db:
            return {r.name for r in db.execute(sa.select(MIRROR)) if r.deleted_at is None}

    mirror.start()
    try:
        await until("both rows written", lambda: live_rows() == {"a1", "a2"})
        existing.discard("uid-a2")  # deleted, and the watch never told
        await until("a2's row soft-deleted", lambda: live_rows() == {"a1"})
    finally:
        await mirror.close()


async def test_the_condition_of_an_account_on_its_way_waits_for_its_next_write(
        tmp_path: Path) -> None:
    """A Starting account is written again when its session comes up: its Mirrored
    condition waits for that (or for the hold), so that it never sits between the two
    writes and turns the second into a conflict."""
    clock = FakeClock()
    applied: list[str] = []

    def starting(name: str) -> dict[str, Any]:
        return {**account(name), "status": {"phase": "Starting"}}

    mirror = recording_mirror(tmp_path, clock, [starting("a1"), account("a2")], applied)
    try:
        await until("the Connected account's condition", lambda: applied == ["a2"])
        await asyncio.sleep(0.3)  # the workers were free: a1 would have gone meanwhile
        assert applied == ["a2"], "the Starting account's condition did not wait"
        mirror.observe("MODIFIED", account("a1"))  # its session came up: at once
        await until("a1's condition once it is Connected", lambda: applied == ["a2", "a1"])

        mirror.observe("ADDED", starting("a3"))
        await asyncio.sleep(0.3)
        assert applied == ["a2", "a1"]
        clock.advance(CONDITION_HOLD)
        mirror.observe("ADDED", account("a4"))  # wakes the queue, a3 is due by now
        await until("a3's condition after the hold, still Starting",
                    lambda: sorted(applied[2:]) == ["a3", "a4"])
    finally:
        await mirror.close()


async def test_a_new_accounts_condition_rides_on_the_reconcilers_write_not_an_apply_of_its_own(
        tmp_path: Path) -> None:
    """A new account is written by the reconciler in a moment (its placement): that write
    carries the Mirrored condition, and the mirror applies nothing itself. One the
    reconciler does not write in time gets its apply after the hold."""
    clock = FakeClock()
    applied: list[str] = []

    def new(name: str, version: str = "1") -> dict[str, Any]:
        body = account(name)
        body["metadata"]["resourceVersion"] = version
        del body["status"]
        return body

    mirror = recording_mirror(tmp_path, clock, [], applied)
    try:
        mirror.observe("ADDED", new("b1"))
        mirror.observe("ADDED", new("b2"))
        await until("both rows written", lambda: mirror.to_show("uid-b1") is not None
                    and mirror.to_show("uid-b2") is not None)
        carried = mirror.to_show("uid-b1")
        assert carried is not None
        assert (carried.type, carried.status, carried.reason) == ("Mirrored", "True",
                                                                   "RowWritten")
        # The reconciler's placement write carried it: the object as written says so.
        written = new("b1", version="2")
        written["status"] = {"phase": "Starting", "conditions": [
            carried.model_dump(mode="json", by_alias=True, exclude_none=True)]}
        mirror.shown(written)
        assert mirror.to_show("uid-b1") is None
        mirror.observe("MODIFIED", new("b1", version="1"))  # a late event of the older one
        assert mirror.to_show("uid-b1") is None
        await asyncio.sleep(0.3)  # the workers were free: a condition not held would be gone
        assert applied == [], "a new account's condition did not wait for the placement"

        clock.advance(CONDITION_HOLD)
        mirror.observe("ADDED", account("b3"))  # wakes the queue: b2's hold is over
        await until("the conditions of b2 (held) and b3", lambda: sorted(applied) == [
            "b2", "b3"])
        await asyncio.sleep(0.2)
        assert sorted(applied) == ["b2", "b3"], "b1's carried condition was applied again"
    finally:
        await mirror.close()


async def test_a_failing_database_is_told_at_once_also_on_an_account_on_its_way(
        tmp_path: Path) -> None:
    """Only the good news (the row is written) waits for the account's next status write:
    a database that fails shows on a Starting account at once."""
    broken = MirrorStore(engine_for(f"sqlite:///{tmp_path / 'gone' / 'mirror.sqlite'}"),
                         "whatsapp_accounts", None, owner="ns/wa-controller")
    starting = {**account("s1"), "status": {"phase": "Starting"}}
    applied: list[str] = []
    mirror = recording_mirror(tmp_path, FakeClock(), [starting], applied, table=broken)
    try:
        mirror.observe("ADDED", starting)
        await until("Mirrored=False on the Starting account", lambda: applied == ["s1=False"])
    finally:
        await mirror.close()
