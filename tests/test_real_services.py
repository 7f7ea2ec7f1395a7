"""The operator against the faithful simulator: what the real blazz and WAHA services do
(`../shared/recordings/`) and the idealized ones did not: a restore that always fails, a
session listed without a status, a create that answers after 30 s and must never be sent
twice, instances that re-create every session at boot, WAHA Core's one `default` session.
"""

from __future__ import annotations

import time

import pytest

from devtools.harness import (
    Accounts,
    Fleet,
    all_connected,
    all_settled,
    running_operator,
    seed_sessions,
    wait_for,
)
from devtools.harness import operator_settings as settings

pytestmark = pytest.mark.integration


def resource_versions(accounts: Accounts) -> dict[str, str]:
    return {n: a["metadata"]["resourceVersion"] for n, a in accounts.all().items()}


def copies(fleet: Fleet, session: str) -> list[str]:
    """The pods where the session runs (any state but stopped)."""
    return [pod for pod, sim in fleet.simulators.items()
            if sim.sessions().get(session, {}).get("state") not in (None, "stopped")]


def warnings(fleet: Fleet, accounts: Accounts, name: str, reason: str) -> list[str]:
    return [m for t, r, m in accounts.events(fleet.core, name) if (t, r) == ("Warning", reason)]


def test_blazz_a_dead_pods_account_is_restarted_elsewhere_through_the_failing_restore(
    namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    fleet.add("wa-0")
    wa1 = fleet.add("wa-1", capacity=5)
    seed_sessions(fleet, accounts, {"wa-0": ["a1"]})
    with running_operator(settings(namespace)):
        wait_for("a1 Connected on wa-0", lambda: accounts.pod_of("a1") == "wa-0"
                 and all_connected(accounts, 1))
        fleet.remove("wa-0")

        wait_for("a1 Connected on wa-1", lambda: accounts.pod_of("a1") == "wa-1"
                 and all_connected(accounts, 1), timeout=30)
        # The recorded service answers every restore with 500: one restore, one create.
        starts = wa1.starts()
        assert (starts["restores"], starts["creates"], starts["doubleCreates"]) == (1, 1, 0)
        assert "startAttempts" not in accounts.status("a1")  # cleared once it runs
        assert "Lost" not in [r for _, r, _ in accounts.events(fleet.core, "a1")]


def test_blazz_one_session_listed_without_status_keeps_the_pod_and_its_accounts(
    namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    wa0, wa1 = fleet.add("wa-0"), fleet.add("wa-1")
    seed_sessions(fleet, accounts, {"wa-0": ["a1", "a2", "a3"]})
    with running_operator(settings(namespace)):
        wait_for("every account Connected and mirrored", lambda: all_settled(accounts, 3))
        before = resource_versions(accounts)

        # The service restored a session by itself: its entry has no status key at all.
        wa0.control("PUT", "sessions/restored-by-the-service", {"status": None, "quiet": True})
        probes = wa0.requests("GET /api/sessions")
        wait_for("four more probes of wa-0",
                 lambda: wa0.requests("GET /api/sessions") >= probes + 4)
        assert resource_versions(accounts) == before
        assert {n: accounts.pod_of(n) for n in before} == {"a1": "wa-0", "a2": "wa-0",
                                                          "a3": "wa-0"}
        assert wa0.starts()["creates"] == wa1.starts()["creates"] == 0

        # An account's own session listed without status: still held there, not moved.
        wa0.control("PUT", "sessions/a1", {"status": None, "quiet": True})
        wait_for("a1's readiness Unknown", lambda: any(
            c["type"] == "Ready" and c["status"] == "Unknown"
            for c in accounts.status("a1").get("conditions", [])))
        assert accounts.pod_of("a1") == "wa-0"
        assert wa0.starts()["creates"] == wa1.starts()["creates"] == 0


def test_blazz_a_create_that_takes_30_s_is_sent_once_and_the_account_waits(
    namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    wa0 = fleet.add("wa-0", create_delay=30.0, auto_pair=0.5)
    with running_operator(settings(namespace, start_grace=3.0)):
        accounts.create("slow")
        wait_for("the create on its way", lambda: wa0.starts()["creating"] == 1)
        phases = set()
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:  # the whole time the create runs
            phases.add(accounts.status("slow").get("phase"))
            assert wa0.sessions()["slow"]["status"] == "qr_scanning"
            time.sleep(0.5)
        assert phases == {"Starting"}

        wait_for("slow Connected", lambda: all_connected(accounts, 1), timeout=30)
        starts = wa0.starts()
        assert (starts["creates"], starts["doubleCreates"]) == (1, 0)
        reasons = [r for _, r, _ in accounts.events(fleet.core, "slow")]
        assert reasons.count("Placed") == 1
        assert "Lost" not in reasons


def test_blazz_instances_that_recreate_every_session_at_boot_converge_to_one_copy_each(
    namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    sessions = [f"s{i}" for i in range(6)]
    for name in ("wa-0", "wa-1", "wa-2"):
        fleet.add(name)
    seed_sessions(fleet, accounts, {"wa-0": ["s0", "s1"], "wa-1": ["s2", "s3"],
                                    "wa-2": ["s4", "s5"]})
    with running_operator(settings(namespace)):
        wait_for("every account Connected", lambda: all_connected(accounts, 6))
        # A server restart: every instance comes back and creates every active account.
        for sim in fleet.simulators.values():
            sim.configure(bootSessions=sessions)
            sim.control("POST", "reset")

        wait_for("exactly one copy of every session, every account Connected",
                 lambda: all(len(copies(fleet, s)) == 1 for s in sessions)
                 and all_connected(accounts, 6), timeout=60)
        time.sleep(3)  # several probe intervals: nothing else may be stopped or started
        assert all(len(copies(fleet, s)) == 1 for s in sessions)
        assert {n: accounts.pod_of(n) for n in sessions} == {
            s: copies(fleet, s)[0] for s in sessions}
        stops = sum(sim.starts()["stops"] for sim in fleet.simulators.values())
        creates = sum(sim.starts()["creates"] for sim in fleet.simulators.values())
        assert (stops, creates) == (12, 18)  # 18 boot-time copies, 12 stopped, none started


def test_waha_core_pods_run_one_account_each(
    namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    cores = {name: fleet.add(name, "waha", tier="core", auto_pair=0.5)
             for name in ("core-0", "core-1")}
    with running_operator(settings(namespace)):
        accounts.create("acc-a")
        wait_for("acc-a Connected", lambda: all_connected(accounts, 1))
        accounts.create("acc-b")
        wait_for("acc-a and acc-b Connected", lambda: all_connected(accounts, 2))
        pods = {accounts.pod_of("acc-a"), accounts.pod_of("acc-b")}
        assert pods == {"core-0", "core-1"}
        for name in ("acc-a", "acc-b"):
            held = cores[accounts.pod_of(name)].sessions()
            assert list(held) == ["default"]
            assert held["default"]["config"]["metadata"] == {"wa-controller.io/session": name}

        accounts.create("acc-c")  # two Core pods hold two sessions: no room for a third
        wait_for("acc-c Pending", lambda: accounts.status("acc-c").get("phase") == "Pending")
        assert "full (1/1)" in accounts.status("acc-c")["message"]
        assert all(sim.starts()["creates"] == 1 for sim in cores.values())


def test_waha_a_refused_start_is_quoted_in_an_event_and_the_condition(
    namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    # A Core release whose tier cannot be asked: the pod is taken for a multi-session one,
    # and the instance refuses any session not named `default`.
    core = fleet.add("core-0", "waha", tier="core")
    core.configure(versionEndpoint=False)
    with running_operator(settings(namespace, start_grace=30.0)):
        accounts.create("acc-x")
        wait_for("the refusal in a Warning event",
                 lambda: warnings(fleet, accounts, "acc-x", "InstanceCallFailed"))
        [message] = warnings(fleet, accounts, "acc-x", "InstanceCallFailed")
        assert "WAHA Core support only 'default' session" in message
        wait_for("the refusal in the Ready condition", lambda: any(
            c["type"] == "Ready" and c["reason"] == "InstanceCallFailed"
            and "WAHA Core support only 'default' session" in c["message"]
            for c in accounts.status("acc-x").get("conditions", [])))
        assert accounts.status("acc-x")["phase"] != "Lost"
        assert "Placed" not in [r for _, r, _ in accounts.events(fleet.core, "acc-x")]


def test_waha_core_accepting_any_key_is_reported_once_on_the_pod(
    namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    core = fleet.add("core-0", "waha", tier="core")
    with running_operator(settings(namespace)):
        accounts.create("acc-a")
        wait_for("the Warning on the pod",
                 lambda: warnings(fleet, accounts, "core-0", "InstanceAcceptsAnyKey"))
        probes = core.requests("GET /api/sessions")
        wait_for("three more probes", lambda: core.requests("GET /api/sessions") >= probes + 3)
        [message] = warnings(fleet, accounts, "core-0", "InstanceAcceptsAnyKey")
        assert "2024.10.8 CORE" in message
