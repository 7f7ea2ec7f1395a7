"""The test MariaDB (devtools/mariadb.py): a real server of the seed's database family,
reached through SQLAlchemy with the driver the project ships (PyMySQL)."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import OperationalError

from devtools.mariadb import MariaDB


def test_a_fresh_database_is_empty_and_keeps_unicode(mariadb_database: str) -> None:
    engine = create_engine(mariadb_database)
    try:
        with engine.begin() as db:
            assert "MariaDB" in db.execute(text("SELECT VERSION()")).scalar_one()
            assert db.execute(text("SHOW TABLES")).all() == []
            db.execute(text("CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(64))"))
            db.execute(text("INSERT INTO t VALUES (1, :name)"), {"name": "Toko Sejahtera 🛒"})
        with engine.connect() as db:
            assert db.execute(text("SELECT name FROM t")).scalar_one() == "Toko Sejahtera 🛒"
    finally:
        engine.dispose()


def test_each_test_gets_its_own_database(mariadb: MariaDB, mariadb_database: str) -> None:
    name = make_url(mariadb_database).database
    databases = {row[0] for row in mariadb.sql("SHOW DATABASES")}
    assert name in databases
    assert not any(str(d).startswith("t_") and d != name for d in databases), databases


def test_a_wrong_password_is_refused(mariadb: MariaDB, mariadb_database: str) -> None:
    name = make_url(mariadb_database).database or ""
    engine = create_engine(mariadb.url(name, password="not-the-password"))
    with pytest.raises(OperationalError, match="Access denied"), engine.connect():
        pass
    engine.dispose()


def test_the_server_stops_and_comes_back_on_its_data(mariadb: MariaDB,
                                                     mariadb_database: str) -> None:
    engine = create_engine(mariadb_database, pool_pre_ping=True)
    with engine.begin() as db:
        db.execute(text("CREATE TABLE t (id INT PRIMARY KEY)"))
        db.execute(text("INSERT INTO t VALUES (7)"))
    mariadb.stop()
    try:
        with pytest.raises(OperationalError), engine.connect() as db:
            db.execute(text("SELECT 1"))
    finally:
        mariadb.start()
    with engine.connect() as db:
        assert db.execute(text("SELECT id FROM t")).scalar_one() == 7
    engine.dispose()
