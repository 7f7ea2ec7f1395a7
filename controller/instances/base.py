"""What every protocol adapter promises, in the controller's own words."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from controller.instances.http import InstanceHttp


class SessionState(StrEnum):
    """The normalized session states every adapter maps its words onto."""

    WORKING = "working"
    PAIRING = "pairing"
    STARTING = "starting"
    STOPPED = "stopped"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ObservedSession:
    """One session as an instance reported it: our word and the instance's own.

    `raw_status` is the instance's word verbatim, "" when the entry carried none (blazz
    lists a session it restored by itself without one). `reconnecting`: the instance
    says it is bringing the session back by itself (blazz `disconnected`), so it gets
    the start grace before anyone restarts it.
    """

    name: str
    state: SessionState
    raw_status: str
    reconnecting: bool = False


Inventory = dict[str, ObservedSession]


@dataclass(frozen=True)
class InventoryReport:
    """One inventory answer: the sessions read, and the entries that could not be read
    (each named, e.g. "entry 3: no session_id"), which never void the others."""

    sessions: Inventory
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class InstanceInfo:
    """What an instance says about itself, asked once per pod (and again after it failed).

    `max_sessions`: a limit the service itself imposes (WAHA Core runs one session), on
    top of the pod's capacity. `checks_key`: False when the service accepts any API key.
    """

    version: str | None = None
    tier: str | None = None
    max_sessions: int | None = None
    checks_key: bool | None = None


@dataclass(frozen=True)
class CallTimeouts:
    """Whole-request deadlines per kind of call: a start is a browser launch (blazz answers
    only after WhatsApp Web loaded), a stop sleeps in WAHA; a probe must stay quick."""

    probe: float = 5.0
    start: float = 120.0
    stop: float = 30.0


@dataclass(frozen=True)
class SessionRequest:
    """What an adapter needs to start a session on an instance."""

    session_id: str
    workspace_id: str | None = None
    account_id: str | None = None
    # True when the account has run before, so the instance should restore its
    # stored auth instead of creating a fresh session that needs a QR scan.
    resume: bool = False


@dataclass(frozen=True)
class InstanceEvent:
    """A webhook an instance sent, signature verified: what it says, and how to spot a replay."""

    name: str  # the instance's own event name (session_ready, session.status, ...)
    session: str | None
    state: SessionState | None  # None when the event says nothing of the session's state
    replay_key: str  # the same for every delivery of this one event
    worker_id: str | None = None  # the sender's own name for itself, where the protocol has one
    # The replay key is the body itself (an unsigned event without an id): identical events
    # are replays only within a short window, since a service may send one body again.
    replay_by_body: bool = False


class WebhookRejected(Exception):
    """A webhook that must change nothing. `reason` is a short metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class InstanceAdapter(abc.ABC):
    """Talks to one instance pod. Subclasses know one protocol; nothing else does."""

    protocol: str

    def __init__(self, http: InstanceHttp, base_url: str, api_key: str, *,
                 info: InstanceInfo | None = None, timeouts: CallTimeouts | None = None
                 ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.info = info or InstanceInfo()
        self.timeouts = timeouts or CallTimeouts()

    async def describe(self) -> InstanceInfo:
        """What the instance says about itself (version, tier, limits); nothing by default."""
        return InstanceInfo()

    @abc.abstractmethod
    async def inventory(self) -> InventoryReport:
        """Every session the instance holds, with one request, read entry by entry."""

    @abc.abstractmethod
    async def start(self, request: SessionRequest) -> None:
        """Start (or restore) a session. Starting one that already runs is a no-op."""

    @abc.abstractmethod
    async def stop(self, session_id: str, workspace_id: str | None) -> None:
        """Stop a session. Stopping one that is absent is a no-op."""

    @staticmethod
    @abc.abstractmethod
    def normalize(word: str) -> SessionState:
        """Map the instance's own state word onto SessionState; unknown words are UNKNOWN."""

    @staticmethod
    @abc.abstractmethod
    def read_webhook(
        headers: Mapping[str, str], body: bytes, secret: str, now: float, max_age: float,
        *, unsigned_ok: bool = False,
    ) -> InstanceEvent:
        """Verify a webhook's signature (constant time) and read it; raise WebhookRejected.
        `unsigned_ok`: the sender's pod opted in to be trusted by its address alone, for
        services that cannot sign (WAHA without a webhook key)."""

    @staticmethod
    @abc.abstractmethod
    def sign_webhook(body: bytes, secret: str, now: float) -> dict[str, str]:
        """The headers that sign `body` in this protocol's own scheme (for the relay)."""
