"""The WAAccount API: the pydantic models that are the single source of the CRD schema.

`controller.crd` turns these models into the CustomResourceDefinition in `crds/`;
a test fails when the committed file drifts from what the models generate.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "wa-controller.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "WAAccount"
PLURAL = "waaccounts"
SINGULAR = "waaccount"
SHORT_NAMES = ("waa",)
CATEGORIES = ("whatsapp",)

# Every annotation, label, metadata key and finalizer of ours starts with this prefix.
PREFIX = f"{GROUP}/"
PROTOCOL_ANNOTATION = PREFIX + "protocol"  # on instance pods: blazz, waha, ...
PORT_ANNOTATION = PREFIX + "port"
CAPACITY_ANNOTATION = PREFIX + "capacity"
REDISCOVER_ANNOTATION = PREFIX + "rediscover"  # on accounts: a new value re-probes
# On instance pods: "source-address" trusts unsigned webhooks from the pod's IP (WAHA
# without a webhook key); guard the webhook port with a NetworkPolicy then.
WEBHOOK_AUTH_ANNOTATION = PREFIX + "webhook-auth"
SESSION_METADATA = PREFIX + "session"  # in an instance's session config: whose it is
# On instance pods: "true" moves its sessions away in waves and places none there.
DRAIN_ANNOTATION = PREFIX + "drain"
# On instance pods: pods of one storage group read each other's stored logins (a shared
# sessions directory, one WAHA store): sessions move only within a group.
STORAGE_GROUP_ANNOTATION = PREFIX + "storage-group"
# On accounts: the pod to move the session to (set by `wa-controller rebalance --apply`);
# removed by the operator once the session runs there.
MOVE_TO_ANNOTATION = PREFIX + "move-to"
# Earlier versions put this finalizer on every account (one kopf daemon each); the
# operator removes it so deletions never wait for it.
LEGACY_FINALIZER = PREFIX + "finalizer"


class ConditionType(StrEnum):
    """The conditions of a WAAccount's status."""

    ASSIGNED = "Assigned"  # the session is placed on (or found on) an instance pod
    READY = "Ready"  # the session works
    MIRRORED = "Mirrored"  # the SQL mirror's row is written


# The reason an account that names another (older) account's session is Failed with.
DUPLICATE_SESSION_ID = "DuplicateSessionId"
# The Ready reason of an account whose start waits for a start slot on its pod (waves).
WAITING_FOR_START_SLOT = "WaitingForStartSlot"


SESSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
# E.164: up to 15 digits, no leading zero, optional "+". Seven digits at least,
# so that a local number or a typo is refused rather than mirrored.
PHONE_NUMBER_PATTERN = r"^\+?[1-9][0-9]{6,14}$"
# metav1.Condition's own validation rules, so conditions are refused exactly
# where Kubernetes would refuse them.
CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
# Kubernetes label syntax: a key is [DNS-subdomain prefix/]name, a name and a value at most
# 63 characters of letters, digits, '-', '_' and '.', beginning and ending alphanumeric.
LABEL_NAME_PATTERN = r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]"
LABEL_PREFIX_PATTERN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
LABEL_KEY_PATTERN = rf"^({LABEL_PREFIX_PATTERN}/)?{LABEL_NAME_PATTERN}$"
LABEL_VALUE_PATTERN = rf"^({LABEL_NAME_PATTERN})?$"
LABEL_KEY_MAX = 253 + 1 + 63  # prefix, slash, name
MAX_SELECTOR_LABELS = 16  # an instance selector names a pool, a region, a tier: a few labels


def _cel(rule: str, message: str) -> dict[str, Any]:
    return {"x-kubernetes-validations": [{"rule": rule, "message": message}]}


