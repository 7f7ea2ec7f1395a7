"""Alembic environment: the connection and the table name come from the caller
(`controller.mirror.store.upgrade`), never from an alembic.ini."""

from alembic import context

config = context.config
table_name = config.attributes["table_name"]
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    version_table=f"{table_name}_version",
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
