"""Which installation owns each row: an operator touches only its own rows, so several
installations can share one database. Existing rows have none until the installation
serving their namespace adopts them at its next resync."""

import sqlalchemy as sa
from alembic import context, op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    table = context.config.attributes["table_name"]
    op.add_column(table, sa.Column("owner", sa.String(128)))
    op.create_index(f"ix_{table}_owner_namespace", table, ["owner", "namespace"])
