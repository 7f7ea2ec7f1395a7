"""The decision table, row by row, on plain data."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from controller.api import DesiredState, InstanceRef, Phase, WAAccountSpec, WAAccountStatus
from controller.decisions import Account, Policy, ProbePod, StartSession, StopSession, decide
from controller.fleet import PodHealth, PodSnapshot, PodView
from controller.instances import ObservedSession, SessionState

NOW = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
POLICY = Policy(start_grace=timedelta(seconds=60), max_start_attempts=3)


def pod(
    name: str,
    *sessions: tuple[str, SessionState],
    health: PodHealth = PodHealth.OK,
    ready: bool = True,
    terminating: bool = False,
    capacity: int = 10,
    labels: dict[str, str] | None = None,
    pending: frozenset[str] = frozenset(),
    observed_at: datetime = NOW,
) -> PodSnapshot:
    view = PodView(
        name=name, namespace="ns", ip=f"10.0.0.{len(name)}", ready=ready,
        terminating=terminating, labels=labels or {}, protocol="blazz", port=3000,
        capacity=capacity, url=f"http://{name}:3000",
    )
    observed = {s: ObservedSession(s, state, state.value.upper()) for s, state in sessions}
    return PodSnapshot(view, health, observed, pending, observed_at)


def account(
    *,
    on: str | None = None,
    phase: Phase | None = None,
    desired: DesiredState = DesiredState.CONNECTED,
    attempts: int | None = None,
    started: datetime | None = None,
    selector: dict[str, str] | None = None,
    seen: str | None = None,
) -> Account:
    instance = (
        InstanceRef(pod=on, url=f"http://{on}:3000", assigned_at=NOW - timedelta(hours=1))
        if on else None
    )
    return Account(
        namespace="ns", name="acc", generation=1,
        spec=WAAccountSpec(session_id="s1", desired_state=desired, instance_selector=selector),
        status=WAAccountStatus(
            phase=phase, instance=instance, start_attempts=attempts, last_start_time=started,
            session_status=seen,
        ),
    )


def settle(acc: Account, fleet: list[PodSnapshot], now: datetime = NOW) -> Account:
    """The account as it is after the decision was written."""
    decision = decide(acc, fleet, POLICY, now)
    return Account(acc.namespace, acc.name, acc.generation, acc.spec, decision.status)


def conditions(status: WAAccountStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def test_session_on_recorded_pod_in_same_state_writes_nothing() -> None:
    fleet = [pod("a", ("s1", SessionState.WORKING)), pod("b")]
    settled = settle(account(on="a"), fleet)

    again = decide(settled, fleet, POLICY, NOW + timedelta(minutes=5))

    assert not again.changes(settled.status)
    assert again.actions == ()
    assert again.events == ()
    assert settled.status.phase is Phase.CONNECTED
    assert conditions(settled.status) == {
        "Assigned": ("True", "SessionFound"), "Ready": ("True", "SessionWorking"),
    }


def test_session_on_another_pod_moves_the_assignment() -> None:
    fleet = [pod("a"), pod("b", ("s1", SessionState.WORKING))]

    decision = decide(account(on="a", phase=Phase.CONNECTED), fleet, POLICY, NOW)

    assert decision.status.instance.pod == "b"
    assert decision.status.instance.url == "http://b:3000"
    assert decision.status.instance.assigned_at == NOW
    assert decision.actions == ()
    assert [e.reason for e in decision.events] == ["Reassigned"]


def test_session_just_started_on_healthy_pod_waits_for_grace() -> None:
    started = NOW - timedelta(seconds=10)
    acc = account(on="a", phase=Phase.STARTING, attempts=1, started=started)

    decision = decide(acc, [pod("a"), pod("b")], POLICY, NOW)

    assert decision.actions == ()
    assert decision.status.instance.pod == "a"


def test_grace_expired_places_again_on_least_loaded() -> None:
    started = NOW - timedelta(seconds=61)
    acc = account(on="a", phase=Phase.STARTING, attempts=1, started=started)
    fleet = [pod("a", ("x", SessionState.WORKING)), pod("b")]

    decision = decide(acc, fleet, POLICY, NOW)

    assert decision.actions == (StartSession("b", resume=True),)
    assert decision.status.start_attempts == 2
    assert decision.status.last_start_time == NOW
    assert decision.status.phase is Phase.STARTING


def test_recorded_pod_gone_places_at_once_and_resumes() -> None:
    acc = account(on="gone", phase=Phase.CONNECTED, seen="connected")

    decision = decide(acc, [pod("a", ("x", SessionState.WORKING)), pod("b")], POLICY, NOW)

    assert decision.actions == (StartSession("b", resume=True),)
    assert decision.status.instance.pod == "b"
    assert [e.reason for e in decision.events] == ["Placed"]


def test_new_account_is_created_not_resumed() -> None:
    decision = decide(account(), [pod("a")], POLICY, NOW)

    assert decision.actions == (StartSession("a", resume=False),)
    assert conditions(decision.status)["Assigned"] == ("True", "Placed")


@pytest.mark.parametrize(
    ("fleet", "why"),
    [
        ([], "no instance pod matches the selector"),
        ([pod("a", ready=False)], "a: not Ready"),
        ([pod("a", terminating=True)], "a: terminating"),
        ([pod("a", ("x", SessionState.WORKING), capacity=1)], "a: full (1/1)"),
        ([pod("a", health=PodHealth.DOWN)], "a: probe down"),
    ],
    ids=["no-pods", "not-ready", "terminating", "full", "down"],
)
def test_no_eligible_pod_leaves_the_account_pending(fleet: list[PodSnapshot], why: str) -> None:
    decision = decide(account(), fleet, POLICY, NOW)

    assert decision.actions == ()
    assert decision.status.phase is Phase.PENDING
    assert conditions(decision.status)["Assigned"] == ("False", "NoEligibleInstance")
    assert why in decision.status.message
    assert [e.reason for e in decision.events] == ["NoEligibleInstance"]
    # Still pending on the next pass: no second event, nothing to write.
    settled = Account("ns", "acc", 1, account().spec, decision.status)
    assert not decide(settled, fleet, POLICY, NOW).changes(settled.status)
    assert decide(settled, fleet, POLICY, NOW).events == ()


def test_pending_account_is_placed_when_a_pod_becomes_eligible() -> None:
    pending = settle(account(), [pod("a", ready=False)])

    decision = decide(pending, [pod("a")], POLICY, NOW + timedelta(seconds=5))

    assert decision.actions == (StartSession("a", resume=False),)
    assert decision.status.phase is Phase.STARTING


def test_pairing_session_shows_pairing() -> None:
    decision = decide(account(on="a"), [pod("a", ("s1", SessionState.PAIRING))], POLICY, NOW)

    assert decision.status.phase is Phase.PAIRING
    assert conditions(decision.status)["Ready"] == ("False", "WaitingForQRScan")
    assert decision.status.session_status == "PAIRING"


def test_starts_exhausted_make_the_account_lost_once() -> None:
    acc = account(on="a", phase=Phase.STARTING, attempts=3, started=NOW - timedelta(minutes=2))

    decision = decide(acc, [pod("a"), pod("b")], POLICY, NOW)

    assert decision.actions == ()
    assert decision.status.phase is Phase.LOST
    assert decision.status.instance is None
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "Lost")]
    lost = Account("ns", "acc", 1, acc.spec, decision.status)
    assert decide(lost, [pod("a"), pod("b")], POLICY, NOW).events == ()


def test_desired_stopped_stops_the_holder() -> None:
    acc = account(on="a", phase=Phase.CONNECTED, desired=DesiredState.STOPPED)

    decision = decide(acc, [pod("a", ("s1", SessionState.WORKING))], POLICY, NOW)

    assert decision.actions == (StopSession("a"),)
    assert decision.status.phase is Phase.STOPPED
    assert decision.status.instance is None


def test_stopped_session_already_stopped_needs_no_action() -> None:
    acc = account(phase=Phase.STOPPED, desired=DesiredState.STOPPED)
    settled = settle(acc, [pod("a", ("s1", SessionState.STOPPED))])

    again = decide(settled, [pod("a", ("s1", SessionState.STOPPED))], POLICY, NOW)

    assert again.actions == ()
    assert not again.changes(settled.status)


def test_back_to_connected_restarts_a_stopped_session_where_it_is() -> None:
    acc = account(phase=Phase.STOPPED)

    decision = decide(acc, [pod("a", ("s1", SessionState.STOPPED)), pod("b")], POLICY, NOW)

    assert decision.actions == (StartSession("a", resume=True),)


def test_session_on_two_pods_keeps_the_working_one() -> None:
    fleet = [pod("a", ("s1", SessionState.PAIRING)), pod("b", ("s1", SessionState.WORKING))]

    decision = decide(account(on="a"), fleet, POLICY, NOW)

    assert decision.status.instance.pod == "b"
    assert decision.actions == (StopSession("a"),)
    assert ("Warning", "DuplicateSession") in [(e.type, e.reason) for e in decision.events]


def test_a_copy_remembered_from_before_it_showed_twice_is_confirmed_before_anything() -> None:
    # The recorded pod crashed a moment ago: its last inventory still lists the session,
    # which already runs on b. Stopping b on that memory would kill the live copy.
    acc = settle(account(on="a"), [pod("a", ("s1", SessionState.WORKING))])
    acc = dataclasses.replace(acc, duplicate_since=NOW - timedelta(seconds=1))
    fleet = [pod("a", ("s1", SessionState.WORKING), observed_at=NOW - timedelta(seconds=9)),
             pod("b", ("s1", SessionState.WORKING))]

    decision = decide(acc, fleet, POLICY, NOW)

    assert decision.actions == (ProbePod("a"),)
    assert not decision.changes(acc.status)
    assert decision.events == ()
    assert decision.recheck_after == POLICY.confirm_after


def test_a_confirmed_duplicate_keeps_the_recorded_copy_and_stops_the_other() -> None:
    acc = settle(account(on="a"), [pod("a", ("s1", SessionState.WORKING))])
    acc = dataclasses.replace(acc, duplicate_since=NOW - timedelta(seconds=1))
    fleet = [pod("a", ("s1", SessionState.WORKING)), pod("b", ("s1", SessionState.WORKING))]

    decision = decide(acc, fleet, POLICY, NOW)

    assert decision.status.instance.pod == "a"
    assert decision.actions == (StopSession("b"),)


def test_a_copy_whose_pod_stopped_answering_is_left_and_the_live_one_recorded() -> None:
    acc = settle(account(on="a"), [pod("a", ("s1", SessionState.WORKING))])
    acc = dataclasses.replace(acc, duplicate_since=NOW - timedelta(seconds=1))
    fleet = [pod("a", ("s1", SessionState.WORKING), health=PodHealth.SUSPECT,
                 observed_at=NOW - timedelta(seconds=9)),
             pod("b", ("s1", SessionState.WORKING))]

    decision = decide(acc, fleet, POLICY, NOW)

    assert decision.status.instance.pod == "b"
    assert decision.actions == ()
    assert [e.reason for e in decision.events] == ["Reassigned"]


def test_auth_failure_on_recorded_pod_keeps_the_assignment_and_scans_nothing() -> None:
    acc = settle(account(on="a"), [pod("a", ("s1", SessionState.WORKING))])
    fleet = [pod("a", health=PodHealth.AUTH_FAILED), pod("b")]

    decision = decide(acc, fleet, POLICY, NOW)

    assert decision.actions == ()
    assert decision.status.instance.pod == "a"
    assert conditions(decision.status)["Ready"] == ("Unknown", "InstanceAuthFailed")


def test_unprobed_recorded_pod_means_no_opinion() -> None:
    acc = settle(account(on="a"), [pod("a", ("s1", SessionState.WORKING))])

    decision = decide(acc, [pod("a", health=PodHealth.UNPROBED), pod("b")], POLICY, NOW)

    assert decision.actions == ()
    assert not decision.changes(acc.status)


def test_suspect_pod_keeps_its_last_inventory() -> None:
    acc = settle(account(on="a"), [pod("a", ("s1", SessionState.WORKING))])
    fleet = [pod("a", ("s1", SessionState.WORKING), health=PodHealth.SUSPECT), pod("b")]

    assert not decide(acc, fleet, POLICY, NOW).changes(acc.status)


def test_unknown_state_word_is_reported_not_fatal() -> None:
    decision = decide(account(on="a"), [pod("a", ("s1", SessionState.UNKNOWN))], POLICY, NOW)

    assert decision.actions == ()
    assert conditions(decision.status)["Ready"] == ("Unknown", "UnknownSessionState")


def test_failed_session_is_restarted_in_place_then_given_time() -> None:
    fleet = [pod("a", ("s1", SessionState.FAILED)), pod("b")]
    first = decide(account(on="a", phase=Phase.CONNECTED), fleet, POLICY, NOW)
    assert first.actions == (StartSession("a", resume=True),)

    settled = Account("ns", "acc", 1, account().spec, first.status)
    waiting = decide(settled, fleet, POLICY, NOW + timedelta(seconds=5))
    assert waiting.actions == ()
    assert waiting.status.phase is Phase.FAILED


def test_instance_selector_narrows_placement() -> None:
    fleet = [pod("a", labels={"pool": "us"}), pod("b", ("x", SessionState.WORKING),
                                                   labels={"pool": "eu"})]

    decision = decide(account(selector={"pool": "eu"}), fleet, POLICY, NOW)

    assert decision.actions == (StartSession("b", resume=False),)


def test_condition_transition_time_moves_only_on_flip() -> None:
    fleet = [pod("a", ("s1", SessionState.WORKING))]
    settled = settle(account(on="a"), fleet)
    ready_since = next(c for c in settled.status.conditions if c.type == "Ready")
    later = NOW + timedelta(minutes=1)

    pairing = decide(settled, [pod("a", ("s1", SessionState.PAIRING))], POLICY, later)
    flipped = next(c for c in pairing.status.conditions if c.type == "Ready")

    assert ready_since.last_transition_time == NOW
    assert flipped.last_transition_time == later


def test_a_fresh_copy_beats_a_failing_pods_memory_and_is_not_stopped() -> None:
    fleet = [pod("a", ("s1", SessionState.WORKING), health=PodHealth.SUSPECT),
             pod("b", ("s1", SessionState.WORKING))]

    decision = decide(account(on="a"), fleet, POLICY, NOW)

    assert decision.status.instance.pod == "b"
    assert decision.actions == ()


def test_a_session_that_just_vanished_from_a_healthy_pod_gets_the_grace() -> None:
    settled = settle(account(on="a"), [pod("a", ("s1", SessionState.WORKING))])
    vanished = Account("ns", "acc", 1, settled.spec, settled.status,
                       missing_since=NOW - timedelta(seconds=20))

    waiting = decide(vanished, [pod("a"), pod("b")], POLICY, NOW)
    expired = decide(vanished, [pod("a"), pod("b")], POLICY, NOW + timedelta(seconds=41))

    assert waiting.actions == ()
    assert waiting.recheck_after == timedelta(seconds=40)
    assert expired.actions == (StartSession("a", resume=True),)


def test_a_session_is_not_placed_while_a_ready_pod_that_may_hold_it_is_not_probed() -> None:
    # At start, before the first probe of "a" answered: s1 may well be running there.
    fleet = [pod("a", health=PodHealth.UNPROBED), pod("b")]
    decision = decide(account(), fleet, POLICY, NOW)
    assert decision.actions == ()
    assert not decision.changes(account().status.model_copy(update={"observed_generation": 1}))
    assert decision.recheck_after == POLICY.confirm_after


def test_an_unprobed_pod_that_is_not_ready_holds_nothing_up() -> None:
    fleet = [pod("a", health=PodHealth.UNPROBED, ready=False), pod("b")]
    assert decide(account(), fleet, POLICY, NOW).actions == (StartSession("b", resume=False),)


def test_an_account_on_a_pod_that_answers_garbage_keeps_its_assignment() -> None:
    acc = account(on="a", phase=Phase.CONNECTED, seen="CONNECTED")
    fleet = [pod("a", health=PodHealth.UNREADABLE), pod("b")]
    decision = decide(acc, fleet, POLICY, NOW)
    assert decision.actions == ()
    assert decision.status.instance is not None
    assert decision.status.instance.pod == "a"
    assert decision.status.phase is Phase.CONNECTED
    assert conditions(decision.status)["Ready"] == ("Unknown", "InstanceUnreadable")


def test_no_new_session_goes_to_a_pod_that_answers_garbage() -> None:
    fleet = [pod("a", health=PodHealth.UNREADABLE), pod("b", capacity=50)]
    assert decide(account(), fleet, POLICY, NOW).actions == (StartSession("b", resume=False),)


def test_two_accounts_naming_one_session_the_newer_fails_and_touches_nothing() -> None:
    acc = dataclasses.replace(account(on="a", phase=Phase.CONNECTED), duplicate_of="older")
    fleet = [pod("a", ("s1", SessionState.WORKING)), pod("b", ("s1", SessionState.WORKING))]
    decision = decide(acc, fleet, POLICY, NOW)
    assert decision.actions == ()
    assert decision.status.phase is Phase.FAILED
    assert decision.status.instance is None
    assert conditions(decision.status)["Assigned"] == ("False", "DuplicateSessionId")
    assert [e.reason for e in decision.events] == ["DuplicateSessionId"]
    stopped = dataclasses.replace(acc, spec=acc.spec.model_copy(
        update={"desired_state": DesiredState.STOPPED}), status=decision.status)
    again = decide(stopped, fleet, POLICY, NOW)  # its desiredState flips: still nothing
    assert again.actions == ()
    assert again.events == ()
