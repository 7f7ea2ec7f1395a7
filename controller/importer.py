"""`wa-controller import`: the application's accounts table (the seed's
`whatsapp_accounts`) as WAAccounts.

The conversion is pure: `convert` turns one row into a manifest or a refusal, `plan` does
the whole table (one account per session, one name per account). A value the CRD would
refuse is reported with its row and skipped, never changed to fit; the one conversion made,
a local phone number to E.164, needs the country code said explicitly.

What the operator needs to adopt a session where it runs instead of starting it again: an
account naming exactly that session (so a session id the CRD refuses is skipped, never
renamed), in the namespace of the instance pods that run it, wanting it Connected, with its
workspace (blazz keys stored logins by workspace). It probes every instance pod before it
decides anything, finds the session there and records that pod: the row's
`assigned_instance_url` is the seed's belief, often stale after a restart, and is not needed.

The shell reads the table through SQLAlchemy in a read-only transaction and prints YAML,
or creates the accounts through the API server (`--apply`), never changing existing ones.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError
from sqlalchemy import MetaData, Table, select, text
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, NoSuchTableError, SQLAlchemyError

from controller import api
from controller.kubeconfig import api_message, connect
from controller.mirror import engine_for

SESSION_COLUMN = "session_id"
PHONE_COLUMN = "phone_number"
WORKSPACE_COLUMN = "workspace_id"
# The application's own key for the account: its uuid, else its numeric id.
KEY_COLUMNS = ("uuid", "id")
COLUMNS = (SESSION_COLUMN, PHONE_COLUMN, WORKSPACE_COLUMN, *KEY_COLUMNS)

# Where each spec field comes from, to name the column in a refusal.
_SOURCE = {"sessionId": SESSION_COLUMN, "phoneNumber": PHONE_COLUMN,
           "workspaceId": WORKSPACE_COLUMN, "accountUuid": "uuid/id"}
_COUNTRY_CODE = re.compile(r"^\+?([1-9][0-9]{0,2})$")
_NAME_MAX = 63  # a DNS label: also fits wherever the name becomes a label value


@dataclass(frozen=True)
class Imported:
    """A row that becomes a WAAccount."""

    row: str  # how the row is named to the user, e.g. "id=142"
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])

    @property
    def session_id(self) -> str:
        return str(self.manifest["spec"]["sessionId"])


@dataclass(frozen=True)
class Refusal:
    """A row that is skipped, and why."""

    row: str
    reason: str

    def __str__(self) -> str:
        return f"{self.row}: {self.reason}"


@dataclass(frozen=True)
class ImportPlan:
    imported: list[Imported] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)


def country_code(value: str) -> str:
    """The digits of a calling code given as `62` or `+62` (argparse type)."""
    match = _COUNTRY_CODE.match(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a country calling code (1 to 3 digits, e.g. 62)")
    return match.group(1)


def row_label(row: Mapping[str, Any], position: int) -> str:
    """The row as the user finds it in their table: by key, else by position."""
    for column in (*reversed(KEY_COLUMNS), SESSION_COLUMN):
        if row.get(column) not in (None, ""):
            return f"{column}={row[column]}"
    return f"row {position}"


def account_name(session_id: str) -> str:
    """A WAAccount name from a session id: lower case, `_` and `.` as `-`; a long id is
    cut and given a hash of the whole, so two long ids never share a name."""
    name = re.sub(r"[^a-z0-9-]+", "-", session_id.lower()).strip("-")
    if len(name) > _NAME_MAX:
        digest = hashlib.sha256(session_id.encode()).hexdigest()[:8]
        name = f"{name[:_NAME_MAX - 9].rstrip('-')}-{digest}"
    return name


def _text(value: Any) -> str | None:
    """A column value as the API's string, or None when absent. Numbers are written out
    (a numeric workspace_id 17 is "17"); nothing else is changed."""
    if value is None or value == "":
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _phone(raw: str | None, default_country_code: str | None) -> str | None:
    """The E.164 form of a local number (`0816...` with 62: `+62816...`) when a country
    code is given; any other value unchanged (the schema judges it)."""
    if raw is None or not raw.startswith("0") or raw.startswith("00"):
        return raw
    if default_country_code is None:
        raise ValueError(
            f"{PHONE_COLUMN} {raw!r} is a local number (trunk prefix 0): pass "
            "--default-country-code (e.g. 62) to convert it to E.164, or fix the row")
    return f"+{default_country_code}{raw[1:]}"


def convert(row: Mapping[str, Any], position: int, *, namespace: str | None,
            default_country_code: str | None) -> Imported | Refusal:
    """One row of the application's table as a WAAccount manifest, or why not."""
    label = row_label(row, position)
    session = _text(row.get(SESSION_COLUMN))
    if session is None:
        return Refusal(label, f"no {SESSION_COLUMN}: nothing to adopt or start")
    try:
        phone = _phone(_text(row.get(PHONE_COLUMN)), default_country_code)
    except ValueError as error:
        return Refusal(label, str(error))
    key = next((v for c in KEY_COLUMNS if (v := _text(row.get(c))) is not None), None)
    spec = {"sessionId": session, "phoneNumber": phone,
            "workspaceId": _text(row.get(WORKSPACE_COLUMN)), "accountUuid": key,
            "desiredState": api.DesiredState.CONNECTED.value}
    spec = {k: v for k, v in spec.items() if v is not None}
    try:
        api.WAAccountSpec.model_validate(spec)
    except ValidationError as error:
        return Refusal(label, "; ".join(_refused_field(e, spec) for e in error.errors()))
    metadata: dict[str, Any] = {"name": account_name(session)}  # valid ids give a name
    if namespace:
        metadata["namespace"] = namespace
    manifest = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": metadata,
                "spec": spec}
    return Imported(label, manifest)


