"""What the SQL mirror should hold, as pure functions of plain data.

A row is what applications read for one WAAccount. Which rows to write, which to
soft-delete, and what a database error means to a user are decided here, without I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from controller.api import DUPLICATE_SESSION_ID, ConditionType, Phase

_PHASES = frozenset(phase.value for phase in Phase)


@dataclass(frozen=True, slots=True)
class MirrorRow:
    """The mirrored fields of one WAAccount (the table adds updated_at and deleted_at)."""

    uid: str
    namespace: str
    name: str
    account_uuid: str | None
    session_id: str
    phone_number: str | None
    workspace_id: str | None
    desired_state: str
    phase: str | None
    session_status: str | None
    assigned_pod: str | None
    instance_url: str | None

    def values(self) -> dict[str, Any]:
        return asdict(self)

    def notification(self, operation: str) -> str:
        """The NOTIFY payload: enough for an application to drop its cache entry."""
        return json.dumps({
            "op": operation, "uid": self.uid, "namespace": self.namespace, "name": self.name,
            "accountUuid": self.account_uuid, "sessionId": self.session_id,
        }, separators=(",", ":"))


def mirrored(body: Mapping[str, Any]) -> bool:
    """Whether the account has a live row: not one that names another account's session
    (the mirror holds one live row per session)."""
    conditions = (body.get("status") or {}).get("conditions") or []
    return not any(c.get("type") == ConditionType.ASSIGNED
                   and c.get("reason") == DUPLICATE_SESSION_ID for c in conditions)


def row_of(body: Mapping[str, Any]) -> MirrorRow:
    """The row for a WAAccount object as the API server returns it."""
    metadata, spec = body["metadata"], body.get("spec") or {}
    status = body.get("status") or {}
    instance = status.get("instance") or {}
    return MirrorRow(
        uid=str(metadata["uid"]),
        namespace=str(metadata["namespace"]),
        name=str(metadata["name"]),
        account_uuid=spec.get("accountUuid"),
        session_id=str(spec.get("sessionId", "")),
        phone_number=spec.get("phoneNumber"),
        workspace_id=spec.get("workspaceId"),
        desired_state=str(spec.get("desiredState", "Connected")),
        phase=status.get("phase"),
        session_status=status.get("sessionStatus"),
        assigned_pod=instance.get("pod"),
        instance_url=instance.get("url"),
    )


@dataclass(frozen=True)
class StoredRow:
    row: MirrorRow
    deleted_at: datetime | None
    owner: str | None = None  # the installation that wrote it; None: written before owners


@dataclass(frozen=True)
class ResyncPlan:
    upserts: tuple[MirrorRow, ...]
    deletes: tuple[MirrorRow, ...]
    foreign: dict[str, str]  # uid -> owner: our accounts whose row another installation owns


def plan_resync(accounts: Mapping[str, MirrorRow], table: Mapping[str, StoredRow],
                owner: str) -> ResyncPlan:
    """Make our rows equal the accounts: write stale and missing rows, soft-delete orphans.

    `table` holds the rows of the namespaces this installation serves. Rows without an
    owner (written before rows had one) are adopted; rows another installation owns are
    never written or deleted, and those that belong to one of our accounts are reported.
    A deleted row whose account exists again (same uid) is written back; a deleted row
    stays deleted otherwise: nothing is resurrected.
    """
    ours = {uid: stored for uid, stored in table.items() if stored.owner in (owner, None)}
    foreign = {uid: str(table[uid].owner) for uid in accounts
               if uid in table and uid not in ours}
    upserts = tuple(
        row for uid, row in sorted(accounts.items())
        if uid not in foreign and (
            uid not in ours or ours[uid].row != row or ours[uid].deleted_at is not None
            or ours[uid].owner is None)
    )
    deletes = tuple(
        stored.row for uid, stored in sorted(ours.items())
        if uid not in accounts and stored.deleted_at is None
    )
    return ResyncPlan(upserts, deletes, foreign)


def deleted_sessions(accounts: Mapping[str, MirrorRow], table: Mapping[str, StoredRow],
                     owner: str) -> set[tuple[str, str, str | None]]:
    """(namespace, session, workspace) of our accounts that were deleted (soft-deleted rows,
    and rows of accounts gone now), whose session no live account names: their sessions
    are to be stopped wherever they still run."""
    live = {(row.namespace, row.session_id) for row in accounts.values()}
    return {(s.row.namespace, s.row.session_id, s.row.workspace_id)
            for uid, s in table.items()
            if s.owner in (owner, None) and uid not in accounts
            and (s.row.namespace, s.row.session_id) not in live}


@dataclass(frozen=True)
class StatusWords:
    """The application's own words for the phases: the seed writes `connected`,
    `qr_scanning` and `disconnected` into its `status` column."""

    words: Mapping[str, str]
    otherwise: str

    @classmethod
    def parse(cls, text: str) -> StatusWords:
        """`Phase=word,...,*=word` (`*`: every other phase, and no phase yet)."""
        words, otherwise = {}, None
        for term in filter(None, (t.strip() for t in text.split(","))):
            phase, sep, word = (part.strip() for part in term.partition("="))
            if not sep or not phase or not word:
                raise ValueError(f"{term!r} is not Phase=word")
            if phase == "*":
                otherwise = word
            elif phase not in _PHASES:
                raise ValueError(f"{phase!r} is not a phase ({', '.join(sorted(_PHASES))})")
            else:
                words[phase] = word
        if otherwise is None:
            raise ValueError("a word for every other phase (*=word) is needed")
        return cls(words, otherwise)

    def of(self, phase: str | None) -> str:
        return self.words.get(phase or "", self.otherwise)


@dataclass(frozen=True, slots=True)
class AppValues:
    """What the application's own table holds for one session: the URL, and its word."""

    url: str | None
    status: str | None  # None when the table has no status column to write


