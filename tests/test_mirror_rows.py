"""The mirror's pure parts: the row of an account, the resync plan, failures explained."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import psycopg
import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError

from controller.mirror.rows import (
    AppValues,
    MirrorRow,
    StatusWords,
    StoredRow,
    deleted_sessions,
    explain_failure,
    plan_application,
    plan_resync,
    row_of,
)

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


ME, OTHER = "wa/ours", "wa/theirs"


def test_resync_writes_missing_and_stale_rows_and_soft_deletes_orphans() -> None:
    fresh, same = row_of(body("new")), row_of(body("ok"))
    stale = row_of(body("old", phase="Connected"))
    orphan = row_of(body("gone"))
    table = {
        "old": StoredRow(row_of(body("old", phase="Pending")), None, ME),
        "ok": StoredRow(same, None, ME),
        "gone": StoredRow(orphan, None, ME),
    }

    plan = plan_resync({"new": fresh, "old": stale, "ok": same}, table, ME)

    assert set(plan.upserts) == {fresh, stale}
    assert plan.deletes == (orphan,)
    assert plan.foreign == {}


def test_resync_never_resurrects_or_deletes_twice() -> None:
    dead = row_of(body("dead"))
    plan = plan_resync({}, {"dead": StoredRow(dead, NOW, ME)}, ME)
    assert plan.upserts == ()
    assert plan.deletes == ()


def test_resync_revives_a_deleted_row_whose_account_exists() -> None:
    row = row_of(body("back"))
    plan = plan_resync({"back": row}, {"back": StoredRow(row, NOW, ME)}, ME)
    assert plan.upserts == (row,)


def test_resync_of_an_equal_table_writes_nothing() -> None:
    rows = {uid: row_of(body(uid)) for uid in ("a", "b")}
    plan = plan_resync(rows, {uid: StoredRow(r, None, ME) for uid, r in rows.items()}, ME)
    assert plan.upserts == ()
    assert plan.deletes == ()


def test_resync_never_touches_another_installations_rows() -> None:
    theirs = row_of(body("theirs"))  # an account of theirs: not one of ours
    plan = plan_resync({}, {"theirs": StoredRow(theirs, None, OTHER)}, ME)
    assert (plan.upserts, plan.deletes, plan.foreign) == ((), (), {})


def test_resync_reports_our_account_whose_row_another_installation_owns() -> None:
    ours = row_of(body("both", phase="Connected"))
    table = {"both": StoredRow(row_of(body("both")), None, OTHER)}

    plan = plan_resync({"both": ours}, table, ME)

    assert (plan.upserts, plan.deletes, plan.foreign) == ((), (), {"both": OTHER})


def test_resync_adopts_rows_written_before_rows_had_an_owner() -> None:
    same, orphan = row_of(body("same")), row_of(body("orphan"))
    table = {"same": StoredRow(same, None, None), "orphan": StoredRow(orphan, None, None)}

    plan = plan_resync({"same": same}, table, ME)

    assert plan.upserts == (same,)  # rewritten with our name on it
    assert plan.deletes == (orphan,)


def test_deleted_sessions_are_only_those_of_our_rows() -> None:
    table = {"mine": StoredRow(row_of(body("mine")), NOW, ME),
             "old": StoredRow(row_of(body("old")), None, None),
             "theirs": StoredRow(row_of(body("theirs")), NOW, OTHER)}

    assert deleted_sessions({}, table, ME) == {("shop", "s-mine", "w-9"), ("shop", "s-old", "w-9")}


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


SEED_WORDS = StatusWords.parse("Connected=connected,Pairing=qr_scanning,*=disconnected")


@pytest.mark.parametrize(("phase", "word"), [
    ("Connected", "connected"), ("Pairing", "qr_scanning"), ("Starting", "disconnected"),
    ("Lost", "disconnected"), ("Stopped", "disconnected"), (None, "disconnected")])
def test_phases_become_the_applications_own_words(phase: str | None, word: str) -> None:
    assert SEED_WORDS.of(phase) == word


@pytest.mark.parametrize(("text", "problem"), [
    ("Connected=connected", "a word for every other phase (*=word) is needed"),
    ("Connected=connected,Paired=qr,*=x", "'Paired' is not a phase"),
    ("Connected,*=x", "'Connected' is not Phase=word"),
    ("Connected=,*=x", "'Connected=' is not Phase=word"),
])
def test_status_words_that_cannot_be_read_are_refused(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        StatusWords.parse(text)


def test_application_rows_are_updated_only_where_they_differ_and_never_created() -> None:
    placed = row_of(body("p", phase="Connected", instance={
        "pod": "wa-1", "url": "http://10.0.0.7:3000", "assignedAt": "2026-11-22T12:00:00Z"}))
    same = row_of(body("s", phase="Pairing", instance={
        "pod": "wa-2", "url": "http://10.0.0.8:3000", "assignedAt": "2026-11-22T12:00:00Z"}))
    lost = row_of(body("l", phase="Lost"))
    absent = row_of(body("a", phase="Connected"))
    table = {"s-p": AppValues("http://old:3000", "connected"),
             "s-s": AppValues("http://10.0.0.8:3000", "qr_scanning"),
             "s-l": AppValues("http://10.0.0.9:3000", "connected")}

    plan = plan_application({"p": placed, "s": same, "l": lost, "a": absent}, table, SEED_WORDS)

    assert plan.updates == (("s-l", AppValues(None, "disconnected")),
                            ("s-p", AppValues("http://10.0.0.7:3000", "connected")))
    assert plan.missing == frozenset({"a"})


def test_without_a_status_column_only_the_url_is_compared() -> None:
    row = row_of(body("p", phase="Lost"))
    assert plan_application({"p": row}, {"s-p": AppValues(None, None)}, None).updates == ()
