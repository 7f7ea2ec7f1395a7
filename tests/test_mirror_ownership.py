"""The mirror belongs to whoever wrote it: several installations share one PostgreSQL
database and never touch each other's rows; a periodic resync repairs rows changed behind
an operator's back; rows from before owners existed are adopted."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from kubernetes import client as k8s

from controller.mirror import engine_for, upgrade
from controller.mirror.rows import row_of
from devtools.control_plane import ControlPlane, free_port
from devtools.harness import (
    Accounts,
    Fleet,
    all_settled,
    operator_process,
    running_operator,
    scrape,
    seed_sessions,
    wait_for,
)
from devtools.harness import operator_settings as settings
from devtools.postgres import Postgres
from tests.test_mirror import MIRROR, TABLE, condition, mirrors, rows

pytestmark = pytest.mark.integration


@pytest.fixture
def other_namespace(control_plane: ControlPlane) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    return name


def owned(engine: sa.Engine, owner: str) -> dict[str, dict[str, Any]]:
    return {name: row for name, row in rows(engine).items() if row["owner"] == owner}


def count_row_writes(plain_url: str) -> None:
    """A trigger that counts every row PostgreSQL writes in the mirror table."""
    with psycopg.connect(plain_url, autocommit=True) as db:
        db.execute("CREATE TABLE row_writes (at timestamptz DEFAULT now())")
        db.execute("CREATE FUNCTION count_write() RETURNS trigger LANGUAGE plpgsql AS "
                   "$$ BEGIN INSERT INTO row_writes DEFAULT VALUES; RETURN NULL; END $$")
        db.execute(f"CREATE TRIGGER counted AFTER INSERT OR UPDATE OR DELETE ON {TABLE} "
                   "FOR EACH ROW EXECUTE FUNCTION count_write()")


def row_writes(plain_url: str) -> int:
    with psycopg.connect(plain_url) as db:
        return int(db.execute("SELECT count(*) FROM row_writes").fetchone()[0])


def test_two_installations_on_one_database_keep_each_others_rows(
    namespace: str, other_namespace: str, fleet: Fleet, accounts: Accounts,
    api_client: k8s.ApiClient, postgres: Postgres, pg_database: str, tmp_path: Path,
) -> None:
    url = postgres.url(database=pg_database)
    engine = engine_for(url)
    theirs = Accounts(k8s.CustomObjectsApi(api_client), other_namespace)
    fleet.add("wa-0")
    seed_sessions(fleet, accounts, {"wa-0": ["a1", "a2", "a3"]})
    for name in ("b1", "b2"):
        theirs.create(name)  # no instance pods there: Pending, mirrored all the same
    ours = settings(namespace, database_url=url, installation="team-a")
    with running_operator(ours):
        wait_for("team-a's rows", lambda: all_settled(accounts, 3) and mirrors(engine, accounts))
        before = owned(engine, "team-a")
        assert set(before) == {"a1", "a2", "a3"}

        # team-b serves the other namespace from the same database, resyncing every second.
        log = tmp_path / "team-b.log"
        flags = dict(namespaces=other_namespace, operator_namespace=other_namespace,
                     installation="team-b", database_url=url, mirror_resync_interval=1,
                     liveness_port="off", metrics_port="off", webhook_port="off")
        with operator_process(log, **flags):
            wait_for("team-b's rows", lambda: set(owned(engine, "team-b")) == {"b1", "b2"},
                     timeout=60)
            theirs.custom.delete_namespaced_custom_object(
                "wa-controller.io", "v1alpha1", other_namespace, "waaccounts", "b2")
            wait_for("team-b soft-deleting its deleted account's row",
                     lambda: owned(engine, "team-b")["b2"]["deleted_at"] is not None)
            accounts.custom.delete_namespaced_custom_object(
                "wa-controller.io", "v1alpha1", namespace, "waaccounts", "a3")
            wait_for("team-a soft-deleting its own",
                     lambda: owned(engine, "team-a")["a3"]["deleted_at"] is not None)
        # team-b starts again: its start resync, too, leaves team-a's rows alone.
        started = log.read_text().count("SQL mirror resynced")
        with operator_process(log, **flags):
            wait_for("team-b's second start resynced",
                     lambda: log.read_text().count("SQL mirror resynced") > started, timeout=60)
        after = owned(engine, "team-a")
        assert {n: r for n, r in after.items() if n != "a3"} == {
            n: r for n, r in before.items() if n != "a3"}
        assert after["a3"]["deleted_at"] is not None
        assert owned(engine, "team-b")["b1"]["deleted_at"] is None
        assert all(condition(accounts, n) == ("True", "RowWritten") for n in ("a1", "a2"))
    engine.dispose()


def test_an_account_whose_row_another_installation_owns_is_reported_not_taken_over(
    namespace: str, fleet: Fleet, accounts: Accounts, pg_database: str, postgres: Postgres,
) -> None:
    url = postgres.url(database=pg_database)
    engine = engine_for(url)
    fleet.add("wa-0")
    seed_sessions(fleet, accounts, {"wa-0": ["a1", "a2"]})
    with running_operator(settings(namespace, database_url=url, installation="team-a",
                                   mirror_resync_interval=1.0)):
        wait_for("rows written", lambda: all_settled(accounts, 2) and mirrors(engine, accounts))
        with engine.begin() as db:  # another installation claims a1's row
            db.execute(sa.update(MIRROR).where(MIRROR.c.name == "a1").values(
                owner="team-c", phase="Stopped"))
        wait_for("a1 Mirrored=False, the row's owner named", lambda: condition(
            accounts, "a1") == ("False", "RowOwnedByAnotherInstallation"), timeout=15)
        message = next(c["message"] for c in accounts.status("a1")["conditions"]
                       if c["type"] == "Mirrored")
        assert "'team-c'" in message
        accounts.patch_spec("a1", workspaceId="w-changed")
        accounts.patch_spec("a2", workspaceId="w-changed")
        wait_for("a2's row following its account", lambda: rows(engine)["a2"]["workspace_id"]
                 == "w-changed")
        row = rows(engine)["a1"]
        assert (row["owner"], row["phase"], row["workspace_id"]) == ("team-c", "Stopped", None)
        assert condition(accounts, "a2") == ("True", "RowWritten")
    engine.dispose()


def test_rows_changed_behind_the_operators_back_are_repaired_by_the_periodic_resync(
    namespace: str, fleet: Fleet, accounts: Accounts, pg_database: str, postgres: Postgres,
) -> None:
    url = postgres.url(database=pg_database)
    plain = postgres.url(database=pg_database, driver="postgresql")
    engine = engine_for(url)
    upgrade(engine, TABLE)
    count_row_writes(plain)
    fleet.add("wa-0")
    seed_sessions(fleet, accounts, {"wa-0": ["edited", "deleted", "hidden", "kept"]})
    port = free_port()
    with running_operator(settings(namespace, database_url=url, mirror_resync_interval=2.0,
                                   metrics_port=port)):
        wait_for("rows written", lambda: all_settled(accounts, 4) and mirrors(engine, accounts))
        with engine.begin() as db:
            db.execute(sa.update(MIRROR).where(MIRROR.c.name == "edited").values(
                assigned_pod="wa-9", instance_url="http://10.9.9.9:3000"))
            db.execute(sa.delete(MIRROR).where(MIRROR.c.name == "deleted"))
            db.execute(sa.update(MIRROR).where(MIRROR.c.name == "hidden").values(
                deleted_at=sa.func.now()))
        wait_for("the periodic resync repairing all three", lambda: mirrors(engine, accounts),
                 timeout=15)
        # Nothing differs now: resyncs go on, each one read and no write.
        writes = row_writes(plain)
        resyncs = scrape(port)["wa_controller_mirror_resyncs_total"]
        wait_for("two more resyncs", lambda: scrape(port)["wa_controller_mirror_resyncs_total"]
                 >= resyncs + 2, timeout=15)
        assert row_writes(plain) == writes
    engine.dispose()


def test_rows_from_before_owners_are_adopted_by_the_installation_serving_them(
    namespace: str, fleet: Fleet, accounts: Accounts, pg_database: str, postgres: Postgres,
) -> None:
    url = postgres.url(database=pg_database)
    engine = engine_for(url)
    fleet.add("wa-0")
    seed_sessions(fleet, accounts, {"wa-0": ["old1"]})
    uid = accounts.get("old1")["metadata"]["uid"]
    upgrade(engine, TABLE, "0002")  # the table as the previous release left it
    legacy = sa.Table(TABLE, sa.MetaData(), autoload_with=engine)
    now = datetime.now(UTC)
    with engine.begin() as db:
        db.execute(legacy.insert(), [
            {"uid": uid, "namespace": namespace, "name": "old1", "session_id": "old1",
             "desired_state": "Connected", "phase": "Pending", "updated_at": now},
            {"uid": "gone-uid", "namespace": namespace, "name": "gone", "session_id": "gone",
             "desired_state": "Connected", "phase": "Connected", "updated_at": now},
            {"uid": "elsewhere-uid", "namespace": "not-served", "name": "x",
             "session_id": "x", "desired_state": "Connected", "phase": None,
             "updated_at": now},
        ])
    with running_operator(settings(namespace, database_url=url, installation="team-a")):
        def adopted() -> bool:
            row, wanted = rows(engine)["old1"], row_of(accounts.get("old1")).values()
            return row["owner"] == "team-a" and {k: row[k] for k in wanted} == wanted

        wait_for("old1 adopted and right", lambda: all_settled(accounts, 1) and adopted())
        table = rows(engine)
        assert (table["gone"]["owner"], table["gone"]["deleted_at"] is not None) == (
            "team-a", True)
        assert (table["x"]["owner"], table["x"]["deleted_at"]) == (None, None)
    engine.dispose()