def _refused_field(error: Mapping[str, Any], spec: Mapping[str, Any]) -> str:
    field_name = str(error["loc"][0]) if error.get("loc") else "spec"
    source = _SOURCE.get(field_name, field_name)
    return (f"{source} {spec.get(field_name)!r} is refused by the WAAccount schema "
            f"({field_name}: {error['msg']})")


def plan(rows: Iterable[Mapping[str, Any]], *, namespace: str | None,
         default_country_code: str | None) -> ImportPlan:
    """Every row, in the table's order: the first row of a session keeps it (as the
    operator keeps a session for the older of two accounts), later ones are refused."""
    result = ImportPlan()
    sessions: dict[str, str] = {}
    names: dict[str, str] = {}
    for position, row in enumerate(rows, start=1):
        outcome = convert(row, position, namespace=namespace,
                          default_country_code=default_country_code)
        if isinstance(outcome, Refusal):
            result.refused.append(outcome)
        elif outcome.session_id in sessions:
            first = sessions[outcome.session_id]
            result.refused.append(Refusal(
                outcome.row, f"session {outcome.session_id!r} is also {first}: one account "
                "per session (the first row keeps it)"))
        elif outcome.name in names:
            result.refused.append(Refusal(
                outcome.row, f"its account name {outcome.name!r} is taken by "
                f"{names[outcome.name]}; import it by hand under another name"))
        else:
            sessions[outcome.session_id] = names[outcome.name] = outcome.row
            result.imported.append(outcome)
    return result


def render(imported: Sequence[Imported], *, source: str) -> str:
    """The manifests as one YAML stream for Git, each headed by the row it came from."""
    documents = [f"# from {source} {item.row}\n"
                 + yaml.safe_dump(item.manifest, sort_keys=False) for item in imported]
    return "---\n".join(documents)


# --- the shell: read the table, create the accounts ------------------------------------


class SourceError(RuntimeError):
    """The table cannot be read; the message names why, never the database URL."""


