"""Exactly one copy of every session, whatever fails: slow status writes, etcd gone during a
heal, an operator killed between deciding and starting, deleted accounts, pods that answer
garbage or trickle, two accounts naming one session."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client as k8s

from controller import api
from devtools.apiproxy import ApiProxy
from devtools.control_plane import ControlPlane, free_port
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

pytestmark = pytest.mark.integration


def creates(fleet: Fleet) -> tuple[int, int]:
    """(creates, double creates) the simulators received."""
    starts = [sim.starts() for sim in fleet.simulators.values()]
    return sum(s["creates"] for s in starts), sum(s["doubleCreates"] for s in starts)


def copies(fleet: Fleet, session: str) -> list[str]:
    return [pod for pod, sim in fleet.simulators.items()
            if sim.sessions().get(session, {}).get("state") not in (None, "stopped")]


def probed(fleet: Fleet, times: int) -> None:
    """Wait until every simulator got `times` more inventory probes: an observation window
    in which nothing more may happen."""
    start = {n: s.requests("GET /api/sessions") for n, s in fleet.simulators.items()}
    wait_for(f"{times} more probes of every pod", lambda: all(
        s.requests("GET /api/sessions") >= start[n] + times
        for n, s in fleet.simulators.items()), timeout=times * 5 + 10)


def tolerant_connected(accounts: Accounts, count: int, pods: set[str]) -> bool:
    """All Connected on `pods`; False (not an error) while the API server recovers."""
    try:
        return all_connected(accounts, count) and {
            (a.get("status") or {}).get("instance", {}).get("pod")
            for a in accounts.all().values()} <= pods
    except k8s.ApiException:
        return False


def warnings(core: k8s.CoreV1Api, accounts: Accounts, name: str, reason: str) -> list[str]:
    return [m for t, r, m in accounts.events(core, name) if (t, r) == ("Warning", reason)]


def test_status_writes_slower_than_the_grace_never_start_a_session_twice(
    namespace: str, fleet: Fleet, accounts: Accounts, proxy: ApiProxy
) -> None:
    for name in ("wa-0", "wa-1", "wa-2"):
        fleet.add(name)
    sessions = [f"s{i}" for i in range(5)]
    seed_sessions(fleet, accounts, {"wa-0": sessions})
    with running_operator(settings(namespace, start_grace=3.0)):
        wait_for("every account Connected and mirrored", lambda: all_settled(accounts, 5))
        proxy.status_delay = 6.0  # every status write now takes twice the grace
        fleet.remove("wa-0")
        wait_for("every account Connected elsewhere",
                 lambda: tolerant_connected(accounts, 5, {"wa-1", "wa-2"}), timeout=90)
        probed(fleet, 8)  # longer than a delayed write plus the grace: no second start
        assert creates(fleet) == (5, 0)
        assert all(len(copies(fleet, s)) == 1 for s in sessions)
        placed = [r for s in sessions for _, r, _ in accounts.events(fleet.core, s)
                  if r == "Placed"]
        assert len(placed) == 5


def test_etcd_killed_during_a_heal_starts_each_session_once(
    namespace: str, fleet: Fleet, accounts: Accounts, control_plane: ControlPlane
) -> None:
    for name in ("wa-0", "wa-1", "wa-2"):
        fleet.add(name)
    sessions = [f"e{i}" for i in range(6)]
    seed_sessions(fleet, accounts, {"wa-0": sessions})
    with running_operator(settings(namespace, start_grace=3.0)):
        wait_for("every account Connected and mirrored", lambda: all_settled(accounts, 6))
        fleet.remove("wa-0")
        control_plane.kill_etcd()
        try:
            time.sleep(10)  # the operator decides and fails to write, over and over
        finally:
            control_plane.start_etcd()
        wait_for("every account Connected elsewhere",
                 lambda: tolerant_connected(accounts, 6, {"wa-1", "wa-2"}), timeout=120)
        probed(fleet, 5)
        assert creates(fleet) == (6, 0)
        assert all(len(copies(fleet, s)) == 1 for s in sessions)


def test_an_operator_killed_between_deciding_and_starting_starts_the_session_once(
    namespace: str, fleet: Fleet, accounts: Accounts, proxy: ApiProxy, tmp_path: Path
) -> None:
    wa0 = fleet.add("wa-0", auto_pair=0.2)
    proxy.status_delay = 4.0
    log = (tmp_path / "operator.log").open("wb")
    argv = [sys.executable, "-m", "controller", "run", f"--namespaces={namespace}",
            f"--operator-namespace={namespace}", "--probe-interval=1", "--start-grace=5",
            "--liveness-port=off", "--metrics-port=off", "--webhook-port=off",
            f"--database-url=sqlite:///{tmp_path / 'mirror.sqlite'}"]
    first = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        accounts.create("k1")
        # The placement's status write is held in the proxy: the start has not gone out.
        wait_for("the placement's status write on its way", lambda: proxy.held >= 1)
        assert wa0.starts()["creates"] == 0
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    proxy.status_delay = 0.0
    second = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for("k1 Connected", lambda: all_connected(accounts, 1), timeout=60)
        probed(fleet, 3)
        assert (wa0.starts()["creates"], wa0.starts()["doubleCreates"]) == (1, 0)
    finally:
        second.terminate()
        second.wait(timeout=20)


def test_deleted_accounts_have_their_sessions_stopped_and_unmanaged_ones_are_left(
    namespace: str, fleet: Fleet, accounts: Accounts, tmp_path: Path
) -> None:
    wa0 = fleet.add("wa-0")
    seed_sessions(fleet, accounts, {"wa-0": ["x1", "x2", "x3"]})
    wa0.put("foreign", "working")  # no account names it: someone else's
    port = free_port()
    config = settings(namespace, database_url=f"sqlite:///{tmp_path / 'mirror.sqlite'}",
                      metrics_port=port)
    with running_operator(config):
        wait_for("every account Connected and mirrored", lambda: all_settled(accounts, 3))
        accounts.custom.delete_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.PLURAL, "x1")
        wait_for("x1 stopped on wa-0", lambda: "x1" not in wa0.sessions())
        wait_for("the unmanaged session reported",
                 lambda: scrape(port).get(f'wa_controller_unmanaged_sessions{{namespace='
                                          f'"{namespace}",pod="wa-0"}}') == 1)
        probed(fleet, 3)
        assert len(warnings(fleet.core, accounts, "wa-0", "UnmanagedSessions")) == 1
    # Deleted while no operator runs: the next one finds and stops its session.
    accounts.custom.delete_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.PLURAL, "x2")
    assert "x2" in wa0.sessions()
    with running_operator(config):
        wait_for("x2 stopped on wa-0", lambda: "x2" not in wa0.sessions())
        probes = wa0.requests("GET /api/sessions")
        wait_for("three more probes", lambda: wa0.requests("GET /api/sessions") >= probes + 3)
    assert set(wa0.sessions()) == {"x3", "foreign"}  # the unmanaged one is left running
    # One Warning per operator run that found it, not one per sweep.
    assert len(warnings(fleet.core, accounts, "wa-0", "UnmanagedSessions")) == 2
    logins = fleet.storage_dir
    assert logins is not None
    assert {"x1", "x2"} <= {p.name for p in logins.iterdir()}


@pytest.mark.parametrize("fault", ["html", "garbage"])
def test_a_pod_that_answers_garbage_keeps_its_sessions_and_accounts(
    namespace: str, fleet: Fleet, accounts: Accounts, fault: str
) -> None:
    wa0, wa1 = fleet.add("wa-0"), fleet.add("wa-1")
    seed_sessions(fleet, accounts, {"wa-0": ["g1", "g2"], "wa-1": ["h1"]})
    with running_operator(settings(namespace, probe_failure_threshold=2)):
        wait_for("every account Connected and mirrored", lambda: all_settled(accounts, 3))
        before = {n: a["metadata"]["resourceVersion"] for n, a in accounts.all().items()}
        wa0.fault(fault)
        probes = wa0.requests()
        wait_for("five more probes of wa-0 (past the threshold)",
                 lambda: wa0.requests() >= probes + 5)
        assert {n: accounts.pod_of(n) for n in ("g1", "g2", "h1")} == {
            "g1": "wa-0", "g2": "wa-0", "h1": "wa-1"}
        for name in ("g1", "g2"):
            ready = next(c for c in accounts.status(name)["conditions"] if c["type"] == "Ready")
            assert (ready["status"], ready["reason"]) == ("Unknown", "InstanceUnreadable")
        assert accounts.get("h1")["metadata"]["resourceVersion"] == before["h1"]
        assert wa1.starts()["creates"] == 0
        [warning] = warnings(fleet.core, accounts, "wa-0", "InstanceUnreadable")
        assert ("HTTP 500" if fault == "html" else "not JSON") in warning

        wa0.fault("none")
        wait_for("g1 and g2 Ready again", lambda: all(
            c["status"] == "True" for n in ("g1", "g2")
            for c in accounts.status(n)["conditions"] if c["type"] == "Ready"))
        assert wa1.starts()["creates"] == 0


def test_one_bad_entry_is_named_and_the_others_count(
    namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    wa0 = fleet.add("wa-0")
    seed_sessions(fleet, accounts, {"wa-0": ["q1", "q2"]})
    with running_operator(settings(namespace)):
        wait_for("every account Connected and mirrored", lambda: all_settled(accounts, 2))
        before = {n: a["metadata"]["resourceVersion"] for n, a in accounts.all().items()}
        wa0.configure(extraEntries=[{"status": "connected"}, "not an entry"])
        wait_for("the Warning naming the bad entries",
                 lambda: warnings(fleet.core, accounts, "wa-0", "InventoryEntrySkipped"))
        [warning] = warnings(fleet.core, accounts, "wa-0", "InventoryEntrySkipped")
        assert "entry 2: no session_id" in warning
        assert "entry 3" in warning
        probes = wa0.requests("GET /api/sessions")
        wait_for("three more probes", lambda: wa0.requests("GET /api/sessions") >= probes + 3)
        assert {n: a["metadata"]["resourceVersion"] for n, a in accounts.all().items()} == before
        assert wa0.starts()["creates"] == 0


def test_a_trickling_pod_is_cut_at_the_deadline(
    namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    wa0 = fleet.add("wa-0")
    seed_sessions(fleet, accounts, {"wa-0": ["t1"]})
    port = free_port()
    # One byte a second for a 34-byte answer: per-read timeouts of 2 s would never fire.
    with running_operator(settings(namespace, probe_timeout=2.0, metrics_port=port)):
        wait_for("t1 Connected", lambda: all_connected(accounts, 1))
        wa0.fault("trickle", delay=1.0)
        probes = wa0.requests("GET /api/sessions")
        wait_for("three probes of the trickling pod, each cut at 2 s",
                 lambda: wa0.requests("GET /api/sessions") >= probes + 3, timeout=20)
        failures = scrape(port)
        assert failures[f'wa_controller_probe_failures_total{{kind="timeout",namespace='
                        f'"{namespace}",pod="wa-0"}}'] >= 2


def test_two_accounts_naming_one_session_run_it_once(
    namespace: str, fleet: Fleet, accounts: Accounts, tmp_path: Path
) -> None:
    fleet.add("wa-0", auto_pair=0.2)
    fleet.add("wa-1", auto_pair=0.2)
    database = tmp_path / "mirror.sqlite"
    with running_operator(settings(namespace, database_url=f"sqlite:///{database}")):
        accounts.create("first", session="shared")
        wait_for("first Connected", lambda: all_connected(accounts, 1))
        time.sleep(1.1)  # a later creation time (the API server counts whole seconds)
        accounts.create("second", session="shared")
        wait_for("second Failed as a duplicate", lambda: any(
            c["type"] == "Assigned" and c["reason"] == "DuplicateSessionId"
            for c in accounts.status("second").get("conditions", [])))
        assert accounts.status("second")["phase"] == "Failed"
        assert "first" in accounts.status("second")["message"]
        assert warnings(fleet.core, accounts, "second", "DuplicateSessionId")
        accounts.patch_spec("second", desiredState="Stopped")
        probed(fleet, 3)
        assert creates(fleet) == (1, 0)
        assert len(copies(fleet, "shared")) == 1
        assert sum(s.starts()["stops"] for s in fleet.simulators.values()) == 0
        assert accounts.status("first")["phase"] == "Connected"

        def live_rows() -> list[str]:
            with sqlite3.connect(database) as db:
                return [r[0] for r in db.execute(
                    "SELECT name FROM whatsapp_accounts WHERE session_id = 'shared' "
                    "AND deleted_at IS NULL")]

        wait_for("one live mirror row for the session", lambda: live_rows() == ["first"])
        accounts.patch_spec("second", desiredState="Connected")
        accounts.custom.delete_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.PLURAL, "first")
        wait_for("second takes the session over", lambda: accounts.status("second").get(
            "phase") == "Connected")
        assert creates(fleet) == (1, 0)
        wait_for("one live mirror row, second's", lambda: live_rows() == ["second"])
