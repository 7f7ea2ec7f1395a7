"""The operator end to end: real API server, simulated instances on 127.0.0.x, KopfRunner."""

from __future__ import annotations

from collections import Counter

import pytest

from devtools.control_plane import free_port
from devtools.harness import (
    Accounts,
    Fleet,
    all_connected,
    all_settled,
    running_operator,
    scrape,
    seed_sessions,
    wait_for,
)
from devtools.harness import operator_settings as settings
from tests.conftest import API_KEY

pytestmark = pytest.mark.integration


def placement(accounts: Accounts) -> Counter[str]:
    return Counter(
        (a.get("status") or {}).get("instance", {}).get("pod") for a in accounts.all().values()
    )


def placed_count(accounts: Accounts) -> int:
    return sum(n for pod, n in placement(accounts).items() if pod)


def held(fleet: Fleet) -> int:
    return sum(len(s.sessions()) for s in fleet.simulators.values())


def test_a_burst_of_accounts_spreads_evenly(namespace: str, fleet: Fleet, accounts: Accounts
                                           ) -> None:
    for name in ("wa-0", "wa-1", "wa-2"):
        fleet.add(name)
    with running_operator(settings(namespace)):
        for i in range(30):
            accounts.create(f"acc-{i:02d}")

        wait_for("30 accounts placed", lambda: placed_count(accounts) == 30)
        assert placement(accounts) == {"wa-0": 10, "wa-1": 10, "wa-2": 10}
        wait_for("the simulators to hold 30 sessions", lambda: held(fleet) == 30)
        assert {n: len(s.sessions()) for n, s in fleet.simulators.items()} == {
            "wa-0": 10, "wa-1": 10, "wa-2": 10}


def resource_versions(accounts: Accounts) -> dict[str, str]:
    return {n: a["metadata"]["resourceVersion"] for n, a in accounts.all().items()}


