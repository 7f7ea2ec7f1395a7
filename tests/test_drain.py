"""Moving sessions safely, against the real API server and the faithful simulator: starts in
waves after a crash, draining a pod (annotated, or deleted with a grace period), a
rebalance planned and applied, all within storage groups, never two live copies."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from controller import api
from controller.mirror import engine_for
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
from tests.test_mirror import MIRROR

pytestmark = pytest.mark.integration


@contextmanager
def watching_for_two_copies(fleet: Fleet) -> Iterator[list[str]]:
    """Ask every simulator for its sessions, over and over, while the block runs: the
    sessions ever seen running on two pods at one look are collected."""
    seen: list[str] = []
    done = threading.Event()

    def look() -> None:
        while not done.is_set():
            running: dict[str, str] = {}
            for name, sim in list(fleet.simulators.items()):
                try:
                    sessions = sim.sessions()
                except Exception:  # noqa: S112 - a pod that went away holds nothing
                    continue
                for session, state in sessions.items():
                    if state["state"] == "stopped":
                        continue
                    if session in running:
                        seen.append(f"{session} on {running[session]} and {name}")
                    running[session] = name
            time.sleep(0.05)

    thread = threading.Thread(target=look, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join(5)


def pods_of(accounts: Accounts) -> dict[str, str | None]:
    return {name: (a.get("status") or {}).get("instance", {}).get("pod")
            for name, a in accounts.all().items()}


def test_a_crash_restarts_its_sessions_in_waves_and_none_is_lost(
    namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    sims = {name: fleet.add(name, capacity=100, auto_pair=0.2, create_delay=0.5)
            for name in ("wa-0", "wa-1", "wa-2")}
    sessions = [f"c{i:02d}" for i in range(60)]
    seed_sessions(fleet, accounts, {"wa-0": sessions})
    with running_operator(settings(namespace, starts_per_pod=3, start_grace=30.0)):
        wait_for("60 accounts Connected", lambda: all_settled(accounts, 60), timeout=60)
        fleet.remove("wa-0")
        # Those whose turn has not come say so, with their place in line.
        waiting = wait_for("an account waiting for a start slot", lambda: [
            ready["message"] for a in accounts.all().values()
            for ready in (a.get("status") or {}).get("conditions", [])
            if ready["type"] == "Ready" and ready["reason"] == "WaitingForStartSlot"])
        assert all(re.fullmatch(r"number \d+ in line for a start slot on wa-[12] \(starts go "
                                r"in waves; a wait is not a failed attempt\)", m)
                   for m in waiting), waiting
        wait_for("all 60 Connected elsewhere", lambda: all_connected(accounts, 60)
                 and set(pods_of(accounts).values()) <= {"wa-1", "wa-2"}, timeout=120)
    peaks = [sims[name].starts()["peakConcurrentCreates"] for name in ("wa-1", "wa-2")]
    assert peaks == [3, 3]  # in waves: as many launches at once as allowed, never more
    assert sum(sims[n].starts()["creates"] for n in ("wa-1", "wa-2")) == 60
    assert all(a["status"]["phase"] != "Lost" for a in accounts.all().values())


def test_draining_a_pod_moves_its_sessions_one_copy_at_a_time_and_undrain_stops_it(
    namespace: str, fleet: Fleet, accounts: Accounts, tmp_path: Path
) -> None:
    for name in ("wa-0", "wa-1", "wa-2"):
        fleet.add(name, capacity=50, create_delay=1.0)
    sessions = [f"d{i:02d}" for i in range(20)]
    seed_sessions(fleet, accounts, {"wa-0": sessions})
    url = f"sqlite:///{tmp_path / 'mirror.sqlite'}"
    engine = engine_for(url)
    port = free_port()

    def metric(name: str, **labels: str) -> float | None:
        shown = ",".join(f'{k}="{v}"' for k, v in sorted({"namespace": namespace,
                                                          **labels}.items()))
        return scrape(port).get(f"{name}{{{shown}}}")

    def mirrored_pods() -> dict[str, str | None]:
        with engine.connect() as db:
            return {r["name"]: r["assigned_pod"] for r in db.execute(
                sa.select(MIRROR)).mappings()}

    with running_operator(settings(namespace, database_url=url, moves_in_flight=2,
                                   metrics_port=port)), \
            watching_for_two_copies(fleet) as copies:
        wait_for("20 accounts Connected", lambda: all_settled(accounts, 20), timeout=60)
        fleet.annotate("wa-0", api.DRAIN_ANNOTATION, "true")
        wait_for("a few moved", lambda: sum(p != "wa-0" for p in pods_of(accounts).values())
                 >= 4, timeout=60)
        fleet.annotate("wa-0", api.DRAIN_ANNOTATION, None)
        moved = sum(p != "wa-0" for p in pods_of(accounts).values())
        time.sleep(5)  # moves in flight finish; no new one may start meanwhile
        wait_for("every account Connected again", lambda: all_connected(accounts, 20))
        stayed = sorted(n for n, p in pods_of(accounts).items() if p == "wa-0")
        # At most the two moves in flight (moves_in_flight=2) went on after the undrain.
        assert 20 - moved - 2 <= len(stayed) <= 20 - moved, "the drain went on"
        time.sleep(3)  # a pass or two later, still where they were
        assert sorted(n for n, p in pods_of(accounts).items() if p == "wa-0") == stayed

        fleet.annotate("wa-0", api.DRAIN_ANNOTATION, "true")
        # The drain's progress: the sessions the draining pod still holds.
        wait_for(f"wa_controller_draining_sessions of wa-0 between 1 and {len(stayed)}",
                 lambda: 0 < (metric("wa_controller_draining_sessions", pod="wa-0") or 0)
                 <= len(stayed))
        wait_for("wa-0 empty", lambda: "wa-0" not in pods_of(accounts).values()
                 and all_settled(accounts, 20), timeout=120)
        wait_for("the mirror following every move", lambda: mirrored_pods() == pods_of(accounts))
        wait_for("wa_controller_draining_sessions of wa-0 at 0", lambda: metric(
            "wa_controller_draining_sessions", pod="wa-0") == 0)
        assert metric("wa_controller_moves_total", result="done") == 20  # each moved once
        assert metric("wa_controller_moves_total", result="failed") is None
    assert copies == [], "a session ran on two pods at one look"
    assert all(s["state"] == "stopped" for s in fleet.simulators["wa-0"].sessions().values())
    reasons = [r for _, r, _ in accounts.events(fleet.core, sessions[0])]
    assert "Moving" in reasons
    engine.dispose()


def test_a_pod_deleted_with_a_grace_period_is_emptied_before_it_goes(
    namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    for name in ("wa-0", "wa-1"):
        fleet.add(name, create_delay=0.3)
    seed_sessions(fleet, accounts, {"wa-0": [f"g{i}" for i in range(8)]})
    with running_operator(settings(namespace, moves_in_flight=3)), \
            watching_for_two_copies(fleet) as copies:
        wait_for("8 accounts Connected", lambda: all_settled(accounts, 8))
        fleet.terminate("wa-0", grace_seconds=60)  # a rolling update: 60 s to go
        wait_for("every session on wa-1 while wa-0 still runs",
                 lambda: set(pods_of(accounts).values()) == {"wa-1"}
                 and all_connected(accounts, 8), timeout=60)
    assert copies == []
    assert fleet.simulators["wa-1"].starts()["creates"] == 8


def test_rebalance_plans_prints_and_applies_the_fewest_moves(
    namespace: str, fleet: Fleet, accounts: Accounts, control_plane: object
) -> None:
    for name in ("wa-0", "wa-1"):
        fleet.add(name, capacity=10, create_delay=0.3)
    seed_sessions(fleet, accounts, {"wa-0": [f"a{i}" for i in range(10)],
                                    "wa-1": [f"b{i}" for i in range(10)]})
    fleet.add("wa-other", capacity=10, storage_group="elsewhere")
    with running_operator(settings(namespace, moves_in_flight=3)):
        wait_for("20 accounts Connected", lambda: all_settled(accounts, 20))
        for name in ("wa-2", "wa-3"):
            fleet.add(name, capacity=10, create_delay=0.3)
        command = [sys.executable, "-m", "controller", "rebalance",
                   f"--namespace={namespace}", "--threshold=0.1"]
        dry = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
        assert "10 moves: spread 1.00 -> 0.00 (threshold 0.10)" in dry.stdout
        assert "add --apply" in dry.stdout
        time.sleep(2)
        assert {p for p in pods_of(accounts).values()} == {"wa-0", "wa-1"}

        applied = subprocess.run([*command, "--apply"], capture_output=True, text=True,
                                 timeout=60, check=True)
        assert applied.stdout.count("annotated") == 10
        wait_for("the fleet even", lambda: all_settled(accounts, 20) and sorted(
            list(pods_of(accounts).values()).count(p) for p in ("wa-0", "wa-1", "wa-2", "wa-3")
        ) == [5, 5, 5, 5], timeout=120)
        assert "wa-other" not in pods_of(accounts).values()  # another storage group
        annotated = [n for n, a in accounts.all().items()
                     if api.MOVE_TO_ANNOTATION in (a["metadata"].get("annotations") or {})]
        wait_for("the move-to marks taken off once done", lambda: not [
            n for n, a in accounts.all().items()
            if api.MOVE_TO_ANNOTATION in (a["metadata"].get("annotations") or {})])
        again = subprocess.run(command, capture_output=True, text=True, timeout=60,
                               check=True)
        assert "nothing to move" in again.stdout, annotated


def test_automatic_rebalance_evens_out_the_fleet_after_pods_are_added(
    namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    for name in ("wa-0", "wa-1"):
        fleet.add(name, capacity=10, create_delay=0.3)
    seed_sessions(fleet, accounts, {"wa-0": [f"a{i}" for i in range(10)],
                                    "wa-1": [f"b{i}" for i in range(10)]})
    port = free_port()
    auto = settings(namespace, moves_in_flight=3, auto_rebalance=True,
                    rebalance_interval=1.0, rebalance_threshold=0.1, metrics_port=port)
    with running_operator(auto):
        wait_for("20 accounts Connected", lambda: all_settled(accounts, 20))
        time.sleep(2)  # two rounds of the rebalancer: the fleet is even, nothing moves
        assert set(pods_of(accounts).values()) == {"wa-0", "wa-1"}
    # Two empty pods join (with the operator away, so that one round sees both: pods that
    # join one by one are evened out round by round, and a session may move twice).
    for name in ("wa-2", "wa-3"):
        fleet.add(name, capacity=10, create_delay=0.3)
    with running_operator(auto), watching_for_two_copies(fleet) as copies:
        wait_for("the fleet even by itself", lambda: all_settled(accounts, 20) and sorted(
            list(pods_of(accounts).values()).count(p) for p in ("wa-0", "wa-1", "wa-2", "wa-3")
        ) == [5, 5, 5, 5], timeout=120)
        wait_for("the move-to marks taken off once done", lambda: not [
            n for n, a in accounts.all().items()
            if api.MOVE_TO_ANNOTATION in (a["metadata"].get("annotations") or {})])
        moves = f'wa_controller_moves_total{{namespace="{namespace}",result="done"}}'
        assert scrape(port).get(moves) == 10  # the fewest moves, in one round
    assert copies == [], "a session ran on two pods at one look"


def test_storage_groups_bound_crash_restarts_and_drains(
    namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    fleet.add("eu-0", storage_group="eu", create_delay=0.3)
    fleet.add("eu-1", storage_group="eu", create_delay=0.3)
    fleet.add("us-0", storage_group="us", create_delay=0.3)  # empty: the least loaded
    fleet.simulators["eu-1"].put("filler", "working")
    accounts.create("filler")
    seed_sessions(fleet, accounts, {"eu-0": ["e1", "e2"]})
    with running_operator(settings(namespace, start_grace=5.0)):
        wait_for("3 accounts Connected", lambda: all_settled(accounts, 3))
        fleet.remove("eu-0")  # crash: restarted where the stored logins are, no QR code
        wait_for("e1 and e2 Connected on eu-1", lambda: all_connected(accounts, 3)
                 and pods_of(accounts) == {"filler": "eu-1", "e1": "eu-1", "e2": "eu-1"},
                 timeout=60)
        assert fleet.simulators["us-0"].starts()["creates"] == 0
        # Draining the last pod of the group: nowhere to go, so nothing moves; said so.
        fleet.annotate("eu-1", api.DRAIN_ANNOTATION, "true")
        wait_for("the wait said", lambda: accounts.status("e1").get("message", "").endswith(
            "waits for room in storage group eu"))
        assert set(pods_of(accounts).values()) == {"eu-1"}
        assert fleet.simulators["us-0"].starts()["creates"] == 0
