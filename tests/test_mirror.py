"""The SQL mirror end to end: the operator, the real API server, real PostgreSQL and SQLite."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import sqlalchemy as sa

from controller.mirror import engine_for, upgrade
from controller.mirror.rows import row_of
from controller.mirror.schema import mirror_table
from devtools.control_plane import free_port
from devtools.harness import (
    Accounts,
    Fleet,
    all_connected,
    operator_settings,
    running_operator,
    scrape,
    seed_sessions,
    wait_for,
)
from devtools.mariadb import MariaDB
from devtools.postgres import Postgres

pytestmark = pytest.mark.integration
TABLE = "whatsapp_accounts"
MIRROR = mirror_table(TABLE)


@pytest.fixture(params=["postgresql", "mariadb", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mirror.sqlite'}"
    if request.param == "mariadb":
        return str(request.getfixturevalue("mariadb_database"))
    postgres: Postgres = request.getfixturevalue("postgres")
    return postgres.url(database=request.getfixturevalue("pg_database"))


@pytest.fixture
def pg_url(postgres: Postgres, pg_database: str) -> str:
    return postgres.url(database=pg_database)


@dataclass(frozen=True)
class Served:
    """A database on a server the test can stop and start."""

    url: str
    server: Postgres | MariaDB


@pytest.fixture(params=["postgresql", "mariadb"])
def served(request: pytest.FixtureRequest) -> Served:
    if request.param == "mariadb":
        return Served(str(request.getfixturevalue("mariadb_database")),
                      request.getfixturevalue("mariadb"))
    postgres: Postgres = request.getfixturevalue("postgres")
    return Served(postgres.url(database=request.getfixturevalue("pg_database")), postgres)


@pytest.fixture
def table(database_url: str) -> Iterator[sa.Engine]:
    engine = engine_for(database_url)
    yield engine
    engine.dispose()


def rows(engine: sa.Engine) -> dict[str, dict[str, Any]]:
    """The table by account name (soft-deleted rows included)."""
    try:
        with engine.connect() as connection:
            found = connection.execute(sa.select(MIRROR)).mappings().all()
    except sa.exc.SQLAlchemyError:
        return {}
    return {row["name"]: dict(row) for row in found}


def mirrors(engine: sa.Engine, accounts: Accounts) -> bool:
    """Every live account has its row with the CR's values; no other row is alive."""
    table = rows(engine)
    cluster = accounts.all()
    live = {name for name, row in table.items() if row["deleted_at"] is None}
    return live == set(cluster) and all(
        {k: table[name][k] for k in row_of(item).values()} == row_of(item).values()
        for name, item in cluster.items())


def condition(accounts: Accounts, name: str, type_: str = "Mirrored") -> tuple[str, str] | None:
    for c in accounts.status(name).get("conditions", []):
        if c["type"] == type_:
            return c["status"], c["reason"]
    return None


def test_rows_follow_an_account_through_its_life(
    namespace: str, fleet: Fleet, accounts: Accounts, database_url: str, table: sa.Engine
) -> None:
    fleet.add("wa-0", auto_pair=0.2)
    fleet.add("wa-1", auto_pair=0.2)
    with running_operator(operator_settings(namespace, database_url=database_url)):
        accounts.create("shop", phoneNumber="+6281100001", accountUuid="a-1", workspaceId="w-1")
        wait_for("the row of a Connected account", lambda: all_connected(accounts, 1)
                 and mirrors(table, accounts))
        assert rows(table)["shop"]["assigned_pod"] == accounts.pod_of("shop")
        assert rows(table)["shop"]["instance_url"].startswith("http://127.0.")
        wait_for("Mirrored=True", lambda: condition(accounts, "shop") == ("True", "RowWritten"))

        here = accounts.pod_of("shop")
        there = "wa-1" if here == "wa-0" else "wa-0"
        fleet.simulators[here].move("shop", fleet.simulators[there])
        wait_for("the row to follow the session to its new pod",
                 lambda: rows(table)["shop"]["assigned_pod"] == there and mirrors(table, accounts))

        accounts.patch_spec("shop", desiredState="Stopped")
        wait_for("the row to show Stopped", lambda: rows(table)["shop"]["phase"] == "Stopped"
                 and mirrors(table, accounts))

        uid = accounts.get("shop")["metadata"]["uid"]
        accounts.custom.delete_namespaced_custom_object(
            "wa-controller.io", "v1alpha1", namespace, "waaccounts", "shop")
        wait_for("a soft delete", lambda: rows(table).get("shop", {}).get("deleted_at"))
        assert rows(table)["shop"]["uid"] == uid


