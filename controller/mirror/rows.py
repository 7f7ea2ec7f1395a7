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

from controller.api import DUPLICATE_SESSION_ID, ConditionType


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class ResyncPlan:
    upserts: tuple[MirrorRow, ...]
    deletes: tuple[MirrorRow, ...]


def plan_resync(accounts: Mapping[str, MirrorRow], table: Mapping[str, StoredRow]) -> ResyncPlan:
    """Make the table equal the accounts: write stale and missing rows, soft-delete orphans.

    A deleted row whose account exists again (same uid) is written back; a deleted row
    stays deleted otherwise: nothing is resurrected.
    """
    upserts = tuple(
        row for uid, row in sorted(accounts.items())
        if uid not in table or table[uid].row != row or table[uid].deleted_at is not None
    )
    deletes = tuple(
        stored.row for uid, stored in sorted(table.items())
        if uid not in accounts and stored.deleted_at is None
    )
    return ResyncPlan(upserts, deletes)


def deleted_sessions(accounts: Mapping[str, MirrorRow], table: Mapping[str, StoredRow]
                     ) -> set[tuple[str, str, str | None]]:
    """(namespace, session, workspace) of accounts that were deleted (soft-deleted rows,
    and rows of accounts gone now), whose session no live account names: their sessions
    are to be stopped wherever they still run."""
    live = {(row.namespace, row.session_id) for row in accounts.values()}
    return {(s.row.namespace, s.row.session_id, s.row.workspace_id)
            for uid, s in table.items()
            if uid not in accounts and (s.row.namespace, s.row.session_id) not in live}


@dataclass(frozen=True)
class MirrorFailure:
    """A database error as the account's `Mirrored=False` condition shows it."""

    reason: str
    message: str


def explain_failure(error: BaseException) -> MirrorFailure:
    """Name what went wrong and what to do, from the driver's message (never the URL)."""
    cause = getattr(error, "orig", None) or error
    detail = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
    text = detail.lower()
    if "authentication failed" in text:
        return MirrorFailure("DatabaseAuthFailed",
                             f"the database refused the credentials in WA_DATABASE_URL: {detail}")
    if "permission denied" in text or "must be owner" in text:
        return MirrorFailure("DatabasePermissionDenied",
                             f"the database user lacks a privilege on the mirror table: {detail}")
    if "does not exist" in text or "no such table" in text:
        return MirrorFailure(
            "MirrorTableMissing",
            f"the mirror table is missing; run `wa-controller db upgrade`: {detail}")
    return MirrorFailure("DatabaseUnavailable", f"the SQL mirror cannot be written: {detail}")