class _Model(BaseModel):
    """Base for API objects: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class DesiredState(StrEnum):
    """What the account should be doing."""

    CONNECTED = "Connected"
    STOPPED = "Stopped"


class Phase(StrEnum):
    """Where the account is in its life, as the controller observed it."""

    PENDING = "Pending"
    STARTING = "Starting"
    PAIRING = "Pairing"
    CONNECTED = "Connected"
    LOST = "Lost"
    STOPPED = "Stopped"
    FAILED = "Failed"
    MOVING = "Moving"


class WAAccountSpec(_Model):
    """What the account is and what we want of it."""

    session_id: Annotated[
        str,
        Field(
            description=(
                "Name of the session on the instance (the instance-side session id). "
                "Letters, digits, '_', '.' and '-', starting with a letter or digit, "
                "at most 128 characters. Immutable: a new session is a new WAAccount."
            ),
            pattern=SESSION_ID_PATTERN,
            max_length=128,
            json_schema_extra=_cel("self == oldSelf", "sessionId is immutable"),
        ),
    ]
    phone_number: Annotated[
        str | None,
        Field(
            description=(
                "Phone number of the WhatsApp account in E.164 form: 7 to 15 digits, "
                "no leading zero, with or without a leading '+'."
            ),
            pattern=PHONE_NUMBER_PATTERN,
        ),
    ] = None
    desired_state: Annotated[
        DesiredState,
        Field(
            description=(
                "Connected (default) keeps the session running on a healthy instance; "
                "Stopped asks the instance holding it to stop it."
            ),
        ),
    ] = DesiredState.CONNECTED
    account_uuid: Annotated[
        str | None,
        Field(
            description="The application's own key for this account, copied into the SQL mirror.",
            max_length=64,
        ),
    ] = None
    workspace_id: Annotated[
        str | None,
        Field(
            description=(
                "Tenant id, passed to instances that need it (the blazz service does) "
                "and copied into the SQL mirror."
            ),
            max_length=64,
        ),
    ] = None
    instance_selector: Annotated[
        dict[str, str] | None,
        Field(
            description=(
                "Extra pod labels an instance must carry to hold this session, on top of "
                "the controller's instance selector (pools, regions, tiers). Keys and "
                f"values follow the Kubernetes label syntax; at most {MAX_SELECTOR_LABELS} "
                "labels."
            ),
            # The API server checks these; the model reads any map, so that an account
            # stored before the rules (or past them) is reported as InvalidSelector.
            json_schema_extra={
                "maxProperties": MAX_SELECTOR_LABELS,
                "additionalProperties": {"type": "string", "maxLength": 63,
                                         "pattern": LABEL_VALUE_PATTERN},
                **_cel(f"self.all(k, size(k) <= {LABEL_KEY_MAX} && "
                       f"k.matches('{LABEL_KEY_PATTERN}'))",
                       "instanceSelector keys must be label keys: an optional DNS-subdomain "
                       "prefix and '/', then a name of at most 63 letters, digits, '-', '_' "
                       "or '.', beginning and ending with a letter or digit"),
            },
        ),
    ] = None


class InstanceRef(_Model):
    """The instance pod holding the session."""

    pod: Annotated[str, Field(description="Name of the instance pod that holds the session.")]
    url: Annotated[
        str,
        Field(
            description=(
                "Base URL applications must use for this session, built from the pod "
                "(never taken from what the instance says about itself)."
            ),
        ),
    ]
    assigned_at: Annotated[
        datetime, Field(description="When the session was first seen on, or placed on, this pod.")
    ]


class Condition(_Model):
    """A metav1.Condition: one aspect of the account's state and when it last changed."""

    type: Annotated[
        str,
        Field(
            description="Type of condition in CamelCase: Assigned, Ready or Mirrored.",
            pattern=CONDITION_TYPE_PATTERN,
            max_length=316,
        ),
    ]
    status: Annotated[
        Literal["True", "False", "Unknown"],
        Field(description="Status of the condition: True, False or Unknown."),
    ]
    reason: Annotated[
        str,
        Field(
            description="Programmatic identifier, in CamelCase, for the last transition.",
            pattern=CONDITION_REASON_PATTERN,
            min_length=1,
            max_length=1024,
        ),
    ]
    message: Annotated[
        str,
        Field(description="Human-readable details about the last transition.", max_length=32768),
    ]
    last_transition_time: Annotated[
        datetime, Field(description="When the condition last changed from one status to another.")
    ]
    observed_generation: Annotated[
        int | None,
        Field(
            description="The .metadata.generation this condition was set from.",
            ge=0,
            json_schema_extra={"format": "int64"},
        ),
    ] = None


def account_reference(namespace: str, name: str, uid: str) -> dict[str, Any]:
    """A WAAccount as an event's involved object."""
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": name, "namespace": namespace, "uid": uid}}


def older_version(version: str, than: str) -> bool:
    """Whether resourceVersion `version` is older than `than`. They are etcd revisions
    (numbers): the watch can deliver an object after a write that replaced it answered."""
    return version.isdigit() and than.isdigit() and int(version) < int(than)


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: Literal["True", "False", "Unknown"],
    reason: str,
    message: str,
    *,
    now: datetime,
    generation: int,
) -> list[Condition]:
    """Replace one condition; `lastTransitionTime` moves only when its status flips."""
    previous = next((c for c in conditions if c.type == type_), None)
    changed_at = previous.last_transition_time if previous and previous.status == status else now
    updated = Condition(
        type=type_, status=status, reason=reason, message=message,
        last_transition_time=changed_at, observed_generation=generation,
    )
    others = [c for c in conditions if c.type != type_]
    return sorted([*others, updated], key=lambda c: c.type)



class WAAccountStatus(_Model):
    """What the controller observed of the account."""

    phase: Annotated[
        Phase | None,
        Field(
            description=(
                "Pending (no healthy instance with room), Starting (placed, session not "
                "yet running), Pairing (waiting for a QR scan), Connected, Moving (being "
                "moved to another pod: stopped there, started on the new one), Lost (found "
                "nowhere, needs a human), Stopped or Failed."
            ),
        ),
    ] = None
    instance: Annotated[
        InstanceRef | None,
        Field(description="The instance pod that holds the session, and the URL to reach it."),
    ] = None
    session_status: Annotated[
        str | None,
        Field(description="The instance's own word for the session's state, verbatim."),
    ] = None
    observed_generation: Annotated[
        int | None,
        Field(
            description="The .metadata.generation of the spec this status was computed from.",
            ge=0,
            json_schema_extra={"format": "int64"},
        ),
    ] = None
    message: Annotated[
        str | None,
        Field(description="Human-readable explanation of the current phase."),
    ] = None
    storage_group: Annotated[
        str | None,
        Field(
            description=(
                "The storage group of the pod the session last ran on (pods that read each "
                "other's stored logins): it is restarted or moved only within that group, "
                "where its stored login can be read."
            ),
        ),
    ] = None
    start_attempts: Annotated[
        int | None,
        Field(
            description=(
                "Starts the controller asked for since the session last ran or waited for "
                "a QR scan. At the controller's limit the account is Lost."
            ),
            ge=0,
        ),
    ] = None
    last_start_time: Annotated[
        datetime | None,
        Field(description="When the controller last asked an instance to start the session."),
    ] = None
    conditions: Annotated[
        list[Condition],
        Field(
            description="Assigned, Ready and Mirrored, in the metav1.Condition shape.",
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
        ),
    ] = []
