"""The decision table (DESIGN.md section 5) as one pure function.

`decide` takes the account (spec and recorded status), the fleet as the probes
last saw it, and the time, and returns the status to record, the instance calls
to make and the events to emit. It never does I/O, and running it again on its
own output changes nothing: writes happen only when something changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from controller.api import (
    DUPLICATE_SESSION_ID,
    WAITING_FOR_START_SLOT,
    ConditionType,
    DesiredState,
    InstanceRef,
    Phase,
    WAAccountSpec,
    WAAccountStatus,
    set_condition,
)
from controller.fleet import PodHealth, PodSnapshot, least_loaded, matches, selector_problem
from controller.instances import ObservedSession, SessionState

ASSIGNED = ConditionType.ASSIGNED
READY = ConditionType.READY
# The events of what an observe-only operator would have done.
WOULD_PLACE, WOULD_RESTART, WOULD_STOP = "WouldPlace", "WouldRestart", "WouldStop"
WAVES = "(starts go in waves; a wait is not a failed attempt)"


@dataclass(frozen=True)
class Policy:
    """How patient the controller is with sessions that do not show up."""

    start_grace: timedelta = timedelta(seconds=60)
    max_start_attempts: int = 3
    # How soon to look again while a copy of a session is being confirmed by a new probe.
    confirm_after: timedelta = timedelta(seconds=1)
    # Beside an existing system: observe and record, never start or stop a session; every
    # start or stop decided is said instead (events WouldPlace, WouldRestart, WouldStop).
    observe_only: bool = False
    # How soon a move waiting for room looks again (a pod may have been added or emptied).
    move_retry: timedelta = timedelta(seconds=5)


@dataclass(frozen=True)
class Account:
    """One WAAccount as plain data."""

    namespace: str
    name: str
    generation: int
    spec: WAAccountSpec
    status: WAAccountStatus
    # Since when no pod shows the session (kept in memory by the shell): an instance
    # that restarts restores its sessions over a few seconds; give it the grace.
    missing_since: datetime | None = None
    # Since when the session shows on more than one pod (kept by the shell too): a copy
    # seen before then may be a dead pod's memory, not a second running session.
    duplicate_since: datetime | None = None
    # Since when the copy kept shows failed: an instance that reconnects a dropped session
    # by itself (blazz `disconnected`) gets the start grace before it is restarted.
    failed_since: datetime | None = None
    # The pod a start call for this session is on its way to (the shell's single flight):
    # while it runs nothing else is started, stopped or judged for the session.
    start_in_flight: str | None = None
    # Its place in line while that start waits for a start slot (the shell's waves).
    start_waiting: int | None = None
    # Pods where a start decided now would wait: pod -> the place it would take.
    start_lines: Mapping[str, int] = field(default_factory=dict)
    # When the instance accepted the last start: the start grace counts from then.
    start_accepted_at: datetime | None = None
    # The last start an instance refused or failed, in its own words.
    call_failure: CallFailure | None = None
    # The older account of the namespace that names the same session, which keeps it.
    duplicate_of: str | None = None
    # The pod the session is asked to move to (a rebalance), if any.
    move_to: str | None = None
    # A move under way (kept by the shell): the pod the session was stopped on, and when
    # that pod accepted the stop. Its start elsewhere waits for a probe to confirm it.
    moving_from: MoveStart | None = None
    # Whether another move may begin now (the shell's waves: a few moves at a time).
    may_move: bool = True


@dataclass(frozen=True)
class MoveStart:
    pod: str
    stopped_at: datetime


@dataclass(frozen=True)
class CallFailure:
    """A start that an instance refused or failed: where, when, and what it said."""

    pod: str
    message: str
    at: datetime


@dataclass(frozen=True)
class StartSession:
    pod: str
    resume: bool


@dataclass(frozen=True)
class StopSession:
    pod: str


@dataclass(frozen=True)
class ProbePod:
    """Ask the pod for its inventory now: what we remember of it needs confirming."""

    pod: str


Action = StartSession | StopSession | ProbePod


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    status: WAAccountStatus
    actions: tuple[Action, ...] = ()
    events: tuple[Event, ...] = ()
    recheck_after: timedelta | None = None  # decide again then, even if nothing changes

    def changes(self, recorded: WAAccountStatus) -> bool:
        return self.status != recorded


# Which of several copies of a session to keep: the most alive one.
_LIVENESS = {
    SessionState.WORKING: 0,
    SessionState.PAIRING: 1,
    SessionState.STARTING: 2,
    SessionState.UNKNOWN: 3,
    SessionState.FAILED: 4,
    SessionState.STOPPED: 5,
}


@dataclass
class _Draft:
    """The status being decided, with the conditions helper bound to now and generation."""

    account: Account
    now: datetime
    status: WAAccountStatus = field(init=False)
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    recheck_after: timedelta | None = None

    def __post_init__(self) -> None:
        self.status = self.account.status.model_copy(
            update={"observed_generation": self.account.generation}
        )

    def condition(
        self, type_: str, status: Literal["True", "False", "Unknown"], reason: str, message: str
    ) -> None:
        self.status.conditions = set_condition(
            self.status.conditions, type_, status, reason, message,
            now=self.now, generation=self.account.generation,
        )

    def phase(self, phase: Phase, message: str) -> None:
        self.status.phase = phase
        self.status.message = message

    def event(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    def stop(self, pod: str, policy: Policy) -> None:
        """Stop the session on `pod`, or, observing only, say it would be."""
        if policy.observe_only:
            self.event("Normal", WOULD_STOP, f"observe-only: would stop session "
                       f"{self.account.spec.session_id} on {pod}")
        else:
            self.actions.append(StopSession(pod))

    def assign(self, pod: PodSnapshot) -> None:
        self.status.storage_group = pod.view.storage_group
        current = self.status.instance
        if current is None or current.pod != pod.name or current.url != pod.view.url:
            assigned_at = current.assigned_at if current and current.pod == pod.name else self.now
            self.status.instance = InstanceRef(
                pod=pod.name, url=pod.view.url or "", assigned_at=assigned_at
            )

    def decision(self) -> Decision:
        return Decision(
            self.status, tuple(self.actions), tuple(self.events), self.recheck_after
        )


def decide(
    account: Account, fleet: Sequence[PodSnapshot], policy: Policy, now: datetime
) -> Decision:
    """What to record, ask and say for one account, given what the fleet shows now."""
    draft = _Draft(account, now)
    session = account.spec.session_id
    if account.duplicate_of is not None:
        _duplicate(draft, account.duplicate_of)
        return draft.decision()
    if account.start_in_flight is not None:
        _start_in_flight(draft, account.start_in_flight, account.start_waiting)
        return draft.decision()
    holders = sorted(
        (p for p in fleet if p.trusted and session in p.sessions),
        # A fresh answer beats a remembered one; then the most alive copy; then stay put.
        key=lambda p: (
            p.health is not PodHealth.OK,
            _LIVENESS[p.sessions[session].state],
            p.name != _recorded_pod(account),
            p.name,
        ),
    )
    running = [p for p in holders if p.sessions[session].state is not SessionState.STOPPED]
    if account.spec.desired_state is DesiredState.STOPPED and (
            running and policy.observe_only):
        for pod in running:  # it runs: record where, and say it would be stopped
            draft.stop(pod.name, policy)
        _observed(draft, holders, fleet, policy)
    elif account.spec.desired_state is DesiredState.STOPPED:
        _stop(draft, holders, running)
    elif holders:
        _observed(draft, holders, fleet, policy)
    else:
        _nowhere(draft, fleet, policy)
    return draft.decision()


def _duplicate(draft: _Draft, older: str) -> None:
    """Two accounts, one session: the older keeps it; this one never starts or stops it."""
    session = draft.account.spec.session_id
    message = f"session {session} belongs to the older account {older}"
    if draft.status.phase is not Phase.FAILED or draft.status.message != message:
        draft.event("Warning", DUPLICATE_SESSION_ID,
                    f"{message}; nothing is started or stopped for this account")
    draft.status.instance = None
    draft.status.start_attempts = None
    draft.status.last_start_time = None
    draft.phase(Phase.FAILED, message)
    draft.condition(ASSIGNED, "False", DUPLICATE_SESSION_ID, message)
    draft.condition(READY, "False", DUPLICATE_SESSION_ID, message)


def _start_in_flight(draft: _Draft, pod: str, waiting: int | None) -> None:
    """A start is on its way: the instance lists the session (blazz: `qr_scanning`) before
    it answers, which is not yet Pairing; decide once the call returned. A start still
    waiting for its slot says so."""
    if draft.account.spec.desired_state is DesiredState.STOPPED:
        return  # stopped once the start has returned, never half-way
    if waiting is not None:
        _waiting_for_slot(draft, pod, waiting)
        return
    draft.phase(Phase.STARTING, f"asked {pod} to start the session")
    draft.condition(READY, "False", "SessionStarting", f"waiting for {pod} to start it")


def _waiting_for_slot(draft: _Draft, pod: str, place: int) -> None:
    """Starting, its start in line on `pod`. The place is said when the wait begins and
    not rewritten as the line moves (a write per step would be a write per start ahead)."""
    ready = next((c for c in draft.status.conditions if c.type == READY), None)
    if draft.status.phase is Phase.STARTING and ready is not None and \
            ready.reason == WAITING_FOR_START_SLOT and ready.message.endswith(
                f"slot on {pod} {WAVES}"):
        return  # said already
    draft.phase(Phase.STARTING, f"waiting for a start slot on {pod}")
    draft.condition(READY, "False", WAITING_FOR_START_SLOT,
                    f"number {place} in line for a start slot on {pod} {WAVES}")


def _recorded_pod(account: Account) -> str | None:
    instance = account.status.instance
    return instance.pod if instance else None


def _stop(draft: _Draft, holders: list[PodSnapshot], running: list[PodSnapshot]) -> None:
    session = draft.account.spec.session_id
    draft.actions.extend(StopSession(p.name) for p in running)
    if running and draft.account.status.phase is not Phase.STOPPED:
        draft.event("Normal", "Stopping", f"asked {', '.join(p.name for p in running)} to stop")
    draft.status.instance = None
    draft.status.session_status = holders[0].sessions[session].raw_status if holders else None
    draft.status.start_attempts = None
    draft.status.last_start_time = None
    draft.phase(Phase.STOPPED, "desiredState is Stopped")
    draft.condition(ASSIGNED, "False", "Stopped", "desiredState is Stopped")
    draft.condition(READY, "False", "Stopped", "desiredState is Stopped")


def _observed(
    draft: _Draft, holders: list[PodSnapshot], fleet: Sequence[PodSnapshot], policy: Policy
) -> None:
    session = draft.account.spec.session_id
    if _unconfirmed_copies(draft, holders, policy):
        return
    keeper, *duplicates = holders
    for duplicate in duplicates:
        # Only a copy seen just now is stopped: a failing pod's memory may be stale.
        if (duplicate.health is PodHealth.OK
                and duplicate.sessions[session].state is not SessionState.STOPPED):
            draft.event(
                "Warning", "DuplicateSession",
                f"session {session} also runs on {duplicate.name}: "
                f"{'would stop' if policy.observe_only else 'stopping'} it there, "
                f"keeping {keeper.name}",
            )
            draft.stop(duplicate.name, policy)

    previous = _recorded_pod(draft.account)
    if previous is not None and previous != keeper.name:
        draft.event(
            "Normal", "Reassigned", f"session {session} moved from {previous} to {keeper.name}"
        )
    draft.assign(keeper)
    observed: ObservedSession = keeper.sessions[session]
    draft.status.session_status = observed.raw_status or None
    draft.condition(ASSIGNED, "True", "SessionFound", f"session runs on {keeper.name}")

    state = observed.state
    said = f"{keeper.name} reports {observed.raw_status}"
    if state in (SessionState.WORKING, SessionState.PAIRING):
        draft.status.start_attempts = None
        draft.status.last_start_time = None
    if state is SessionState.WORKING:
        draft.phase(Phase.CONNECTED, f"session is working on {keeper.name}")
        draft.condition(READY, "True", "SessionWorking", said)
        if keeper.view.draining or draft.account.move_to not in (None, keeper.name):
            _move(draft, keeper, fleet, policy)
    elif state is SessionState.PAIRING:
        draft.phase(Phase.PAIRING, f"waiting for a QR code scan on {keeper.name}")
        draft.condition(READY, "False", "WaitingForQRScan", said)
    elif state is SessionState.STARTING:
        draft.phase(Phase.STARTING, f"session is starting on {keeper.name}")
        draft.condition(READY, "False", "SessionStarting", said)
    elif state is SessionState.UNKNOWN:
        draft.phase(draft.status.phase or Phase.STARTING, draft.status.message or "")
        draft.condition(
            READY, "Unknown", "UnknownSessionState",
            f"{keeper.name} reports {observed.raw_status!r}, a state wa-controller does not know",
        )
    elif observed.reconnecting and (left := _grace_left(
            draft.account.failed_since, policy, draft.now)) is not None:
        # The instance is bringing it back by itself: restarting now would fight that.
        draft.recheck_after = left
        draft.phase(Phase.STARTING, f"{keeper.name} is reconnecting the session by itself")
        draft.condition(READY, "False", "SessionReconnecting",
                        f"{said}; restarting it if it is not back within the start grace")
    else:  # stopped or failed while it should run: restart it where it is
        _recover(draft, fleet, policy, restart_on=keeper, observed=observed)


def _unconfirmed_copies(draft: _Draft, holders: list[PodSnapshot], policy: Policy) -> bool:
    """Two answering pods show the session, one of them from before it showed twice.

    An instance that crashed a moment ago still looks healthy in our memory while its
    sessions already run elsewhere: re-ask before choosing a copy or stopping one.
    """
    answering = [p for p in holders if p.health is PodHealth.OK]
    since = draft.account.duplicate_since
    if len(answering) < 2 or since is None:
        return False
    stale = [p for p in answering if p.observed_at is None or p.observed_at < since]
    draft.actions.extend(ProbePod(p.name) for p in stale)
    if stale:
        draft.recheck_after = policy.confirm_after
    return bool(stale)


def _nowhere(draft: _Draft, fleet: Sequence[PodSnapshot], policy: Policy) -> None:
    account = draft.account
    recorded = next((p for p in fleet if p.name == _recorded_pod(account)), None)
    if recorded is not None and recorded.health is PodHealth.AUTH_FAILED:
        # We cannot see its sessions: keep the assignment, never go looking elsewhere.
        draft.condition(
            READY, "Unknown", "InstanceAuthFailed",
            f"{recorded.name} refused the API key; its sessions cannot be checked",
        )
        return
    if recorded is not None and recorded.health is PodHealth.UNREADABLE:
        # It answers, so it is not dead: its sessions run there still, as far as we know.
        draft.condition(
            READY, "Unknown", "InstanceUnreadable",
            f"{recorded.name} answers, but its inventory cannot be read; the session "
            "stays assigned there",
        )
        return
    if any(p.health is PodHealth.UNPROBED and p.view.ready and not p.view.terminating
           for p in fleet):
        # A running pod not asked yet may hold the session: "nowhere" is not known yet.
        draft.recheck_after = policy.confirm_after
        return
    if account.moving_from is not None and account.status.phase is Phase.MOVING:
        _moved_off(draft, fleet, policy, account.moving_from)  # once: then it is Starting
        return
    failure = account.call_failure
    if failure is not None and (left := _grace_left(failure.at, policy, draft.now)) is not None:
        # The last start was refused: say why, and try again (elsewhere if possible) later.
        draft.recheck_after = left
        draft.condition(READY, "False", "InstanceCallFailed",
                        f"{failure.pod} did not start the session: {failure.message}")
        return
    if recorded is not None and recorded.trusted and failure is None:
        # Started there (the grace counts from when the instance accepted the start), or
        # vanished from there, a moment ago: give it time to show up.
        since = max(filter(None, (account.status.last_start_time, account.missing_since,
                                  account.start_accepted_at)), default=None)
        if (left := _grace_left(since, policy, draft.now)) is not None:
            draft.recheck_after = left
            return
    _recover(draft, fleet, policy, restart_on=None, observed=None)


def _grace_left(since: datetime | None, policy: Policy, now: datetime) -> timedelta | None:
    """How long `since` still has to show a session, or None when the grace is over."""
    if since is None or now - since >= policy.start_grace:
        return None
    return policy.start_grace - (now - since)


def _recover(
    draft: _Draft,
    fleet: Sequence[PodSnapshot],
    policy: Policy,
    *,
    restart_on: PodSnapshot | None,
    observed: ObservedSession | None,
) -> None:
    """The session should run and does not: start it again, unless attempts are exhausted."""
    account = draft.account
    status = account.status
    session = account.spec.session_id
    left = _grace_left(status.last_start_time, policy, draft.now)
    if observed is not None and left is not None:
        draft.recheck_after = left
        draft.phase(Phase.FAILED, f"session is {observed.raw_status}; restarting it")
        draft.condition(READY, "False", "SessionFailed", f"instance reports {observed.raw_status}")
        return
    attempts = status.start_attempts or 0
    if attempts >= policy.max_start_attempts:
        if status.phase is not Phase.LOST:
            draft.event(
                "Warning", "Lost",
                f"session {session} did not come up after {attempts} starts; "
                "it needs a human (scan a QR code, or set desiredState to Stopped and back)",
            )
        draft.status.instance = None
        why = f"; last refusal from {account.call_failure.pod}: {account.call_failure.message}" \
            if account.call_failure else ""
        draft.phase(Phase.LOST, f"session found nowhere after {attempts} starts{why}")
        draft.condition(ASSIGNED, "False", "Lost", f"session {session} is on no instance")
        draft.condition(READY, "False", "Lost", f"gave up after {attempts} starts")
        return

    # A session that ran before has stored auth to restore instead of a QR code to scan.
    resume = observed is not None or status.instance is not None or bool(status.session_status)
    invalid = selector_problem(account.spec.instance_selector)
    candidates = [] if invalid else [
        p for p in fleet if matches(p.view.labels, account.spec.instance_selector)]
    group = status.storage_group if resume else None
    if group is not None and any(p.view.storage_group == group for p in candidates):
        # Where its stored login can be read (with none of its group left, anywhere: it
        # will need a QR scan there).
        candidates = [p for p in candidates if p.view.storage_group == group]
    eligible = [p for p in candidates if p.eligible]
    if account.call_failure is not None:  # a pod that just refused: another one if any
        eligible = [p for p in eligible if p.name != account.call_failure.pod] or eligible
    if restart_on is not None and restart_on.view.ready and restart_on.health is PodHealth.OK:
        target = restart_on  # it has the session's auth: restart in place
    elif preferred := [p for p in eligible if p.name == account.move_to]:
        target = preferred[0]
    elif eligible:
        target = least_loaded(eligible)
    else:
        if invalid:
            reason, message = "InvalidSelector", invalid
        elif candidates:
            why = "; ".join(f"{p.name}: {p.why_not_eligible()}" for p in candidates)
            reason, message = "NoEligibleInstance", f"no eligible instance pod ({why})"
        else:
            reason, message = "NoMatchingInstance", "no instance pod matches the selector"
        if draft.status.phase is not Phase.PENDING:
            draft.event("Warning", reason, message)
        draft.status.instance = None
        draft.phase(Phase.PENDING, message)
        draft.condition(ASSIGNED, "False", reason, message)
        draft.condition(READY, "False", "NotPlaced", "the session is not placed on any instance")
        return

    if policy.observe_only:
        _would_start(draft, target, restarting=target is restart_on)
        return
    draft.actions.append(StartSession(target.name, resume=resume))
    draft.status.start_attempts = attempts + 1
    draft.status.last_start_time = draft.now
    draft.status.session_status = observed.raw_status if observed else None
    verb = "restarted" if target is restart_on else "placed"
    draft.event(
        "Normal", "Placed",
        f"session {session} {verb} on {target.name} "
        f"(load {target.load}/{target.capacity}, attempt {attempts + 1})",
    )
    draft.assign(target)
    draft.condition(ASSIGNED, "True", "Placed", f"placed on {target.name}")
    if place := account.start_lines.get(target.name):
        _waiting_for_slot(draft, target.name, place)
    else:
        draft.phase(Phase.STARTING, f"asked {target.name} to start the session")
        draft.condition(READY, "False", "SessionStarting",
                        f"waiting for {target.name} to start it")


def _would_start(draft: _Draft, target: PodSnapshot, *, restarting: bool) -> None:
    """Observing only: record that the session runs nowhere (or failed where it is) and
    say where it would be started; count no attempt."""
    session = draft.account.spec.session_id
    verb, reason = ("restart", WOULD_RESTART) if restarting else ("place", WOULD_PLACE)
    message = f"observe-only: would {verb} session {session} on {target.name}"
    if draft.status.message != message:
        draft.event("Normal", reason, message)
    if restarting:
        draft.phase(Phase.FAILED, message)
        draft.condition(READY, "False", "ObserveOnly", message)
        return
    draft.status.instance = None
    draft.phase(Phase.PENDING, message)
    draft.condition(ASSIGNED, "False", "ObserveOnly", message)
    draft.condition(READY, "False", "NotPlaced", "the session is not placed on any instance")


def _move(draft: _Draft, keeper: PodSnapshot, fleet: Sequence[PodSnapshot],
          policy: Policy) -> None:
    """Move a working session off a draining pod, or to the pod a rebalance chose: stop it
    here first (never two live copies); once a probe shows it gone, it is started on the
    least-loaded eligible pod of the same storage group. Waits, saying why, while no such
    pod has room or another move must finish first."""
    account = draft.account
    session = account.spec.session_id
    group = keeper.view.storage_group
    targets = [p for p in fleet if p.eligible and p.name != keeper.name
               and p.view.storage_group == group
               and matches(p.view.labels, account.spec.instance_selector)]
    why = "drain" if keeper.view.draining else "rebalance"
    if not targets:
        draft.phase(Phase.CONNECTED, f"session is working on {keeper.name}; its move ({why}) "
                    f"waits for room in storage group {group}")
        draft.recheck_after = policy.move_retry
        return
    target = next((p for p in targets if p.name == account.move_to), None) or \
        least_loaded(targets)
    if not account.may_move:
        draft.phase(Phase.CONNECTED, f"session is working on {keeper.name}; its move ({why}) "
                    "waits for its turn (a few moves at a time)")
        return
    draft.stop(keeper.name, policy)
    if policy.observe_only:  # said as WouldStop; the session stays where it is
        return
    draft.event("Normal", "Moving", f"moving session {session} from {keeper.name} to "
                f"{target.name} ({why}): stopping it on {keeper.name} first")
    draft.phase(Phase.MOVING, f"moving from {keeper.name} to {target.name}: stopping it on "
                f"{keeper.name}")
    draft.condition(READY, "False", "Moving",
                    f"stopped on {keeper.name} to be started on {target.name} ({why})")


def _moved_off(draft: _Draft, fleet: Sequence[PodSnapshot], policy: Policy,
               move: MoveStart) -> None:
    """A session stopped for a move shows nowhere: start it on its new pod once the old
    one was asked again after the stop (so no probe can see two copies)."""
    source = next((p for p in fleet if p.name == move.pod), None)
    if source is not None and source.trusted and (
            source.observed_at is None or source.observed_at <= move.stopped_at):
        draft.actions.append(ProbePod(source.name))
        draft.recheck_after = policy.confirm_after
        draft.phase(Phase.MOVING, f"waiting for {move.pod} to confirm the session stopped")
        return
    _recover(draft, fleet, policy, restart_on=None, observed=None)
