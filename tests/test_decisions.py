"""The decision table, row by row, on plain data."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from controller.api import DesiredState, InstanceRef, Phase, WAAccountSpec, WAAccountStatus
from controller.decisions import (
    Account,
    MoveStart,
    Policy,
    ProbePod,
    StartSession,
    StopSession,
    decide,
)
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
    group: str = "shared",
    draining: bool = False,
) -> PodSnapshot:
    view = PodView(
        name=name, namespace="ns", ip=f"10.0.0.{len(name)}", ready=ready,
        terminating=terminating, labels=labels or {}, protocol="blazz", port=3000,
        capacity=capacity, url=f"http://{name}:3000", storage_group=group, draining=draining,
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
        ([pod("a", ready=False)], "a: not Ready"),
        ([pod("a", terminating=True)], "a: terminating"),
        ([pod("a", ("x", SessionState.WORKING), capacity=1)], "a: full (1/1)"),
        ([pod("a", health=PodHealth.DOWN)], "a: probe down"),
    ],
    ids=["not-ready", "terminating", "full", "down"],
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


@pytest.mark.parametrize(
    ("fleet", "selector", "reason", "why"),
    [
        ([], None, "NoMatchingInstance", "no instance pod matches the selector"),
        ([pod("a", labels={"pool": "eu"})], {"pool": "us"}, "NoMatchingInstance",
         "no instance pod matches the selector"),
        ([pod("a")], {"bad key!": "x"}, "InvalidSelector",
         "instanceSelector key 'bad key!' is not a label key"),
        ([pod("a")], {"pool": "-eu"}, "InvalidSelector",
         "instanceSelector value of 'pool' is not a label value"),
        ([pod("a")], {f"k{n}": "v" for n in range(17)}, "InvalidSelector",
         "instanceSelector has 17 labels; at most 16"),
    ],
    ids=["no-pods", "no-pod-with-labels", "bad-key", "bad-value", "too-many"],
)
def test_a_selector_that_selects_nothing_says_why(
        fleet: list[PodSnapshot], selector: dict[str, str] | None, reason: str, why: str
) -> None:
    decision = decide(account(selector=selector), fleet, POLICY, NOW)

    assert decision.actions == ()
    assert decision.status.phase is Phase.PENDING
    assert conditions(decision.status)["Assigned"] == ("False", reason)
    assert decision.status.message == why
    assert [(e.type, e.reason, e.message) for e in decision.events] == [
        ("Warning", reason, why)]


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


OBSERVING = dataclasses.replace(POLICY, observe_only=True)


def test_observing_only_a_session_found_nowhere_is_said_to_be_placed_not_placed() -> None:
    fleet = [pod("a"), pod("b", ("x", SessionState.WORKING))]
    decision = decide(account(), fleet, OBSERVING, NOW)

    assert decision.actions == ()
    assert decision.status.phase is Phase.PENDING
    assert decision.status.start_attempts is None
    assert conditions(decision.status)["Assigned"] == ("False", "ObserveOnly")
    assert [(e.reason, e.message) for e in decision.events] == [
        ("WouldPlace", "observe-only: would place session s1 on a")]
    settled = Account("ns", "acc", 1, account().spec, decision.status)
    again = decide(settled, fleet, OBSERVING, NOW + timedelta(minutes=5))
    assert (again.changes(settled.status), again.actions, again.events) == (False, (), ())


def test_observing_only_a_failed_session_is_said_to_be_restarted() -> None:
    decision = decide(account(on="a"), [pod("a", ("s1", SessionState.FAILED))], OBSERVING, NOW)

    assert decision.actions == ()
    assert decision.status.phase is Phase.FAILED
    assert decision.status.instance.pod == "a"
    assert [e.reason for e in decision.events] == ["WouldRestart"]


def test_observing_only_a_second_copy_is_said_to_be_stopped() -> None:
    fleet = [pod("a", ("s1", SessionState.WORKING)), pod("b", ("s1", SessionState.PAIRING))]
    decision = decide(account(on="a"), fleet, OBSERVING, NOW)

    assert decision.actions == ()
    assert decision.status.phase is Phase.CONNECTED
    assert [(e.reason, e.message) for e in decision.events] == [
        ("DuplicateSession", "session s1 also runs on b: would stop it there, keeping a"),
        ("WouldStop", "observe-only: would stop session s1 on b")]


def test_observing_only_a_running_session_meant_to_stop_is_recorded_where_it_runs() -> None:
    acc = account(on="a", desired=DesiredState.STOPPED)
    decision = decide(acc, [pod("a", ("s1", SessionState.WORKING))], OBSERVING, NOW)

    assert decision.actions == ()
    assert decision.status.phase is Phase.CONNECTED
    assert decision.status.instance.pod == "a"
    assert [e.reason for e in decision.events] == ["WouldStop"]
    # Not running: Stopped, as without observe-only (nothing to stop, nothing said).
    stopped = decide(acc, [pod("a", ("s1", SessionState.STOPPED))], OBSERVING, NOW)
    assert (stopped.status.phase, stopped.actions, stopped.events) == (Phase.STOPPED, (), ())


def test_observing_only_a_session_seen_on_another_pod_is_reassigned_as_usual() -> None:
    decision = decide(account(on="a"), [pod("a"), pod("b", ("s1", SessionState.WORKING))],
                      OBSERVING, NOW)

    assert decision.status.instance.pod == "b"
    assert [e.reason for e in decision.events] == ["Reassigned"]



# --- moves: drain and rebalance, stop then start, within a storage group ----------------

def load_of(count: int) -> list[tuple[str, SessionState]]:
    """Other sessions that make a pod's load `count`."""
    return [(f"other-{i}", SessionState.WORKING) for i in range(count)]


