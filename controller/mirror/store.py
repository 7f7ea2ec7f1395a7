"""The mirror's database side: SQLAlchemy Core on a blocking driver, so every call here
runs on one worker thread (see `Mirror`), never on the event loop.

Two tables speak one interface (`prepare`, `project`, `resync`, `write`): the mirror's own
table (`MirrorStore`, one row per account, migrated by the operator), or the
application's existing table (`ApplicationStore`: configured columns of the rows it
already has, matched by session id; never created, migrated, inserted or deleted)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Column,
    ColumnElement,
    Engine,
    Table,
    bindparam,
    create_engine,
    event,
    func,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from controller import metrics
from controller.mirror.rows import (
    ApplicationTableError,
    AppValues,
    MirrorRow,
    StatusWords,
    StoredRow,
    app_values,
    deleted_sessions,
    plan_application,
    plan_resync,
)
from controller.mirror.schema import application_table, mirror_table

_NOTIFY = text("SELECT pg_notify(:channel, payload) "
               "FROM unnest(CAST(:payloads AS text[])) AS payload")
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
MYSQL_CHUNK = 500  # rows per multi-row upsert statement


def engine_for(url: str, *, connect_timeout: int = 5) -> Engine:
    """An engine that gives up connecting after `connect_timeout` seconds."""
    if url.startswith("sqlite"):
        return create_engine(url, connect_args={"timeout": connect_timeout})
    return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=0,
                         connect_args={"connect_timeout": connect_timeout})


@dataclass
class Synced:
    """What a resync found and did, for the shell to record and report."""

    upserts: int = 0
    deletes: int = 0
    foreign: dict[str, str] = field(default_factory=dict)  # uid -> owner of its row
    missing: set[str] = field(default_factory=set)  # uids whose application row is absent
    deleted_sessions: set[tuple[str, str, str | None]] = field(default_factory=set)


def _counted(engine: Engine) -> None:
    """Count every statement sent (the steady state must send none)."""
    event.listen(engine, "before_cursor_execute",
                 lambda *_: metrics.MIRROR_STATEMENTS.inc())


def upgrade(engine: Engine, table_name: str, revision: str = "head") -> None:
    """Apply the migrations (creating the table on an empty database)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["table_name"] = table_name
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


class MirrorStore:
    """Reads and writes this installation's rows of the mirror table. `owner` names the
    installation; `namespaces` are those it serves (empty: all). Rows another installation
    owns are read (to be reported) and never written: every write is guarded by the row's
    owner in SQL, not only in memory."""

    def __init__(self, engine: Engine, table_name: str, notify_channel: str | None, *,
                 owner: str, namespaces: Sequence[str] = ()) -> None:
        self.engine = engine
        self.table = mirror_table(table_name)
        self.owner = owner
        self._namespaces = list(namespaces)
        self._notify_channel = notify_channel if engine.dialect.name == "postgresql" else None
        _counted(engine)

    def prepare(self, migrate: bool) -> None:
        if migrate:
            upgrade(self.engine, self.table.name)

    @staticmethod
    def project(row: MirrorRow) -> Hashable:
        """What the table holds of an account: the whole row."""
        return row

    def resync(self, accounts: Mapping[str, MirrorRow], now: datetime) -> Synced:
        table = self.load()
        plan = plan_resync(accounts, table, self.owner)
        if plan.upserts or plan.deletes:
            self.write(plan.upserts, plan.deletes, now)
        return Synced(upserts=len(plan.upserts), deletes=len(plan.deletes),
                      foreign=plan.foreign,
                      deleted_sessions=deleted_sessions(accounts, table, self.owner))

    def _ours(self) -> ColumnElement[bool]:
        return or_(self.table.c.owner == self.owner, self.table.c.owner.is_(None))

    def load(self) -> dict[str, StoredRow]:
        """Every row of the served namespaces, whoever owns it (one statement)."""
        columns = [c.name for c in self.table.columns
                   if c.name not in ("updated_at", "deleted_at", "owner")]
        query = select(self.table)
        if self._namespaces:
            query = query.where(self.table.c.namespace.in_(self._namespaces))
        with self.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return {row["uid"]: StoredRow(MirrorRow(**{c: row[c] for c in columns}),
                                      row["deleted_at"], row["owner"]) for row in rows}

    def write(self, upserts: Sequence[MirrorRow], deletes: Sequence[MirrorRow],
              now: datetime) -> set[str]:
        """Upsert and soft-delete our rows in one transaction; NOTIFY each row at commit.
        Returns the accounts left unwritten: none (a row is created when missing)."""
        table = self.table
        if self.engine.dialect.name == "mysql":
            now = now.replace(tzinfo=None)  # DATETIME holds UTC without an offset
        with self.engine.begin() as connection:
            values = [{**row.values(), "updated_at": now, "deleted_at": None,
                       "owner": self.owner} for row in upserts]
            if values and self.engine.dialect.name == "mysql":
                # One multi-row statement per chunk: PyMySQL's executemany misreads an
                # ON DUPLICATE KEY UPDATE that has VALUES() and parameters in it.
                for start in range(0, len(values), MYSQL_CHUNK):
                    connection.execute(self._mysql_upsert(values[start:start + MYSQL_CHUNK]))
            elif values:
                connection.execute(self._upsert(), values)
            if deletes:
                connection.execute(
                    update(table)
                    .where(table.c.uid.in_([row.uid for row in deletes]),
                           table.c.deleted_at.is_(None), self._ours())
                    .values(deleted_at=now, updated_at=now, owner=self.owner))
            if self._notify_channel and (upserts or deletes):
                payloads = [row.notification("upsert") for row in upserts]
                payloads += [row.notification("delete") for row in deletes]
                connection.execute(_NOTIFY, {"channel": self._notify_channel,
                                             "payloads": payloads})
        return set()

    def _upsert(self) -> Insert:
        """Insert, or update a row we own (one of another installation is left as it is)."""
        changing = [c.name for c in self.table.columns if c.name != "uid"]
        insert = (postgresql.insert if self.engine.dialect.name == "postgresql"
                  else sqlite.insert)(self.table)
        return insert.on_conflict_do_update(
            index_elements=["uid"], set_={name: insert.excluded[name] for name in changing},
            where=self._ours())

    def _mysql_upsert(self, values: list[dict[str, Any]]) -> Insert:
        """The same for MySQL, which has no WHERE there: each column keeps its value unless
        the row is ours, and `owner` is assigned last (later assignments see earlier ones)."""
        table, ours = self.table, self._ours()
        insert = mysql.insert(table).values(values)
        changing = [c.name for c in table.columns if c.name not in ("uid", "owner")]
        return insert.on_duplicate_key_update([
            *((name, func.if_(ours, insert.inserted[name], table.c[name])) for name in changing),
            ("owner", func.if_(ours, insert.inserted.owner, table.c.owner))])

    def dispose(self) -> None:
        self.engine.dispose()


