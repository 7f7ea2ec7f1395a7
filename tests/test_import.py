"""`wa-controller import` against real databases (MariaDB, the seed's family; PostgreSQL;
SQLite), the real API server and kubectl, and the operator adopting what was imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, make_url, text

from controller.importer import SourceError, read_rows
from devtools.control_plane import ControlPlane
from devtools.harness import Accounts, Fleet, running_operator, wait_for
from devtools.harness import operator_settings as settings
from devtools.mariadb import ROOT_PASSWORD, MariaDB
from devtools.postgres import SUPERUSER_PASSWORD, Postgres
from devtools.seed_table import create_seed_table
from tests.conftest import Kubectl

# The seed's own examples: a local number, numbers without '+', a session id the CRD
# refuses, stale URLs.
SEED_ROWS = [
    {"uuid": "a-142", "workspace_id": 1, "phone_number": "0816108641",
     "session_id": "Shop_A1", "status": "connected",
     "assigned_instance_url": "http://localhost:3001"},
    {"uuid": "a-144", "workspace_id": 2, "phone_number": "62811801641",
     "session_id": "Shop_B1", "status": "connected",
     "assigned_instance_url": "http://localhost:3002"},
    {"uuid": "a-145", "workspace_id": 2, "phone_number": "62811111111",
     "session_id": "sesi baru!", "status": "qr_scanning",
     "assigned_instance_url": "http://localhost:3002"},
    {"uuid": "a-146", "workspace_id": 3, "phone_number": "62822222222",
     "session_id": "Shop_C1", "status": "qr_scanning",
     "assigned_instance_url": "http://localhost:3003"},
]


@pytest.fixture(params=["mariadb", "postgres", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "mariadb":
        return str(request.getfixturevalue("mariadb_database"))
    if request.param == "postgres":
        postgres: Postgres = request.getfixturevalue("postgres")
        return postgres.url(database=request.getfixturevalue("pg_database"))
    return f"sqlite:///{tmp_path / 'app.sqlite'}"


def statuses(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as db:
            return list(db.execute(text("SELECT status FROM whatsapp_accounts ORDER BY id"))
                        .scalars())
    finally:
        engine.dispose()


# --- reading the table -------------------------------------------------------------------


def test_rows_are_read_oldest_first_with_only_the_columns_imported(database_url: str) -> None:
    create_seed_table(database_url, SEED_ROWS)
    rows = read_rows(database_url, "whatsapp_accounts", None)
    assert rows == [
        {"id": i, "uuid": r["uuid"], "workspace_id": r["workspace_id"],
         "phone_number": r["phone_number"], "session_id": r["session_id"]}
        for i, r in enumerate(SEED_ROWS, start=1)]


@pytest.mark.parametrize(("where", "uuids"), [
    ("status = 'connected'", ["a-142", "a-144"]),
    ("phone_number LIKE '62%' AND status <> 'connected'", ["a-145", "a-146"]),
    # A colon is the user's, not a bind parameter; the filter is one group.
    ("assigned_instance_url = 'http://localhost:3002' OR session_id = 'x :y'",
     ["a-144", "a-145"]),
    ("workspace_id = 1 OR workspace_id = 3", ["a-142", "a-146"]),
])
def test_the_filter_is_the_users_sql_as_written(database_url: str, where: str,
                                                uuids: list[str]) -> None:
    create_seed_table(database_url, SEED_ROWS)
    assert [r["uuid"] for r in read_rows(database_url, "whatsapp_accounts", where)] == uuids


def test_a_filter_cannot_run_a_second_statement(database_url: str) -> None:
    create_seed_table(database_url, SEED_ROWS)
    with pytest.raises(SourceError):
        read_rows(database_url, "whatsapp_accounts",
                  "1=1; UPDATE whatsapp_accounts SET status = 'hacked'")
    assert "hacked" not in statuses(database_url)


def test_a_filter_cannot_write_through_a_function(mariadb_database: str,
                                                  mariadb: MariaDB, postgres: Postgres,
                                                  pg_database: str) -> None:
    """The read runs in a read-only transaction: a function that writes is refused."""
    create_seed_table(mariadb_database, SEED_ROWS)
    database = make_url(mariadb_database).database or ""
    mariadb.sql("CREATE FUNCTION bump() RETURNS INT MODIFIES SQL DATA BEGIN "
                "UPDATE whatsapp_accounts SET status = 'hacked'; RETURN 1; END", database)
    with pytest.raises(SourceError, match="READ ONLY"):
        read_rows(mariadb_database, "whatsapp_accounts", "bump() = 1")
    assert "hacked" not in statuses(mariadb_database)

    pg_url = postgres.url(database=pg_database)
    create_seed_table(pg_url, SEED_ROWS)
    postgres.sql("CREATE SEQUENCE counter", pg_database)
    with pytest.raises(SourceError, match="read-only transaction"):
        read_rows(pg_url, "whatsapp_accounts", "nextval('counter') > 0")


def test_what_cannot_be_read_is_said_without_the_password(mariadb: MariaDB,
                                                          mariadb_database: str) -> None:
    database = make_url(mariadb_database).database or ""
    cases = {
        mariadb.url(database, password="s3cret-pw"): "Access denied for user 'root'",
        mariadb_database.replace("mysql+pymysql://", "mysql+pymysql//"): "cannot be parsed",
        mariadb_database.replace("mysql+pymysql://", "mysql://"): "mysql+pymysql://",
        mariadb_database: "there is no table 'whatsapp_accounts'",
    }
    for url, said in cases.items():
        with pytest.raises(SourceError) as raised:
            read_rows(url, "whatsapp_accounts", None)
        assert said in str(raised.value)
        assert ROOT_PASSWORD not in str(raised.value)
        assert "s3cret-pw" not in str(raised.value)
    mariadb.sql("CREATE TABLE accounts (id INT PRIMARY KEY, phone VARCHAR(20))", database)
    with pytest.raises(SourceError, match=r"has no session_id column \(its columns: id, phone\)"):
        read_rows(mariadb_database, "accounts", None)


# --- the command ---------------------------------------------------------------------------

def wa_import(*args: str, url: str, kubeconfig: Path | None = None
              ) -> subprocess.CompletedProcess[str]:
    """`wa-controller import`, the database URL in the environment as the README says."""
    env = {**os.environ, "WA_DATABASE_URL": url}
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.run([sys.executable, "-m", "controller", "import", *args],
                          capture_output=True, text=True, timeout=60, env=env, check=False)


@pytest.fixture
def seeded(mariadb_database: str) -> str:
    create_seed_table(mariadb_database, SEED_ROWS)
    return mariadb_database


@pytest.mark.integration
def test_imported_accounts_are_adopted_where_they_run_with_zero_starts(
    seeded: str, namespace: str, kubectl: Kubectl, fleet: Fleet, accounts: Accounts,
) -> None:
    # The sessions run already: the seed's instances hold them (its URLs are stale).
    for pod in ("wa-0", "wa-1"):
        fleet.add(pod)
    fleet.simulators["wa-0"].put("Shop_A1", "working", quiet=True)
    fleet.simulators["wa-1"].put("Shop_B1", "working", quiet=True)
    fleet.simulators["wa-1"].put("Shop_C1", "pairing", quiet=True)

    unconverted = wa_import("--namespace", namespace, url=seeded)
    assert unconverted.returncode == 1
    assert "wa-controller: skipped id=1: phone_number '0816108641' is a local number" \
        in unconverted.stderr
    assert "wa-controller: skipped id=3: session_id 'sesi baru!' is refused" \
        in unconverted.stderr
    assert "2 of 4 rows imported, 2 skipped" in unconverted.stderr

    result = wa_import("--namespace", namespace, "--default-country-code", "62", url=seeded)
    assert result.returncode == 1, result.stderr
    assert "skipped id=3: session_id 'sesi baru!'" in result.stderr
    assert "3 of 4 rows imported, 1 skipped" in result.stderr
    manifests = list(yaml.safe_load_all(result.stdout))
    assert [(m["metadata"]["name"], m["spec"]["sessionId"], m["spec"].get("phoneNumber"))
            for m in manifests] == [("shop-a1", "Shop_A1", "+62816108641"),
                                    ("shop-b1", "Shop_B1", "62811801641"),
                                    ("shop-c1", "Shop_C1", "62822222222")]
    applied = kubectl.apply(result.stdout)
    assert applied.stdout.count("created") == 3, applied.stdout

    with running_operator(settings(namespace)):
        wait_for("every imported account adopted where its session runs", lambda: {
            name: (a.get("status", {}).get("phase"), (a.get("status", {}).get("instance")
                                                      or {}).get("pod"))
            for name, a in accounts.all().items()} == {
                "shop-a1": ("Connected", "wa-0"), "shop-b1": ("Connected", "wa-1"),
                "shop-c1": ("Pairing", "wa-1")})
    for pod, sim in fleet.simulators.items():
        starts = sim.starts()
        assert (starts["creates"], starts["restores"], starts["stops"]) == (0, 0, 0), \
            f"{pod}: {starts}"
    for name in ("shop-a1", "shop-b1", "shop-c1"):
        assert "startAttempts" not in accounts.status(name)
        assert "Placed" not in [r for _, r, _ in accounts.events(fleet.core, name)]


@pytest.mark.integration
def test_apply_creates_the_accounts_and_never_changes_existing_ones(
    seeded: str, namespace: str, control_plane: ControlPlane, accounts: Accounts,
) -> None:
    accounts.create("shop-c1", session="Shop_C2")  # the name, taken by another session
    args = ("--apply", "--namespace", namespace, "--default-country-code", "+62")
    first = wa_import(*args, url=seeded, kubeconfig=control_plane.kubeconfig)
    assert first.returncode == 1, first.stderr
    assert first.stdout.splitlines() == ["waaccount.wa-controller.io/shop-a1 created",
                                         "waaccount.wa-controller.io/shop-b1 created"]
    assert "skipped id=4: the WAAccount shop-c1 exists for another session ('Shop_C2')" \
        in first.stderr
    assert "2 of 4 rows imported, 2 skipped" in first.stderr
    assert accounts.get("shop-a1")["spec"] == {
        "sessionId": "Shop_A1", "phoneNumber": "+62816108641", "workspaceId": "1",
        "accountUuid": "a-142", "desiredState": "Connected"}
    accounts.patch_spec("shop-b1", desiredState="Stopped")  # a person's change after import

    again = wa_import(*args, url=seeded, kubeconfig=control_plane.kubeconfig)
    assert again.stdout.splitlines() == [
        "waaccount.wa-controller.io/shop-a1 unchanged (it exists)",
        "waaccount.wa-controller.io/shop-b1 unchanged (it exists)"]
    assert accounts.get("shop-b1")["spec"]["desiredState"] == "Stopped"
    assert sorted(accounts.all()) == ["shop-a1", "shop-b1", "shop-c1"]


@pytest.mark.integration
def test_the_command_says_what_is_wrong_without_a_traceback_or_a_secret(
    seeded: str, mariadb: MariaDB, tmp_path: Path, unanswered_kubeconfig: Path,
) -> None:
    database = make_url(seeded).database or ""
    wrong = wa_import(url=mariadb.url(database, password="s3cret-pw"))
    assert wrong.returncode == 2
    assert wrong.stderr.startswith("wa-controller: cannot read the table 'whatsapp_accounts': "
                                   "(1045, \"Access denied for user 'root'")
    missing = wa_import("--table", "accounts", url=seeded)
    assert missing.returncode == 2
    assert "there is no table 'accounts'" in missing.stderr
    no_cluster = wa_import("--apply", "--default-country-code", "62", url=seeded,
                           kubeconfig=tmp_path / "absent")
    assert no_cluster.returncode == 2
    assert "no Kubernetes configuration found" in no_cluster.stderr
    silent = wa_import("--apply", "--namespace", "x", "--default-country-code", "62",
                       url=seeded, kubeconfig=unanswered_kubeconfig)
    assert silent.returncode == 2
    assert "wa-controller: the API server did not answer: Cannot connect to host" \
        in silent.stderr
    bad_code = wa_import("--default-country-code", "sixtytwo", url=seeded)
    assert bad_code.returncode == 2
    assert "'sixtytwo' is not a country calling code" in bad_code.stderr
    for result in (wrong, missing, no_cluster, silent, bad_code):
        assert "Traceback" not in result.stderr
        for secret in ("s3cret-pw", ROOT_PASSWORD, SUPERUSER_PASSWORD):
            assert secret not in result.stdout + result.stderr
