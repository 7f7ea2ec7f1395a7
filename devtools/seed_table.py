"""The seed application's accounts table (Laravel's `whatsapp_accounts`), as its migration
creates it, for tests of `wa-controller import` and of writing into the application's table.
SQLAlchemy Core, so one definition serves MySQL/MariaDB, PostgreSQL and SQLite."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    func,
)


def seed_table(name: str = "whatsapp_accounts", metadata: MetaData | None = None) -> Table:
    return Table(
        name, metadata or MetaData(),
        # BIGINT UNSIGNED AUTO_INCREMENT in Laravel; INTEGER keeps SQLite's rowid alias.
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
               autoincrement=True),
        Column("uuid", String(36), nullable=False),
        Column("user_id", BigInteger, nullable=True),
        Column("workspace_id", BigInteger, nullable=False),
        Column("phone_number", String(50), nullable=True),
        Column("session_id", String(255), nullable=True),
        Column("status", String(32), nullable=False, server_default="pending"),
        Column("assigned_instance_url", String(255), nullable=True),
        Column("created_at", DateTime, server_default=func.now()),
        Column("updated_at", DateTime, server_default=func.now()),
    )


def create_seed_table(url: str, rows: Iterable[Mapping[str, Any]],
                      name: str = "whatsapp_accounts") -> None:
    """Create the table in the database at `url` and insert `rows`, in order."""
    table = seed_table(name)
    engine = create_engine(url)
    try:
        table.metadata.create_all(engine)
        with engine.begin() as connection:
            for row in rows:
                connection.execute(table.insert().values(**row))
    finally:
        engine.dispose()