def moving(acc: Account, **changes: object) -> Account:
    return dataclasses.replace(acc, **changes)


def test_a_working_session_on_a_draining_pod_is_stopped_there_first() -> None:
    fleet = [pod("a", ("s1", SessionState.WORKING), draining=True), pod("b", *load_of(3)),
             pod("c")]
    decision = decide(settle(account(on="a"), fleet[:1] + fleet[1:]), fleet, POLICY, NOW)

    assert decision.actions == (StopSession("a"),)
    assert decision.status.phase is Phase.MOVING
    assert decision.status.message == "moving from a to c: stopping it on a"
    assert conditions(decision.status)["Ready"] == ("False", "Moving")
    assert [(e.reason, e.message) for e in decision.events] == [(
        "Moving", "moving session s1 from a to c (drain): stopping it on a first")]


def test_the_start_elsewhere_waits_for_a_probe_of_the_old_pod_after_the_stop() -> None:
    stopped_at = NOW - timedelta(seconds=2)
    acc = moving(account(on="a", phase=Phase.MOVING),
                 moving_from=MoveStart("a", stopped_at))
    stale = [pod("a", draining=True, observed_at=stopped_at - timedelta(seconds=1)), pod("c")]

    waiting = decide(acc, stale, POLICY, NOW)

    assert waiting.actions == (ProbePod("a"),)
    assert waiting.status.phase is Phase.MOVING
    assert waiting.recheck_after == POLICY.confirm_after

    confirmed = decide(acc, [pod("a", draining=True), pod("c")], POLICY, NOW)
    assert confirmed.actions == (StartSession("c", resume=True),)
    assert confirmed.status.phase is Phase.STARTING
    assert confirmed.recheck_after is None  # no start grace: the stop was ours