def test_instance_crash_moves_only_the_affected_accounts(
    namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    for name in ("wa-0", "wa-1", "wa-2"):
        fleet.add(name)
    seed_sessions(fleet, accounts, {"wa-0": ["a1", "a2"], "wa-1": ["b1", "b2"], "wa-2": ["c1"]})
    port = free_port()
    with running_operator(settings(namespace, metrics_port=port)):
        wait_for("every account Connected and mirrored", lambda: all_settled(accounts, 5))
        assert accounts.pod_of("a1") == "wa-0"
        before = resource_versions(accounts)

        # wa-0 crashes; its sessions come back on the other instances by themselves.
        fleet.simulators["wa-0"].fault("crash")
        fleet.set_status("wa-0", ready=False)
        fleet.simulators["wa-0"].move("a1", fleet.simulators["wa-1"])
        fleet.simulators["wa-0"].move("a2", fleet.simulators["wa-2"])

        wait_for("a1 and a2 reassigned",
                 lambda: (accounts.pod_of("a1"), accounts.pod_of("a2")) == ("wa-1", "wa-2"))
        after = resource_versions(accounts)
        assert {n for n in before if before[n] != after[n]} == {"a1", "a2"}
        assert accounts.status("a1")["instance"]["url"] == fleet.simulators["wa-1"].url
        wait_for("a Reassigned event", lambda: "Reassigned" in
                 [r for _, r, _ in accounts.events(fleet.core, "a1")])
        reasons = [reason for _, reason, _ in accounts.events(fleet.core, "a1")]
        assert "Placed" not in reasons
        scraped = scrape(port)
        labels = f'namespace="{namespace}"'
        assert scraped[f"wa_controller_reassignments_total{{{labels}}}"] == 2
        assert scraped[f'wa_controller_instance_sessions{{{labels},pod="wa-1"}}'] == 3
        assert scraped[f'wa_controller_probe_failures_total{{kind="transport",{labels},'
                       f'pod="wa-0"}}'] > 0


def test_sessions_restored_elsewhere_before_the_crash_is_noticed_are_not_stopped(
    namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    # wa-0 still looks Ready and healthy in memory when its sessions already run on
    # wa-1: the live copies must be kept, not stopped as duplicates.
    for name in ("wa-0", "wa-1"):
        fleet.add(name)
    seed_sessions(fleet, accounts, {"wa-0": ["a1", "a2", "a3"]})
    with running_operator(settings(namespace, probe_interval=3.0, probe_failure_threshold=3)):
        wait_for("every account Connected", lambda: all_connected(accounts, 3))
        fleet.simulators["wa-0"].fault("crash")
        for session in ("a1", "a2", "a3"):
            fleet.simulators["wa-1"].put(session)

        wait_for("a1, a2 and a3 recorded on wa-1",
                 lambda: {accounts.pod_of(s) for s in ("a1", "a2", "a3")} == {"wa-1"})
        assert set(fleet.simulators["wa-1"].sessions()) == {"a1", "a2", "a3"}
        reasons = {r for s in ("a1", "a2", "a3") for _, r, _ in accounts.events(fleet.core, s)}
        assert "DuplicateSession" not in reasons


def test_server_restart_shuffles_sessions_and_all_are_corrected(
    namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    for name in ("wa-0", "wa-1", "wa-2"):
        fleet.add(name)
    layout = {"wa-0": ["s0", "s1"], "wa-1": ["s2", "s3"], "wa-2": ["s4", "s5"]}
    seed_sessions(fleet, accounts, layout)
    with running_operator(settings(namespace)):
        wait_for("every account Connected", lambda: all_connected(accounts, 6))
        shuffled = {"wa-0": ["s2", "s5"], "wa-1": ["s0", "s4"], "wa-2": ["s1", "s3"]}
        for sim in fleet.simulators.values():
            sim.control("POST", "reset")
        for pod, sessions in shuffled.items():
            for session in sessions:
                fleet.simulators[pod].put(session, "working")

        expected = {s: pod for pod, sessions in shuffled.items() for s in sessions}
        wait_for("every account to follow its session",
                 lambda: {s: accounts.pod_of(s) for s in expected} == expected)
        wait_for("every account Connected again", lambda: all_connected(accounts, 6))


def test_missing_session_is_started_and_lost_after_attempts(
    namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    fleet.add("wa-0")
    with running_operator(settings(namespace, start_grace=1.0, max_start_attempts=2)):
        accounts.create("fresh")
        wait_for("fresh waiting for a QR scan",
                 lambda: accounts.status("fresh").get("phase") == "Pairing")
        assert fleet.simulators["wa-0"].sessions()["fresh"]["status"] == "qr_scanning"

        fleet.simulators["wa-0"].configure(dropStarts=True)
        accounts.create("doomed")
        wait_for("doomed Lost", lambda: accounts.status("doomed").get("phase") == "Lost",
                 timeout=30)
        status = accounts.status("doomed")
        assert status["startAttempts"] == 2
        assert "instance" not in status
        wait_for("a Lost warning", lambda: ("Warning", "Lost") in
                 [(t, r) for t, r, _ in accounts.events(fleet.core, "doomed")])


def test_desired_stopped_stops_and_connected_starts_again(
    namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    fleet.add("wa-0", protocol="waha")
    fleet.simulators["wa-0"].put("shop", "working")
    accounts.create("shop")
    with running_operator(settings(namespace)):
        wait_for("shop Connected", lambda: all_connected(accounts, 1))

        accounts.patch_spec("shop", desiredState="Stopped")
        wait_for("the session stopped on its instance",
                 lambda: fleet.simulators["wa-0"].sessions()["shop"]["status"] == "STOPPED")
        wait_for("phase Stopped", lambda: accounts.status("shop").get("phase") == "Stopped")

        accounts.patch_spec("shop", desiredState="Connected")
        wait_for("the session working again",
                 lambda: fleet.simulators["wa-0"].sessions()["shop"]["status"] == "WORKING")
        wait_for("shop Connected again", lambda: all_connected(accounts, 1))


@pytest.mark.parametrize("protocol", ["blazz", "waha"])
def test_wrong_api_key_is_a_condition_not_a_scan_storm(
    namespace: str, fleet: Fleet, accounts: Accounts, core, protocol: str
) -> None:
    holder = fleet.add("wa-0", protocol=protocol)
    other = fleet.add("wa-1", protocol=protocol)
    holder.put("shop", "working")
    accounts.create("shop")
    with running_operator(settings(namespace)) as runner:
        wait_for("shop Connected", lambda: all_connected(accounts, 1))

        holder.configure(apiKey="rotated-key")
        wait_for("Ready=Unknown InstanceAuthFailed", lambda: any(
            c["type"] == "Ready" and c["reason"] == "InstanceAuthFailed"
            for c in accounts.status("shop").get("conditions", [])))
        assert accounts.pod_of("shop") == "wa-0"
        assert "shop" not in other.sessions()  # nothing was started elsewhere
        pod_events = [e.reason for e in core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=wa-0").items]
        assert pod_events.count("InstanceAuthFailed") == 1

        # The operator's key is fixed to match: the account recovers.
        core.patch_namespaced_secret("wa-controller-instances", namespace, {
            "stringData": {"api-key": "rotated-key"}})
        other.configure(apiKey="rotated-key")
        wait_for("Ready=True again", lambda: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in accounts.status("shop").get("conditions", [])), timeout=30)
    # The keys never reach the logs, though blazz sends them in the query string.
    assert "InstanceAuthFailed" in runner.output or "refused the API key" in runner.output
    assert API_KEY not in runner.output
    assert "rotated-key" not in runner.output


@pytest.mark.parametrize("fault", ["hang", "slow", "garbage"])
def test_a_bad_pod_does_not_delay_the_others(
    namespace: str, fleet: Fleet, accounts: Accounts, fault: str
) -> None:
    for name in ("wa-0", "wa-1", "wa-2"):
        fleet.add(name)
    seed_sessions(fleet, accounts, {"wa-0": ["bad-1"], "wa-1": ["ok-1"], "wa-2": ["ok-2"]})
    # A probe of wa-0 takes up to 20 s (hang, slow) while the others answer at once.
    with running_operator(settings(namespace, probe_interval=1.0, probe_timeout=20.0,
                                   probe_failure_threshold=5)):
        wait_for("every account Connected", lambda: all_connected(accounts, 3))
        wa0, wa2 = fleet.simulators["wa-0"], fleet.simulators["wa-2"]
        fleet.simulators["wa-0"].fault(fault, delay=20.0)
        bad_before = wa0.requests("GET /api/sessions")
        wait_for("wa-0's probe to be stuck", lambda: fault == "garbage" or
                 wa0.requests("GET /api/sessions") > bad_before)
        bad, good = wa0.requests("GET /api/sessions"), wa2.requests("GET /api/sessions")

        fleet.simulators["wa-1"].move("ok-1", wa2)
        wait_for("ok-1 follows its session", lambda: accounts.pod_of("ok-1") == "wa-2",
                 timeout=15)
        wait_for("five more probes of wa-2", lambda: wa2.requests("GET /api/sessions")
                 >= good + 5)
        if fault != "garbage":  # meanwhile wa-0 is still on the one probe it got stuck in
            assert wa0.requests("GET /api/sessions") == bad


def test_operator_restart_replaces_nothing(
    namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    for name in ("wa-0", "wa-1"):
        fleet.add(name)
    seed_sessions(fleet, accounts, {"wa-0": ["r0", "r1"], "wa-1": ["r2"]})
    with running_operator(settings(namespace)):
        wait_for("every account Connected and mirrored", lambda: all_settled(accounts, 3))
    before = resource_versions(accounts)
    requests_before = sum(len(s.sessions()) for s in fleet.simulators.values())

    with running_operator(settings(namespace)) as runner:
        wait_for("the restarted operator to probe the fleet",
                 lambda: all(s.requests() > 2 for s in fleet.simulators.values()))
        wait_for("a few probe cycles", lambda: all(s.requests() > 6
                                                    for s in fleet.simulators.values()))
    assert resource_versions(accounts) == before
    assert sum(len(s.sessions()) for s in fleet.simulators.values()) == requests_before
    assert "Placed" not in runner.output


def test_ineligible_pods_get_nothing_and_pending_accounts_wait_for_room(
    namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    fleet.add("full", capacity=1).put("already-there", "working")
    fleet.add("unready", ready=False)
    fleet.add("leaving")
    fleet.terminate("leaving")
    with running_operator(settings(namespace)):
        accounts.create("waiting")
        wait_for("waiting Pending", lambda: accounts.status("waiting").get("phase") == "Pending")
        assigned = next(c for c in accounts.status("waiting")["conditions"]
                        if c["type"] == "Assigned")
        assert assigned["status"] == "False"
        assert "full (1/1)" in assigned["message"]
        assert "not Ready" in assigned["message"]
        assert "terminating" in assigned["message"]

        fleet.set_status("unready", ready=True)
        # The status names the pod as soon as the start is in line for its slot; the
        # session is on the instance once the start call went out.
        wait_for("waiting placed and started once a pod is eligible",
                 lambda: accounts.pod_of("waiting") == "unready"
                 and "waiting" in fleet.simulators["unready"].sessions())
        assert fleet.simulators["leaving"].sessions() == {}
