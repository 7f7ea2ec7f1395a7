"""The mirror's database side: SQLAlchemy Core on a blocking driver, so every call here
runs on one worker thread (see `Mirror`), never on the event loop."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from controller import metrics
from controller.mirror.rows import MirrorRow, StoredRow
from controller.mirror.schema import mirror_table

_NOTIFY = text("SELECT pg_notify(:channel, payload) "
               "FROM unnest(CAST(:payloads AS text[])) AS payload")
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def engine_for(url: str, *, connect_timeout: int = 5) -> Engine:
    """An engine that gives up connecting after `connect_timeout` seconds."""
    if url.startswith("sqlite"):
        return create_engine(url, connect_args={"timeout": connect_timeout})
    return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=0,
                         connect_args={"connect_timeout": connect_timeout})


def upgrade(engine: Engine, table_name: str, revision: str = "head") -> None:
    """Apply the migrations (creating the table on an empty database)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["table_name"] = table_name
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


class MirrorStore:
    """Reads and writes the mirror table, counting the statements it sends."""

    def __init__(self, engine: Engine, table_name: str, notify_channel: str | None) -> None:
        self.engine = engine
        self.table = mirror_table(table_name)
        self._notify_channel = notify_channel if engine.dialect.name == "postgresql" else None
        event.listen(engine, "before_cursor_execute", self._count)

    @staticmethod
    def _count(*_: object) -> None:
        metrics.MIRROR_STATEMENTS.inc()

    def load(self) -> dict[str, StoredRow]:
        columns = [c.name for c in self.table.columns if c.name not in ("updated_at", "deleted_at")]
        with self.engine.connect() as connection:
            rows = connection.execute(select(self.table)).mappings().all()
        return {row["uid"]: StoredRow(MirrorRow(**{c: row[c] for c in columns}),
                                      row["deleted_at"]) for row in rows}

    def write(self, upserts: Sequence[MirrorRow], deletes: Sequence[MirrorRow],
              now: datetime) -> None:
        """Upsert and soft-delete in one transaction; NOTIFY each row at commit."""
        with self.engine.begin() as connection:
            if upserts:
                insert = (postgresql.insert if self.engine.dialect.name == "postgresql"
                          else sqlite.insert)(self.table)
                changing = [c.name for c in self.table.columns if c.name != "uid"]
                connection.execute(
                    insert.on_conflict_do_update(
                        index_elements=["uid"],
                        set_={name: insert.excluded[name] for name in changing}),
                    [{**row.values(), "updated_at": now, "deleted_at": None} for row in upserts],
                )
            if deletes:
                connection.execute(
                    update(self.table)
                    .where(self.table.c.uid.in_([row.uid for row in deletes]),
                           self.table.c.deleted_at.is_(None))
                    .values(deleted_at=now, updated_at=now))
            if self._notify_channel and (upserts or deletes):
                payloads = [row.notification("upsert") for row in upserts]
                payloads += [row.notification("delete") for row in deletes]
                connection.execute(_NOTIFY, {"channel": self._notify_channel,
                                             "payloads": payloads})

    def dispose(self) -> None:
        self.engine.dispose()