def test_a_rebalance_moves_to_the_pod_it_chose() -> None:
    fleet = [pod("a", ("s1", SessionState.WORKING)), pod("b"), pod("c")]
    settled = moving(settle(account(on="a"), fleet), move_to="c")

    decision = decide(settled, fleet, POLICY, NOW)
    assert decision.actions == (StopSession("a"),)
    assert decision.status.message == "moving from a to c: stopping it on a"

    after_stop = moving(settled, status=decision.status, moving_from=MoveStart("a", NOW))
    later = NOW + timedelta(seconds=2)
    start = decide(after_stop, [pod("a", observed_at=later), pod("b"), pod("c")], POLICY, later)
    assert start.actions == (StartSession("c", resume=True),)
    # Placed: the start's own grace applies, as for any start; never a second one meanwhile.
    started = moving(after_stop, status=start.status, start_accepted_at=later)
    waiting = decide(started, [pod("a", observed_at=later), pod("b"), pod("c")], POLICY,
                     later + timedelta(seconds=5))
    assert (waiting.actions, waiting.status.phase) == ((), Phase.STARTING)
    # There: nothing more to do.
    there = [pod("a"), pod("b"), pod("c", ("s1", SessionState.WORKING))]
    done = decide(moving(after_stop, moving_from=None), there, POLICY, later)
    assert (done.actions, done.status.phase) == ((), Phase.CONNECTED)
    assert [e.reason for e in done.events] == ["Reassigned"]


@pytest.mark.parametrize(("fleet", "why"), [
    ([pod("a", ("s1", SessionState.WORKING), draining=True), pod("b", group="other")],
     "waits for room in storage group shared"),
    ([pod("a", ("s1", SessionState.WORKING), draining=True), pod("b", *load_of(10))],
     "waits for room in storage group shared"),
], ids=["other-group-only", "group-full"])
def test_a_move_never_leaves_the_storage_group_it_waits_instead(
        fleet: list[PodSnapshot], why: str) -> None:
    decision = decide(settle(account(on="a"), fleet), fleet, POLICY, NOW)

    assert decision.actions == ()
    assert decision.status.phase is Phase.CONNECTED
    assert decision.status.message.endswith(why)
    # It looks again soon: a pod may be added or emptied meanwhile (nothing else wakes it).
    assert decision.recheck_after == POLICY.move_retry


def test_a_move_waits_for_its_turn() -> None:
    fleet = [pod("a", ("s1", SessionState.WORKING), draining=True), pod("b")]
    decision = decide(moving(settle(account(on="a"), fleet), may_move=False), fleet, POLICY,
                      NOW)

    assert decision.actions == ()
    assert decision.status.message.endswith("waits for its turn (a few moves at a time)")


@pytest.mark.parametrize("state", [SessionState.PAIRING, SessionState.STARTING])
def test_a_session_that_is_not_settled_is_not_moved(state: SessionState) -> None:
    fleet = [pod("a", ("s1", state), draining=True), pod("b")]
    assert decide(settle(account(on="a"), fleet), fleet, POLICY, NOW).actions == ()


def test_a_crash_restart_stays_in_the_storage_group_of_the_stored_login() -> None:
    before = [pod("a", ("s1", SessionState.WORKING), group="eu"), pod("b", group="us"),
              pod("c", *load_of(5), group="eu")]
    settled = settle(account(on="a"), before)
    assert settled.status.storage_group == "eu"
    after_crash = [pod("b", group="us"), pod("c", *load_of(5), group="eu")]

    decision = decide(settled, after_crash, POLICY, NOW)

    assert decision.actions == (StartSession("c", resume=True),)


def test_a_crash_restart_waits_for_room_in_its_group_while_the_group_has_pods() -> None:
    settled = settle(account(on="a"), [pod("a", ("s1", SessionState.WORKING), group="eu")])
    decision = decide(settled, [pod("b", group="us"), pod("c", *load_of(10), group="eu")],
                      POLICY, NOW)

    assert decision.actions == ()
    assert decision.status.phase is Phase.PENDING
    assert decision.status.message == "no eligible instance pod (c: full (10/10))"


