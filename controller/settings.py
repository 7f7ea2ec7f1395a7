"""Controller settings: environment variables (WA_*) and `wa-controller run` flags."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from controller.decisions import Policy
from controller.fleet import InstanceDefaults
from controller.instances import PROTOCOLS, CallTimeouts
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
    stop_unmanaged_sessions: bool = Field(
        False, description="Stop sessions that no WAAccount names (default: only report "
        "them; a team adopting wa-controller has sessions it has not imported yet).",
    )
    reconcile_workers: int = Field(
        16, ge=1, le=1000, description="Accounts reconciled at once (the work queue's workers)."
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
    liveness_port: int | None = Field(8080, description="Port of /healthz; unset: none.")
    metrics_port: int | None = Field(9090, description="Port of /metrics; unset: none.")
    webhook_port: int | None = Field(
        8081, description="Port of the instance webhooks and /rediscover; unset: none."
    )
    webhook_secret: str = Field(
        "wa-controller-webhooks",
        description="Secret (in the operator's namespace) with the webhook HMAC secret "
        "and the rediscover token.",
    )
    webhook_hmac_key: str = Field("hmac-secret", description="Key of the HMAC secret in it.")
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
    mirror_table: str = Field("whatsapp_accounts", description="Name of the mirror table.")
    database_migrate: bool = Field(
        True, description="Apply the mirror's migrations at start (else: wa-controller db upgrade)."
    )
    notify_channel: str = Field(
        "wa_accounts", description="PostgreSQL NOTIFY channel for changed rows; empty: none."
    )
    mirror_retry_max: float = Field(
        30.0, gt=0, description="Most seconds between attempts while the database fails."
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

    @field_validator("mirror_table", "notify_channel")
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
        )


def _parse_selector(selector: str) -> dict[str, str]:
    labels = {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, sep, value = term.partition("=")
        if not sep or not key or "!" in key or value.startswith("="):
            raise ValueError(f"instance selector term {term!r} is not key=value")
        labels[key.strip()] = value.strip()
    return labels
