"""The instance's own session status, and indexes for the lookups applications make."""

import sqlalchemy as sa
from alembic import context, op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    table = context.config.attributes["table_name"]
    op.add_column(table, sa.Column("session_status", sa.String(64)))
    op.create_index(f"ix_{table}_account_uuid", table, ["account_uuid"])
    op.create_index(f"ix_{table}_session_id", table, ["session_id"])
