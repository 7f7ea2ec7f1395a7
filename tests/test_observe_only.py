"""Observe-only beside an existing system: after a crash the operator corrects status and
says what it would do, and no instance ever receives a start or a stop."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s

from devtools.control_plane import free_port
from devtools.harness import Accounts, Fleet, all_settled, running_operator, scrape, wait_for
from devtools.harness import operator_settings as settings

pytestmark = pytest.mark.integration


def test_observe_only_corrects_status_after_a_crash_and_never_starts_or_stops(
    namespace: str, fleet: Fleet, accounts: Accounts, core: k8s.CoreV1Api
) -> None:
    wa0, wa1 = fleet.add("wa-0"), fleet.add("wa-1")
    for session in ("moved", "gone", "kept"):
        wa0.put(session, "working")
        accounts.create(session)
    wa1.put("twice", "working")
    wa0.put("twice", "working")
    accounts.create("twice")
    port = free_port()
    with running_operator(settings(namespace, observe_only=True, metrics_port=port)):
        wait_for("the four accounts Connected", lambda: all_settled(accounts, 4))
        # A session on two pods: the second copy is said to be stopped, and left running.
        wait_for("the stop of twice's second copy said", lambda: "WouldStop" in [
            reason for _, reason, _ in accounts.events(core, "twice")])
        assert [message for _, reason, message in accounts.events(core, "twice")
                if reason == "WouldStop"] == ["observe-only: would stop session twice on wa-1"]
        assert "twice" in wa0.sessions()
        assert "twice" in wa1.sessions()
        # The old system moves a session: status follows.
        wa0.move("moved", wa1, quiet=True)
        wait_for("moved reassigned to wa-1", lambda: accounts.pod_of("moved") == "wa-1")
        # wa-0 crashes: its sessions are nowhere; a new account comes.
        fleet.remove("wa-0")
        accounts.create("brand-new")
        for name in ("gone", "kept", "brand-new"):
            wait_for(f"{name} Pending, with what would be done", lambda name=name: (
                accounts.status(name).get("message")
                == f"observe-only: would place session {name} on wa-1"))
        series = f'wa_controller_would_act_total{{action="place",namespace="{namespace}"}}'
        wait_for("three would-be placements counted", lambda: scrape(port).get(series) == 3.0)

        starts = wa1.starts()
        assert (starts["creates"], starts["restores"], starts["stops"]) == (0, 0, 0)
        assert set(wa1.sessions()) == {"moved", "twice"}
        assert accounts.pod_of("twice") == "wa-1"
        assert [reason for _, reason, _ in accounts.events(core, "gone")].count(
            "WouldPlace") == 1
        assert "Placed" not in {reason for name in ("gone", "kept", "brand-new")
                                for _, reason, _ in accounts.events(core, name)}