def test_with_no_pod_of_its_group_left_a_session_is_started_anywhere() -> None:
    settled = settle(account(on="a"), [pod("a", ("s1", SessionState.WORKING), group="eu")])
    decision = decide(settled, [pod("b", group="us")], POLICY, NOW)

    assert decision.actions == (StartSession("b", resume=True),)


def test_observing_only_a_drain_is_said_not_done() -> None:
    fleet = [pod("a", ("s1", SessionState.WORKING), draining=True), pod("b")]
    decision = decide(settle(account(on="a"), fleet), fleet, OBSERVING, NOW)

    assert decision.actions == ()
    assert decision.status.phase is Phase.CONNECTED
    assert [e.reason for e in decision.events] == ["WouldStop"]



# --- starts in waves: a start waiting for its slot says so, once -------------------------

def ready_condition(status: WAAccountStatus) -> tuple[str, str, str]:
    ready = next(c for c in status.conditions if c.type == "Ready")
    return ready.status, ready.reason, ready.message


def test_a_placement_on_a_pod_whose_start_slots_are_taken_says_its_place_in_line() -> None:
    fleet = [pod("wa-0"), pod("wa-1", ("x", SessionState.WORKING))]
    waiting = dataclasses.replace(account(), start_lines={"wa-0": 7})
    decision = decide(waiting, fleet, POLICY, NOW)
    assert decision.actions == (StartSession("wa-0", resume=False),)  # queued all the same
    assert decision.status.phase is Phase.STARTING
    assert decision.status.message == "waiting for a start slot on wa-0"
    assert ready_condition(decision.status) == (
        "False", "WaitingForStartSlot",
        "number 7 in line for a start slot on wa-0 "
        "(starts go in waves; a wait is not a failed attempt)")
    assert decision.status.start_attempts == 1
    # A line on another pod changes nothing here.
    elsewhere = dataclasses.replace(account(), start_lines={"wa-1": 3})
    assert ready_condition(decide(elsewhere, fleet, POLICY, NOW).status)[1] == \
        "SessionStarting"


def test_a_waiting_start_is_said_once_then_its_turn_is_said() -> None:
    fleet = [pod("wa-0")]
    placed = settle(dataclasses.replace(account(), start_lines={"wa-0": 7}), fleet)
    # The line moves: nothing to write (a write per step would be a write per start ahead).
    moved_up = dataclasses.replace(placed, start_in_flight="wa-0", start_waiting=2)
    decision = decide(moved_up, fleet, POLICY, NOW + timedelta(seconds=30))
    assert not decision.changes(placed.status)
    assert decision.actions == ()
    # Its turn came: it starts now, and says so.
    launching = dataclasses.replace(placed, start_in_flight="wa-0", start_waiting=None)
    decision = decide(launching, fleet, POLICY, NOW + timedelta(seconds=40))
    assert decision.changes(placed.status)
    assert ready_condition(decision.status) == (
        "False", "SessionStarting", "waiting for wa-0 to start it")
    # Waiting long is no failed attempt: no new start is decided while it waits.
    long_wait = dataclasses.replace(placed, start_in_flight="wa-0", start_waiting=1)
    decision = decide(long_wait, fleet, POLICY, NOW + timedelta(hours=1))
    assert decision.actions == ()
    assert decision.status.start_attempts == 1


def test_a_start_queued_without_a_placement_write_says_it_waits() -> None:
    """A restart decided while the pod had room, then queued behind others: shown as such."""
    fleet = [pod("wa-0")]
    placed = settle(account(), fleet)
    assert ready_condition(placed.status)[1] == "SessionStarting"
    queued = dataclasses.replace(placed, start_in_flight="wa-0", start_waiting=4)
    assert ready_condition(decide(queued, fleet, POLICY, NOW).status) == (
        "False", "WaitingForStartSlot",
        "number 4 in line for a start slot on wa-0 "
        "(starts go in waves; a wait is not a failed attempt)")