def read_rows(url: str, table: str, where: str | None) -> list[dict[str, Any]]:
    """The rows of `table` (only the columns the conversion reads), oldest first, in a
    read-only transaction. `where` is the user's own SQL filter on their own database,
    sent as written inside `WHERE (...)`: it can select rows, never change them."""
    try:
        engine = engine_for(url)
    except ArgumentError:  # its message repeats the URL, password and all
        raise SourceError("the database URL cannot be parsed; expected "
                          "dialect+driver://user:password@host/database") from None
    except (NoSuchModuleError, ImportError) as error:
        raise SourceError(f"the database URL names a dialect or driver this installation "
                          f"lacks ({error}); for MySQL and MariaDB use mysql+pymysql://, for "
                          "PostgreSQL postgresql+psycopg://") from None
    schema, _, name = table.rpartition(".")
    try:
        with engine.connect() as connection:
            _read_only(connection)
            source = Table(name, MetaData(), schema=schema or None, autoload_with=connection)
            if SESSION_COLUMN not in source.c:
                raise SourceError(f"table {table!r} has no {SESSION_COLUMN} column (its "
                                  f"columns: {', '.join(source.c.keys())})")
            query = select(*(source.c[c] for c in COLUMNS if c in source.c))
            if where:
                # `\:` keeps a colon as written instead of making it a bind parameter.
                query = query.where(text("(" + where.replace(":", "\\:") + ")"))
            order = next(c for c in ("id", "created_at", SESSION_COLUMN) if c in source.c)
            rows = connection.execute(query.order_by(source.c[order]))
            return [dict(row._mapping) for row in rows]
    except NoSuchTableError:
        raise SourceError(f"there is no table {table!r} in that database") from None
    except SQLAlchemyError as error:
        cause = getattr(error, "orig", None) or error
        detail = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
        raise SourceError(detail) from None
    finally:
        engine.dispose()


def _read_only(connection: Any) -> None:
    """Every transaction of this connection read-only, whatever the filter says."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execution_options(postgresql_readonly=True)  # before the first BEGIN
    elif dialect in ("mysql", "mariadb"):
        connection.exec_driver_sql("SET SESSION TRANSACTION READ ONLY")
    elif dialect == "sqlite":
        connection.exec_driver_sql("PRAGMA query_only = ON")
    else:
        raise SourceError(f"reading from {dialect} is not supported (MySQL/MariaDB, "
                          "PostgreSQL and SQLite are)")


class ApplyError(RuntimeError):
    """The API server refused what every account needs (e.g. RBAC): nothing to retry
    row by row."""


async def create_accounts(imported: Sequence[Imported], namespace: str
                          ) -> tuple[list[str], list[Refusal]]:
    """Create each account in `namespace`; an existing one is left as it is. Returns the
    lines to print (kubectl's words) and the rows refused by the API server."""
    done: list[str] = []
    refused: list[Refusal] = []
    async with await connect() as api_client:
        custom = client.CustomObjectsApi(api_client)
        args = (api.GROUP, api.VERSION, namespace, api.PLURAL)
        for item in imported:
            body = {**item.manifest,
                    "metadata": {**item.manifest["metadata"], "namespace": namespace}}
            kind = f"{api.SINGULAR}.{api.GROUP}/{item.name}"
            try:
                await custom.create_namespaced_custom_object(*args, body)
                done.append(f"{kind} created")
            except ApiException as error:
                if error.status == 409:
                    existing = await custom.get_namespaced_custom_object(*args, item.name)
                    theirs = (existing.get("spec") or {}).get("sessionId")
                    if theirs == item.session_id:
                        done.append(f"{kind} unchanged (it exists)")
                    else:
                        refused.append(Refusal(item.row, f"the WAAccount {item.name} exists "
                                               f"for another session ({theirs!r})"))
                elif error.status in (400, 422):
                    refused.append(Refusal(item.row, api_message(error)))
                else:
                    raise ApplyError(f"cannot create WAAccounts in namespace {namespace}: "
                                     f"{api_message(error)}") from None
    return done, refused