def test_the_steady_state_sends_no_statement(
    namespace: str, fleet: Fleet, accounts: Accounts, served: Served
) -> None:
    fleet.add("wa-0", auto_pair=0.2)
    engine = engine_for(served.url)
    port = free_port()
    with running_operator(operator_settings(namespace, database_url=served.url,
                                            metrics_port=port)):
        for i in range(5):
            accounts.create(f"acct-{i}")
        wait_for("5 rows mirrored", lambda: all_connected(accounts, 5) and mirrors(engine, accounts)
                 and all(condition(accounts, f"acct-{i}") == ("True", "RowWritten")
                         for i in range(5)))
        before = scrape(port)["wa_controller_mirror_statements_total"]
        stamps = {n: r["updated_at"] for n, r in rows(engine).items()}
        sims_before = fleet.simulators["wa-0"].requests()
        # Several probe cycles (1 s each) with nothing changing.
        wait_for("four probe cycles",
                 lambda: fleet.simulators["wa-0"].requests() >= sims_before + 4)
        assert scrape(port)["wa_controller_mirror_statements_total"] == before
        assert {n: r["updated_at"] for n, r in rows(engine).items()} == stamps
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert "wa_controller_mirror_lag_seconds 0.0" in scraped
        assert "wa_controller_mirror_pending_rows 0.0" in scraped
        assert 'wa_controller_mirror_rows_written_total{operation="upsert"}' in scraped
        assert "wa_controller_mirror_resyncs_total" in scraped
    engine.dispose()


def test_a_database_outage_loses_nothing_and_resurrects_nothing(
    namespace: str, fleet: Fleet, accounts: Accounts, served: Served
) -> None:
    pg_url, postgres = served.url, served.server
    fleet.add("wa-0", auto_pair=0.2)
    fleet.add("wa-1", auto_pair=0.2)
    seed_sessions(fleet, accounts, {"wa-0": ["keep", "move", "drop"]})
    engine = engine_for(pg_url)
    with running_operator(operator_settings(namespace, database_url=pg_url,
                                            mirror_retry_max=1.0)):
        wait_for("3 rows mirrored",
                 lambda: all_connected(accounts, 3) and mirrors(engine, accounts))
        postgres.stop()
        try:
            accounts.create("born")
            fleet.simulators["wa-0"].move("move", fleet.simulators["wa-1"])
            accounts.custom.delete_namespaced_custom_object(
                "wa-controller.io", "v1alpha1", namespace, "waaccounts", "drop")
            wait_for("the new account to be placed while the database is down",
                     lambda: accounts.pod_of("born") and accounts.pod_of("move") == "wa-1")
            wait_for("Mirrored=False with the reason", lambda: condition(accounts, "born")
                     == ("False", "DatabaseUnavailable"))
        finally:
            postgres.start()
        wait_for("the table to converge", lambda: mirrors(engine, accounts), timeout=60)
        table = rows(engine)
        assert table["drop"]["deleted_at"] is not None
        assert table["move"]["assigned_pod"] == "wa-1"
        wait_for("Mirrored=True again", lambda: all(
            condition(accounts, n) == ("True", "RowWritten") for n in ("keep", "move", "born")))
    engine.dispose()


def test_a_resync_at_start_fixes_what_changed_while_the_operator_was_down(
    namespace: str, fleet: Fleet, accounts: Accounts, served: Served
) -> None:
    pg_url = served.url
    fleet.add("wa-0", auto_pair=0.2)
    seed_sessions(fleet, accounts, {"wa-0": ["a", "b", "c"]})
    engine = engine_for(pg_url)
    config = operator_settings(namespace, database_url=pg_url)
    with running_operator(config):
        wait_for("3 rows mirrored",
                 lambda: all_connected(accounts, 3) and mirrors(engine, accounts))
    accounts.custom.delete_namespaced_custom_object(
        "wa-controller.io", "v1alpha1", namespace, "waaccounts", "a")
    accounts.create("d")
    accounts.patch_spec("b", workspaceId="w-new")
    with engine.begin() as connection:  # and someone scribbled on the table
        connection.execute(MIRROR.update().where(MIRROR.c.name == "c").values(phase="Lost"))
    with running_operator(config):
        wait_for("the table to match the cluster", lambda: mirrors(engine, accounts))
        assert rows(engine)["a"]["deleted_at"] is not None
        assert rows(engine)["b"]["workspace_id"] == "w-new"
    engine.dispose()


