"""The mirror table, as the first release wrote it (no session status, no lookup indexes)."""

import sqlalchemy as sa
from alembic import context, op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        context.config.attributes["table_name"],
        sa.Column("uid", sa.String(36), primary_key=True),
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("account_uuid", sa.String(64)),
        sa.Column("session_id", sa.String(128), nullable=False),
        sa.Column("phone_number", sa.String(16)),
        sa.Column("workspace_id", sa.String(64)),
        sa.Column("desired_state", sa.String(16), nullable=False),
        sa.Column("phase", sa.String(16)),
        sa.Column("assigned_pod", sa.String(253)),
        sa.Column("instance_url", sa.String(512)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
    )
