"""The mirror writing into the application's own table (the seed's `whatsapp_accounts`):
the URL and the status word of the rows it already has, matched by session id, on
MariaDB, PostgreSQL and SQLite; no other column or row touched, missing rows reported and
never created."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from kubernetes import client as k8s

from controller.mirror import engine_for
from devtools.control_plane import free_port
from devtools.harness import Accounts, Fleet, all_connected, running_operator, scrape, wait_for
from devtools.harness import operator_settings as settings
from devtools.postgres import Postgres
from devtools.seed_table import create_seed_table, seed_table
from tests.test_mirror import condition

pytestmark = pytest.mark.integration
TABLE = seed_table()


@pytest.fixture(params=["mariadb", "postgresql", "sqlite"])
def app_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'app.sqlite'}"
    if request.param == "mariadb":
        return str(request.getfixturevalue("mariadb_database"))
    postgres: Postgres = request.getfixturevalue("postgres")
    return postgres.url(database=request.getfixturevalue("pg_database"))


def seed_row(session: str, **values: Any) -> dict[str, Any]:
    return {"uuid": f"uuid-{session}", "workspace_id": 7, "phone_number": "0816123",
            "session_id": session, "status": "pending", **values}


def table_rows(engine: sa.Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as db:
        return {row["session_id"]: dict(row)
                for row in db.execute(sa.select(TABLE)).mappings()}


def test_the_application_table_gets_url_and_status_and_nothing_else(
    namespace: str, fleet: Fleet, accounts: Accounts, core: k8s.CoreV1Api, app_url: str
) -> None:
    create_seed_table(app_url, [
        seed_row("s1"), seed_row("s2"),
        seed_row("theirs", status="connected", assigned_instance_url="http://10.9.9.9:3000"),
    ])
    engine = engine_for(app_url)
    before = table_rows(engine)
    fleet.add("wa-0", auto_pair=0.2)
    fleet.add("wa-1", auto_pair=0.2)
    for session in ("s1", "s2", "s3"):
        accounts.create(session)
    port = free_port()
    config = settings(namespace, database_url=app_url, mirror_mode="application",
                      mirror_resync_interval=2.0, metrics_port=port)

    def shows_accounts(*names: str) -> bool:
        rows = table_rows(engine)
        return all((rows[n]["assigned_instance_url"], rows[n]["status"]) == (
            accounts.status(n)["instance"]["url"], "connected") for n in names)

    with running_operator(config):
        wait_for("s1 and s2 Connected", lambda: all_connected(accounts, 3))
        wait_for("their rows showing their URL and status", lambda: shows_accounts("s1", "s2"))
        rows = table_rows(engine)
        untouched = ("id", "uuid", "workspace_id", "phone_number", "created_at", "updated_at")
        for name in ("s1", "s2"):
            assert {k: rows[name][k] for k in untouched} == {
                k: before[name][k] for k in untouched}
        assert rows["theirs"] == before["theirs"]
        assert set(rows) == {"s1", "s2", "theirs"}  # no row created for s3

        # s3 has no row: said, never created.
        wait_for("s3 Mirrored=False, row missing",
                 lambda: condition(accounts, "s3") == ("False", "ApplicationRowMissing"))
        wait_for("a Warning event on s3", lambda: "ApplicationRowMissing" in [
            reason for _, reason, _ in accounts.events(core, "s3")])
        assert scrape(port)["wa_controller_mirror_missing_rows"] == 1.0
        assert condition(accounts, "s1") == ("True", "RowWritten")

        # The application creates it: the next resync fills it.
        with engine.begin() as db:
            db.execute(TABLE.insert().values(**seed_row("s3")))
        wait_for("s3's new row filled", lambda: shows_accounts("s3"), timeout=15)
        wait_for("s3 Mirrored=True", lambda: condition(accounts, "s3") == ("True", "RowWritten"))
        assert [reason for _, reason, _ in accounts.events(core, "s3")].count(
            "ApplicationRowMissing") == 1  # said once, not at every resync
        assert scrape(port)["wa_controller_mirror_missing_rows"] == 0.0

        # A session that moves has its URL follow; a deleted account leaves its row be.
        s1_pod = accounts.pod_of("s1")
        other = "wa-1" if s1_pod == "wa-0" else "wa-0"
        fleet.simulators[s1_pod].move("s1", fleet.simulators[other])
        wait_for("s1's URL following it", lambda: table_rows(engine)["s1"][
            "assigned_instance_url"] == fleet.simulators[other].url)
        s2_row = table_rows(engine)["s2"]
        accounts.custom.delete_namespaced_custom_object(
            "wa-controller.io", "v1alpha1", namespace, "waaccounts", "s2")
        wait_for("s2 gone from the API", lambda: "s2" not in accounts.all())
        assert table_rows(engine)["s2"] == s2_row
    engine.dispose()


def test_an_application_table_without_the_configured_column_is_reported(
    namespace: str, fleet: Fleet, accounts: Accounts, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'app.sqlite'}"
    create_seed_table(url, [seed_row("s1")])
    fleet.add("wa-0", auto_pair=0.2)
    accounts.create("s1")
    config = settings(namespace, database_url=url, mirror_mode="application",
                      application_url_column="instance_address")
    with running_operator(config):
        wait_for("s1 Connected all the same", lambda: all_connected(accounts, 1))
        wait_for("Mirrored=False naming the column", lambda: condition(accounts, "s1") == (
            "False", "ApplicationTableMissing"))
        message = next(c["message"] for c in accounts.status("s1")["conditions"]
                       if c["type"] == "Mirrored")
        assert message == ("the application table 'whatsapp_accounts' has no column "
                           "'instance_address'")
