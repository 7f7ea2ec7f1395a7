"""Controller settings: environment variables (WA_*) and `wa-controller run` flags."""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from controller.decisions import Policy
from controller.fleet import InstanceDefaults
from controller.instances import PROTOCOLS, CallTimeouts
from controller.mirror.rows import StatusWords
from controller.mirror.schema import IDENTIFIER


class Settings(BaseSettings):
    """Everything the operator can be told. Every field is also `WA_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="WA_", extra="forbid")

    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Namespaces to serve (comma-separated in the environment); empty: all.",
    )
    instance_selector: str = Field(
        "app.kubernetes.io/component=whatsapp-instance",
        description="Label selector (k=v[,k=v]) that finds instance pods.",
    )
    default_protocol: str = Field("blazz", description="Protocol of pods without an annotation.")
    default_port: int = Field(3000, ge=1, le=65535)
    default_capacity: int = Field(50, ge=0, description="Max sessions of a pod without annotation.")
    default_storage_group: str = Field(
        "shared", min_length=1, description="Storage group of pods without the "
        "wa-controller.io/storage-group annotation: pods of one group read each other's "
        "stored logins (a shared sessions directory), so sessions move only within one.",
    )
    url_template: str = Field(
        "http://{ip}:{port}",
        description="Instance URL built from the pod: {ip} {port} {pod} {namespace} {subdomain}.",
    )
    probe_interval: float = Field(30.0, gt=0, description="Seconds between inventory probes.")
    probe_timeout: float = Field(5.0, gt=0, description="Seconds before a probe gives up.")
    probe_failure_threshold: int = Field(
        3, ge=1, description="Failed probes in a row before a pod's sessions count as gone."
    )
    max_inventory_bytes: int = Field(
        32 << 20, ge=1024, description="Largest instance answer read (bytes); a larger one "
        "is refused as unreadable without being held in memory whole.",
    )
    start_timeout: float = Field(
        120.0, gt=0, description="Seconds a start call may take (blazz answers only after the "
        "browser loaded WhatsApp Web); never retried while it runs.",
    )
    stop_timeout: float = Field(
        30.0, gt=0, description="Seconds a stop call may take (WAHA sleeps ~3 s in it)."
    )
    start_grace: float = Field(
        60.0, ge=0, description="Seconds a session has to appear after its start was accepted."
    )
    max_start_attempts: int = Field(3, ge=1, description="Starts before an account is Lost.")
    observe_only: bool = Field(
        False, description="Probe, write status and the mirror, and never start, stop or "
        "move a session: each start or stop decided is an event (WouldPlace, WouldRestart, "
        "WouldStop) and a metric. To run beside an existing system before handing over.",
    )
    moves_in_flight: int = Field(
        4, ge=1, le=1000, description="Sessions being moved (drain, rebalance) at once, in the "
        "fleet: each is stopped, then started on its new pod; the rest wait their turn.",
    )
    auto_rebalance: bool = Field(
        False, description="Even out the sessions by moving them (as `wa-controller rebalance "
        "--apply` does) whenever the spread of load/capacity between the pods of a storage "
        "group exceeds rebalance_threshold, e.g. after pods were added.",
    )
    rebalance_threshold: float = Field(
        0.2, gt=0, le=1, description="Spread of load/capacity between the most and least "
        "loaded pod of a storage group that auto_rebalance tolerates.",
    )
    rebalance_interval: float = Field(
        300.0, gt=0, description="Seconds between two looks of auto_rebalance (a round "
        "begins only once the moves of the last one are done).",
    )
    stop_unmanaged_sessions: bool = Field(
        False, description="Stop sessions that no WAAccount names (default: only report "
        "them; a team adopting wa-controller has sessions it has not imported yet).",
    )
    reconcile_workers: int = Field(
        32, ge=1, le=1000, description="Accounts reconciled at once (the work queue's workers)."
    )
    resync_interval: float = Field(
        300.0, gt=0, description="Seconds between re-decisions of an account nothing woke."
    )
    api_key_secret: str = Field(
        "wa-controller-instances", description="Secret (in the operator's namespace) with the key."
    )
    api_key_secret_key: str = Field("api-key", description="Key of the API key in that Secret.")
    operator_namespace: str = Field("default", description="Namespace the operator runs in.")
    peering: str | None = Field(
        None, description="kopf peering object name; unset runs standalone (a single replica)."
    )
    priority: int | None = Field(
        None, description="Peering priority: the highest one acts; unset: random, so that "
        "replicas of one Deployment never tie (a tie freezes them all)."
    )
    liveness_port: int | None = Field(8080, ge=1, le=65535,
                                      description="Port of /healthz; unset: none.")
    metrics_port: int | None = Field(9090, ge=1, le=65535,
                                     description="Port of /metrics; unset: none.")
    webhook_port: int | None = Field(
        8081, ge=1, le=65535,
        description="Port of the instance webhooks and /rediscover; unset: none.",
    )
    bind_address: str = Field(
        "0.0.0.0",  # noqa: S104 - a pod is reached on its own IP
        description="Address the three listeners bind (an IPv4 or IPv6 address; "
        "0.0.0.0: all IPv4 addresses, :: all addresses).",
    )
    webhook_secret: str = Field(
        "wa-controller-webhooks",
        description="Secret (in the operator's namespace) with the webhook HMAC secret "
        "and the rediscover token.",
    )
    webhook_hmac_key: str = Field("hmac-secret", description="Key of the HMAC secret in it.")
    webhook_secret_overlap: float = Field(
        300.0, ge=0, description="Seconds the previous webhook HMAC secret is still accepted "
        "after the Secret changed, so instances can be rotated one by one (a deleted Secret "
        "revokes at once).",
    )
    secret_refresh_interval: float = Field(
        10.0, gt=0, description="Seconds between re-reads of the Secrets (API key, webhook "
        "secret, rediscover token): a rotation is in force within this time.",
    )
    rediscover_token_key: str = Field(
        "rediscover-token", description="Key of the /rediscover bearer token in it."
    )
    rediscover_window: float = Field(
        1.0, ge=0, description="Seconds within which rediscoveries of one account are one."
    )
    webhook_max_body: int = Field(
        16 << 20, ge=1024, description="Largest webhook body, bytes (media messages carry "
        "their media inline: 100 kB and more).",
    )
    webhook_replay_window: float = Field(
        10.0, gt=0, description="Seconds within which an unsigned webhook without an event "
        "id, identical to one received, is a replay.",
    )
    relay_secret: str = Field(
        "wa-controller-relay", description="Secret, in each served namespace, with the "
        "application's webhook URL (key url) and secret (key hmac-secret); none: no relay.",
    )
    relay_attempts: int = Field(8, ge=1, description="Deliveries tried before an event is "
                                "counted lost.")
    relay_queue_max: int = Field(10_000, ge=1, description="Events queued for the "
                                 "application at most.")
    relay_queue_bytes: int = Field(256 << 20, ge=1 << 20, description="Bytes queued for the "
                                   "application at most.")
    relay_timeout: float = Field(10.0, gt=0, description="Seconds one delivery may take.")
    webhook_max_age: float = Field(
        300.0, gt=0, description="Seconds a signed webhook timestamp stays valid."
    )
    webhook_rate: float = Field(20.0, gt=0, description="Webhook requests/s allowed per source.")
    webhook_burst: int = Field(40, ge=1, description="Webhook burst allowed per source.")
    database_url: SecretStr = Field(
        SecretStr("sqlite:///wa-controller-mirror.sqlite"),
        description="SQLAlchemy URL of the mirror database (postgresql+psycopg://...); "
        "default: an SQLite file in the working directory.",
    )
    mirror_table: str = Field(
        "whatsapp_accounts", description="Name of the mirror table (in application mode: "
        "the application's own table)."
    )
    mirror_mode: Literal["table", "application"] = Field(
        "table", description="table: one row per account in the mirror's own table; "
        "application: update only configured columns of the application's existing rows, "
        "matched by session id (never created, deleted or migrated)."
    )
    application_key_column: str = Field(
        "session_id", description="Application mode: the column holding the session id."
    )
    application_url_column: str = Field(
        "assigned_instance_url", description="Application mode: the column the instance URL "
        "is written to."
    )
    application_status_column: str = Field(
        "status", description="Application mode: the column the phase is written to, in the "
        "application's words; empty: none."
    )
    application_status_words: str = Field(
        "Connected=connected,Pairing=qr_scanning,*=disconnected",
        description="Application mode: the application's word per phase (Phase=word, "
        "*=every other phase).",
    )
    installation: str | None = Field(
        None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_./-]*$",
        description="Name of this installation: the mirror rows it writes carry it, and it "
        "never reads, writes or deletes another installation's rows; unset: "
        "<operator_namespace>/wa-controller.",
    )
    mirror_resync_interval: float = Field(
        600.0, gt=0, description="Seconds between full comparisons of the mirror table with "
        "the accounts (one read; rows changed behind the operator's back are rewritten).",
    )
    database_migrate: bool = Field(
        True, description="Apply the mirror's migrations at start (else: wa-controller db upgrade)."
    )
    notify_channel: str = Field(
        "wa_accounts", description="PostgreSQL NOTIFY channel for changed rows; empty: none."
    )
    mirror_retry_max: float = Field(
        30.0, gt=0, description="Most seconds between attempts while the database fails."
    )
    starts_per_pod: int = Field(
        3, ge=1, description="Session starts (browser launches, ~300-400 MB each) in flight "
        "on one instance pod at most; more wait their turn.",
    )
    start_spacing: float = Field(
        0.0, ge=0, le=300, description="Seconds between two launches on one instance pod, "
        "jittered by +-50% (WAHA advises 5 for WEBJS); 0: launch as soon as a slot is free.",
    )
    starts_in_flight: int = Field(
        64, ge=1, description="Session starts in flight across the fleet at most, on "
        "connections of their own (probes never wait behind a launch).",
    )

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("liveness_port", "metrics_port", "webhook_port", mode="before")
    @classmethod
    def _off(cls, value: object) -> object:
        """An empty value (or "off") turns an endpoint off, from the environment too."""
        if isinstance(value, str) and value.strip().lower() in ("", "off", "none"):
            return None
        return value

    @field_validator("bind_address")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr) -> SecretStr:
        """Parsed and its driver loadable now, not at the first write (the message never
        quotes the URL: it holds the password)."""
        try:
            make_url(value.get_secret_value()).get_dialect()
        except NoSuchModuleError as error:  # before ArgumentError: it is one
            raise ValueError(f"unknown database dialect or driver ({error})") from None
        except (ArgumentError, ValueError):  # ValueError: a port that is not a number
            raise ValueError("not an SQLAlchemy database URL "
                             "(dialect+driver://user:password@host:port/database)") from None
        except ImportError as error:
            raise ValueError(f"the database driver is not installed ({error})") from None
        return value

    @model_validator(mode="after")
    def _distinct_ports(self) -> Settings:
        seen: dict[int, str] = {}
        for name in ("liveness_port", "metrics_port", "webhook_port"):
            port = getattr(self, name)
            if port is not None and port in seen:
                raise ValueError(f"{name} and {seen[port]} are both {port}: each listener "
                                 "needs its own port")
            if port is not None:
                seen[port] = name
        return self

    @property
    def owner(self) -> str:
        """The installation's name, as its mirror rows carry it."""
        return self.installation or f"{self.operator_namespace}/wa-controller"

    @field_validator("application_status_words")
    @classmethod
    def _status_words(cls, value: str) -> str:
        StatusWords.parse(value)
        return value

    @property
    def status_words(self) -> StatusWords:
        return StatusWords.parse(self.application_status_words)

    @field_validator("mirror_table", "notify_channel", "application_key_column",
                     "application_url_column", "application_status_column")
    @classmethod
    def _identifier(cls, value: str, info: ValidationInfo) -> str:
        if value and not IDENTIFIER.match(value):
            raise ValueError(f"{info.field_name} {value!r} is not a lower-case SQL identifier")
        return value

    @field_validator("default_protocol")
    @classmethod
    def _known_protocol(cls, value: str) -> str:
        if value not in PROTOCOLS:
            raise ValueError(f"unknown protocol {value!r}; known: {', '.join(PROTOCOLS)}")
        return value

    @field_validator("instance_selector")
    @classmethod
    def _equality_selector(cls, value: str) -> str:
        _parse_selector(value)
        return value

    @field_validator("url_template")
    @classmethod
    def _template_fields(cls, value: str) -> str:
        try:
            value.format(ip="10.0.0.1", port=1, pod="p", namespace="n", subdomain="s")
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"bad url_template {value!r}: {error}") from None
        return value

    @property
    def selector_labels(self) -> dict[str, str]:
        return _parse_selector(self.instance_selector)

    @property
    def instance_defaults(self) -> InstanceDefaults:
        return InstanceDefaults(
            protocol=self.default_protocol, port=self.default_port,
            capacity=self.default_capacity, url_template=self.url_template,
            storage_group=self.default_storage_group,
        )

    @property
    def call_timeouts(self) -> CallTimeouts:
        return CallTimeouts(probe=self.probe_timeout, start=self.start_timeout,
                            stop=self.stop_timeout)

    @property
    def policy(self) -> Policy:
        return Policy(
            start_grace=timedelta(seconds=self.start_grace),
            max_start_attempts=self.max_start_attempts,
            observe_only=self.observe_only,
        )


def _parse_selector(selector: str) -> dict[str, str]:
    labels = {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, sep, value = term.partition("=")
        if not sep or not key or "!" in key or value.startswith("="):
            raise ValueError(f"instance selector term {term!r} is not key=value")
        labels[key.strip()] = value.strip()
    return labels