def app_values(row: MirrorRow, words: StatusWords | None) -> AppValues:
    return AppValues(row.instance_url, words.of(row.phase) if words else None)


@dataclass(frozen=True)
class AppPlan:
    updates: tuple[tuple[str, AppValues], ...]  # (key, values) of rows that differ
    missing: frozenset[str]  # uids of the accounts whose row the application lacks


def plan_application(accounts: Mapping[str, MirrorRow], table: Mapping[str, AppValues],
                     words: StatusWords | None) -> AppPlan:
    """Make the application's rows of our accounts (matched by session id) show each
    account's URL and word; rows it lacks are reported, never created."""
    updates, missing = {}, set()
    for uid, row in sorted(accounts.items()):
        wanted = app_values(row, words)
        if row.session_id not in table:
            missing.add(uid)
        elif table[row.session_id] != wanted:
            updates[row.session_id] = wanted
    return AppPlan(tuple(sorted(updates.items())), frozenset(missing))


@dataclass(frozen=True)
class MirrorFailure:
    """A database error as the account's `Mirrored=False` condition shows it."""

    reason: str
    message: str


class ApplicationTableError(Exception):
    """The application's table, or a column the mirror is told to write, is not there."""


def explain_failure(error: BaseException) -> MirrorFailure:
    """Name what went wrong and what to do, from the driver's message (never the URL)."""
    cause = getattr(error, "orig", None) or error
    detail = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
    text = detail.lower()
    if "authentication failed" in text or "using password" in text:  # PostgreSQL, MySQL
        return MirrorFailure("DatabaseAuthFailed",
                             f"the database refused the credentials in WA_DATABASE_URL: {detail}")
    if any(said in text for said in ("permission denied", "must be owner", "command denied",
                                     "access denied")):
        return MirrorFailure("DatabasePermissionDenied",
                             f"the database user lacks a privilege on the mirror table: {detail}")
    if isinstance(cause, ApplicationTableError):
        return MirrorFailure("ApplicationTableMissing", detail)
    if "does not exist" in text or "no such table" in text or "doesn't exist" in text:
        return MirrorFailure(
            "MirrorTableMissing",
            f"the mirror table is missing; run `wa-controller db upgrade`: {detail}")
    return MirrorFailure("DatabaseUnavailable", f"the SQL mirror cannot be written: {detail}")