class ApplicationStore:
    """The application's own table (the seed's `whatsapp_accounts`): only the configured
    columns of rows it already has, matched by `key_column` = the session id. Rows of
    sessions this installation does not serve are never read or written."""

    def __init__(self, engine: Engine, table_name: str, *, key_column: str, url_column: str,
                 status_column: str | None, words: StatusWords | None) -> None:
        self.engine = engine
        self._names = (table_name, key_column, url_column, status_column)
        self._words = words if status_column else None
        self.table: Table = application_table(table_name, key_column, url_column,
                                              status_column)
        _counted(engine)

    def prepare(self, migrate: bool) -> None:
        """Check the table and its columns are there (never create or migrate them)."""
        table_name, *columns = self._names
        try:
            present = {c["name"] for c in inspect(self.engine).get_columns(table_name)}
        except Exception as error:
            if "does not exist" in str(error).lower() or type(error).__name__ == \
                    "NoSuchTableError":
                raise ApplicationTableError(f"the application table {table_name!r} does "
                                            "not exist") from None
            raise
        absent = [c for c in columns if c and c not in present]
        if absent:
            raise ApplicationTableError(f"the application table {table_name!r} has no "
                                        f"column {', '.join(map(repr, absent))}")

    def project(self, row: MirrorRow) -> Hashable:
        """What the application's table holds of an account: its URL and its word."""
        return app_values(row, self._words)

    def resync(self, accounts: Mapping[str, MirrorRow], now: datetime) -> Synced:
        table = self._load({row.session_id for row in accounts.values()})
        plan = plan_application(accounts, table, self._words)
        self._update(plan.updates)
        return Synced(upserts=len(plan.updates), missing=set(plan.missing))

    def write(self, upserts: Sequence[MirrorRow], deletes: Sequence[MirrorRow],
              now: datetime) -> set[str]:
        """Update the rows of changed accounts; deleted accounts leave their row as it
        is. Returns the accounts whose row the application lacks."""
        present = self._load({row.session_id for row in upserts})
        self._update([(row.session_id, app_values(row, self._words))
                      for row in upserts if row.session_id in present])
        return {row.uid for row in upserts if row.session_id not in present}

    def _load(self, keys: set[str]) -> dict[str, AppValues]:
        """The rows of these sessions (in chunks: one statement per 1,000 keys)."""
        key, url, status = self._columns()
        found: dict[str, AppValues] = {}
        ordered = sorted(keys)
        with self.engine.connect() as connection:
            for start in range(0, len(ordered), 1000):
                query = select(*(c for c in (key, url, status) if c is not None)).where(
                    key.in_(ordered[start:start + 1000]))
                for row in connection.execute(query):
                    found[str(row[0])] = AppValues(row[1],
                                                   row[2] if status is not None else None)
        return found

    def _update(self, updates: Sequence[tuple[str, AppValues]]) -> None:
        if not updates:
            return
        key, url, status = self._columns()
        values = {url.name: bindparam("new_url")}
        if status is not None:
            values[status.name] = bindparam("new_status")
        with self.engine.begin() as connection:
            connection.execute(
                update(self.table).where(key == bindparam("session")).values(values),
                [{"session": session, "new_url": wanted.url,
                  **({"new_status": wanted.status} if status is not None else {})}
                 for session, wanted in updates])

    def _columns(self) -> tuple[Column[Any], Column[Any], Column[Any] | None]:
        _, key, url, status = self._names
        columns = self.table.c
        return columns[key], columns[url], columns[status] if status else None

    def dispose(self) -> None:
        self.engine.dispose()