def test_migrations_run_on_an_empty_database_and_on_the_previous_schema(
    database_url: str, table: sa.Engine
) -> None:
    upgrade(table, TABLE, "0001")
    with table.begin() as connection:
        connection.execute(MIRROR.insert().values(
            uid="u1", namespace="ns", name="old", session_id="s1", desired_state="Connected",
            updated_at=sa.func.current_timestamp()))
    upgrade(table, TABLE)
    upgrade(table, TABLE)  # idempotent

    inspector = sa.inspect(table)
    assert {c["name"] for c in inspector.get_columns(TABLE)} == {
        c.name for c in mirror_table(TABLE).columns}
    assert {i["name"] for i in inspector.get_indexes(TABLE)} == {
        f"ix_{TABLE}_account_uuid", f"ix_{TABLE}_session_id", f"ix_{TABLE}_owner_namespace"}
    assert rows(table)["old"]["session_id"] == "s1"


def test_a_listener_gets_one_notification_per_changed_row(
    namespace: str, fleet: Fleet, accounts: Accounts, postgres: Postgres, pg_database: str
) -> None:
    fleet.add("wa-0", auto_pair=0.2)
    url = postgres.url(database=pg_database)
    plain = postgres.url(database=pg_database, driver="postgresql")
    upgrade(engine_for(url), TABLE)
    with psycopg.connect(plain, autocommit=True) as db:  # PostgreSQL counts the row writes
        db.execute("CREATE TABLE row_writes (at timestamptz DEFAULT now())")
        db.execute("CREATE FUNCTION count_write() RETURNS trigger LANGUAGE plpgsql AS "
                   "$$ BEGIN INSERT INTO row_writes DEFAULT VALUES; RETURN NULL; END $$")
        db.execute(f"CREATE TRIGGER counted AFTER INSERT OR UPDATE ON {TABLE} "
                   "FOR EACH ROW EXECUTE FUNCTION count_write()")
    with psycopg.connect(plain, autocommit=True) as listener:
        listener.execute("LISTEN wa_accounts")
        with running_operator(operator_settings(namespace, database_url=url)):
            accounts.create("n1", accountUuid="uuid-1")
            engine = engine_for(url)
            wait_for("n1 Connected and mirrored",
                     lambda: all_connected(accounts, 1) and mirrors(engine, accounts))
            engine.dispose()
            received = [n.payload for n in listener.notifies(timeout=1, stop_after=50)]
        [(writes,)] = listener.execute("SELECT count(*) FROM row_writes").fetchall()
    assert writes >= 2  # created, then placed (then connected, unless batched together)
    assert len(received) == writes
    assert all('"accountUuid":"uuid-1"' in p and '"name":"n1"' in p for p in received)


@pytest.mark.parametrize("fault", ["unreachable", "wrong password", "no table privilege"])
def test_bad_database_configuration_is_reported_and_reconciling_goes_on(
    namespace: str, fleet: Fleet, accounts: Accounts, postgres: Postgres, pg_database: str,
    caplog: pytest.LogCaptureFixture, fault: str,
) -> None:
    url = {
        "unreachable": "postgresql+psycopg://wa:pw@127.0.0.1:1/nowhere",
        "wrong password": postgres.url(password="not-the-password", database=pg_database),
        "no table privilege": postgres.url(user="reader", password="reader-pw",
                                           database=pg_database),
    }[fault]
    reason = {"unreachable": "DatabaseUnavailable", "wrong password": "DatabaseAuthFailed",
              "no table privilege": "DatabasePermissionDenied"}[fault]
    if fault == "no table privilege":
        engine = engine_for(postgres.url(database=pg_database))
        upgrade(engine, TABLE)
        engine.dispose()
        postgres.sql("DO $$ BEGIN CREATE ROLE reader LOGIN PASSWORD 'reader-pw'; "
                     "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    fleet.add("wa-0", auto_pair=0.2)
    caplog.set_level(logging.ERROR, logger="wa_controller.mirror")
    port = free_port()
    with running_operator(operator_settings(namespace, database_url=url, database_migrate=False,
                                            mirror_retry_max=1.0, metrics_port=port)):
        accounts.create("acct")
        wait_for("the account Connected anyway", lambda: all_connected(accounts, 1))
        wait_for(f"Mirrored=False, {reason}",
                 lambda: condition(accounts, "acct") == ("False", reason), timeout=40)
        failures = scrape(port)[f'wa_controller_mirror_failures_total{{reason="{reason}"}}']
    logged = [r.getMessage() for r in caplog.records if r.name == "wa_controller.mirror"]
    assert any(reason in line for line in logged), logged
    assert failures > 0
    assert not any("not-the-password" in line for line in logged)
