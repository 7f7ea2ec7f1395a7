"""The mirror's pure parts: the row of an account, the resync plan, failures explained."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError

from controller.mirror.rows import MirrorRow, StoredRow, explain_failure, plan_resync, row_of

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def body(uid: str = "u1", **status: object) -> dict[str, object]:
    return {
        "metadata": {"uid": uid, "namespace": "shop", "name": f"acct-{uid}"},
        "spec": {"sessionId": f"s-{uid}", "phoneNumber": "+6281100001", "accountUuid": "a-1",
                 "workspaceId": "w-9", "desiredState": "Connected"},
        "status": status,
    }


def test_row_copies_spec_and_observed_instance() -> None:
    row = row_of(body(phase="Connected", sessionStatus="connected",
                      instance={"pod": "wa-1", "url": "http://10.0.0.7:3000",
                                "assignedAt": "2026-11-22T12:00:00Z"}))

    assert row == MirrorRow(
        uid="u1", namespace="shop", name="acct-u1", account_uuid="a-1", session_id="s-u1",
        phone_number="+6281100001", workspace_id="w-9", desired_state="Connected",
        phase="Connected", session_status="connected", assigned_pod="wa-1",
        instance_url="http://10.0.0.7:3000",
    )


def test_row_of_a_new_account_has_no_assignment() -> None:
    row = row_of(body())
    assert (row.phase, row.assigned_pod, row.instance_url) == (None, None, None)


def test_notification_carries_the_keys_an_application_caches_by() -> None:
    payload = row_of(body()).notification("upsert")
    assert payload == ('{"op":"upsert","uid":"u1","namespace":"shop","name":"acct-u1",'
                       '"accountUuid":"a-1","sessionId":"s-u1"}')


def test_resync_writes_missing_and_stale_rows_and_soft_deletes_orphans() -> None:
    fresh, same = row_of(body("new")), row_of(body("ok"))
    stale = row_of(body("old", phase="Connected"))
    orphan = row_of(body("gone"))
    table = {
        "old": StoredRow(row_of(body("old", phase="Pending")), None),
        "ok": StoredRow(same, None),
        "gone": StoredRow(orphan, None),
    }

    plan = plan_resync({"new": fresh, "old": stale, "ok": same}, table)

    assert set(plan.upserts) == {fresh, stale}
    assert plan.deletes == (orphan,)


def test_resync_never_resurrects_or_deletes_twice() -> None:
    dead = row_of(body("dead"))
    plan = plan_resync({}, {"dead": StoredRow(dead, NOW)})
    assert plan.upserts == ()
    assert plan.deletes == ()


def test_resync_revives_a_deleted_row_whose_account_exists() -> None:
    row = row_of(body("back"))
    plan = plan_resync({"back": row}, {"back": StoredRow(row, NOW)})
    assert plan.upserts == (row,)


def test_resync_of_an_equal_table_writes_nothing() -> None:
    rows = {uid: row_of(body(uid)) for uid in ("a", "b")}
    plan = plan_resync(rows, {uid: StoredRow(r, None) for uid, r in rows.items()})
    assert plan.upserts == ()
    assert plan.deletes == ()


def _operational(message: str) -> OperationalError:
    return OperationalError("SELECT 1", {}, psycopg.OperationalError(message))


@pytest.mark.parametrize(("error", "reason"), [
    (_operational('connection to server at "127.0.0.1", port 5 failed: Connection refused'),
     "DatabaseUnavailable"),
    (_operational('FATAL:  password authentication failed for user "wa"'), "DatabaseAuthFailed"),
    (ProgrammingError("SELECT", {}, Exception("permission denied for table whatsapp_accounts")),
     "DatabasePermissionDenied"),
    (ProgrammingError("SELECT", {}, Exception('relation "whatsapp_accounts" does not exist')),
     "MirrorTableMissing"),
])
def test_failures_are_named_for_the_user(error: Exception, reason: str) -> None:
    failure = explain_failure(error)
    assert failure.reason == reason
    assert str(error.orig).splitlines()[0] in failure.message  # type: ignore[attr-defined]
