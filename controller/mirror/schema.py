"""The mirror table as the code writes it. Migrations (controller/migrations) create and
evolve it; a test checks that their head equals this definition."""

from __future__ import annotations

import re

from sqlalchemy import Column, DateTime, Index, MetaData, String, Table

IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def mirror_table(name: str, metadata: MetaData | None = None) -> Table:
    if not IDENTIFIER.match(name):
        raise ValueError(f"mirror table name {name!r} is not a plain lower-case SQL identifier")
    return Table(
        name, metadata or MetaData(),
        Column("uid", String(36), primary_key=True),
        Column("namespace", String(63), nullable=False),
        Column("name", String(253), nullable=False),
        Column("account_uuid", String(64)),
        Column("session_id", String(128), nullable=False),
        Column("phone_number", String(16)),
        Column("workspace_id", String(64)),
        Column("desired_state", String(16), nullable=False),
        Column("phase", String(16)),
        Column("session_status", String(64)),
        Column("assigned_pod", String(253)),
        Column("instance_url", String(512)),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        Column("deleted_at", DateTime(timezone=True)),
        Column("owner", String(128)),
        Index(f"ix_{name}_account_uuid", "account_uuid"),
        Index(f"ix_{name}_session_id", "session_id"),
        Index(f"ix_{name}_owner_namespace", "owner", "namespace"),
    )


def application_table(name: str, key: str, url: str, status: str | None) -> Table:
    """The columns of the application's own table the mirror reads and writes (the table
    is the application's: nothing here creates or migrates it)."""
    for identifier in (name, key, url, status):
        if identifier is not None and not IDENTIFIER.match(identifier):
            raise ValueError(f"{identifier!r} is not a plain lower-case SQL identifier")
    columns = [Column(key, String(255), primary_key=True), Column(url, String(512))]
    if status:
        columns.append(Column(status, String(64)))
    return Table(name, MetaData(), *columns)
