"""`wa-controller status`'s pure parts: reading the operator's /metrics, the view, who
needs a person, the exit code and the rendering."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller.status_view import (
    FleetStatus,
    OperatorView,
    Probe,
    build_status,
    exit_code,
    needs_person,
    probes_from_metrics,
    render,
)

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
T = NOW.timestamp()
REACHED = OperatorView(reached=True, source="http://op:9090/metrics")
UNREACHED = OperatorView(reached=False, source="the pods x in namespace wa",
                         error="no running operator pod with a metrics port")


def metrics_text(pod: str, health: str, at: float, sessions: int = 2, capacity: int = 50,
                 protocol: str = "blazz", namespace: str = "wa") -> str:
    states = ("unprobed", "ok", "suspect", "auth_failed", "unreadable", "down")
    lines = [f'wa_controller_instance_health{{namespace="{namespace}",pod="{pod}",'
             f'protocol="{protocol}",health="{s}"}} {1.0 if s == health else 0.0}'
             for s in states]
    lines += [
        f'wa_controller_instance_last_probe_timestamp_seconds{{namespace="{namespace}",'
        f'pod="{pod}"}} {at}',
        f'wa_controller_instance_sessions{{namespace="{namespace}",pod="{pod}"}} {sessions}',
        f'wa_controller_instance_capacity{{namespace="{namespace}",pod="{pod}"}} {capacity}',
        'wa_controller_accounts{namespace="wa",phase="Connected"} 3.0',
    ]
    return "\n".join(lines) + "\n"


def pod(name: str, *, ready: bool = True, ip: str | None = "10.0.0.1",
        annotations: dict[str, str] | None = None, namespace: str = "wa") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace,
                         "annotations": annotations or {}},
            "status": {"podIP": ip, "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"}]}}


def account(name: str, phase: str | None, message: str = "", *, namespace: str = "wa",
            mirrored: tuple[str, str, str] | None = None, pod_name: str | None = None
            ) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if phase:
        status.update(phase=phase, message=message)
    if pod_name:
        status["instance"] = {"pod": pod_name, "url": "http://x", "assignedAt": "t"}
    if mirrored:
        status["conditions"] = [{"type": "Mirrored", "status": mirrored[0],
                                 "reason": mirrored[1], "message": mirrored[2]}]
    return {"metadata": {"name": name, "namespace": namespace},
            "spec": {"sessionId": name.upper()}, "status": status}


def test_the_operators_metrics_give_each_pods_probe() -> None:
    probes = probes_from_metrics([metrics_text("wa-0", "ok", T - 3, sessions=12) +
                                  metrics_text("wa-1", "down", T - 40, protocol="waha")])
    assert probes == {
        ("wa", "wa-0"): Probe(protocol="blazz", health="ok", sessions=12, capacity=50,
                              last_probe=NOW - timedelta(seconds=3)),
        ("wa", "wa-1"): Probe(protocol="waha", health="down", sessions=2, capacity=50,
                              last_probe=NOW - timedelta(seconds=40)),
    }


def test_of_several_replicas_the_freshest_probe_of_each_pod_wins() -> None:
    acting = metrics_text("wa-0", "ok", T - 2, sessions=5)
    standby = metrics_text("wa-0", "down", T - 600, sessions=0)  # stood by since then
    for texts in ([acting, standby], [standby, acting]):
        assert probes_from_metrics(texts)[("wa", "wa-0")].health == "ok"


def test_a_replica_that_never_probed_adds_nothing() -> None:
    assert probes_from_metrics(['wa_controller_accounts{namespace="wa",phase="New"} 1\n',
                                ""]) == {}


@pytest.mark.parametrize(("body", "reason"), [
    (account("a", "Connected", "working on wa-0"), None),
    (account("a", "Starting", "asked wa-0 to start"), None),
    (account("a", "Stopped", "desiredState is Stopped"), None),
    (account("a", None), None),
    (account("a", "Connected", mirrored=("True", "RowWritten", "")), None),
    (account("a", "Pairing", "waiting for a QR code scan on wa-1"),
     "waiting for a QR code scan on wa-1"),
    (account("a", "Lost", "session found nowhere after 3 starts"),
     "session found nowhere after 3 starts"),
    (account("a", "Pending", "no instance pod matches the selector"),
     "no instance pod matches the selector"),
    (account("a", "Failed", "session s belongs to the older account b"),
     "session s belongs to the older account b"),
    (account("a", "Failed"), "Failed"),
    (account("a", "Connected", mirrored=("False", "DatabaseUnavailable", "refused")),
     "not mirrored: DatabaseUnavailable: refused"),
    (account("a", "Pending", "no room", mirrored=("False", "MirrorTableMissing", "run db")),
     "no room; not mirrored: MirrorTableMissing: run db"),
])
def test_who_needs_a_person_and_why(body: dict[str, Any], reason: str | None) -> None:
    assert needs_person(body) == reason


def fleet() -> FleetStatus:
    probes = probes_from_metrics([metrics_text("wa-0", "ok", T - 3, sessions=1)])
    return build_status(
        [account("c1", "Connected", pod_name="wa-0"), account("n1", None),
         account("p1", "Pairing", "waiting for a QR code scan on wa-0", pod_name="wa-0"),
         account("x1", "Connected", namespace="other")],
        [pod("wa-1", ready=False, ip=None, annotations={"wa-controller.io/capacity": "10",
                                                        "wa-controller.io/protocol": "waha"}),
         pod("wa-0")],
        probes, REACHED)


def test_the_view_joins_the_api_servers_objects_and_the_operators_probes() -> None:
    status = fleet()
    assert [(p.name, p.protocol, p.health, p.sessions, p.capacity, p.ready, p.ip)
            for p in status.pods] == [("wa-0", "blazz", "ok", 1, 50, True, "10.0.0.1"),
                                      ("wa-1", "waha", "not probed", None, 10, False, None)]
    assert status.phases["wa"] == {"Pending": 0, "Starting": 0, "Pairing": 1, "Connected": 1,
                                   "Lost": 0, "Stopped": 0, "Failed": 0, "Moving": 0, "New": 1}
    assert status.phases["other"]["Connected"] == 1
    assert [(a.name, a.session_id, a.phase, a.instance, a.reason)
            for a in status.needs_person] == [
        ("p1", "P1", "Pairing", "wa-0", "waiting for a QR code scan on wa-0")]


def test_without_the_operator_pod_health_is_unknown() -> None:
    status = build_status([], [pod("wa-0")], {}, UNREACHED)
    assert status.pods[0].health == "unknown"
    assert status.pods[0].last_probe is None


@pytest.mark.parametrize(("accounts", "operator", "code"), [
    ([], REACHED, 0),
    ([account("a", "Connected")], REACHED, 0),
    ([account("a", "Connected")], UNREACHED, 3),
    ([account("a", "Pairing")], REACHED, 1),
    ([account("a", "Lost")], UNREACHED, 1),
    ([account("a", "Connected", mirrored=("False", "DatabaseAuthFailed", "no"))], REACHED, 1),
])
def test_the_exit_code_follows_the_accounts_needing_a_person(
        accounts: list[dict[str, Any]], operator: OperatorView, code: int) -> None:
    assert exit_code(build_status(accounts, [], {}, operator)) == code


def test_the_table() -> None:
    assert render(fleet(), wide=False, now=NOW) == (
        "Operator: per-pod view from http://op:9090/metrics\n"
        "\n"
        "Instance pods\n"
        "NAMESPACE   POD    PROTOCOL   HEALTH       SESSIONS   LAST PROBE\n"
        "wa          wa-0   blazz      ok           1/50       3s ago\n"
        "wa          wa-1   waha       not probed   ?/10       never\n"
        "\n"
        "Accounts\n"
        "NAMESPACE   TOTAL   PAIRING   CONNECTED   NEW\n"
        "other       1       0         1           0\n"
        "wa          3       1         1           1\n"
        "\n"
        "Need a person: 1\n"
        "NAMESPACE   ACCOUNT   PHASE     REASON\n"
        "wa          p1        Pairing   waiting for a QR code scan on wa-0\n")


def test_the_wide_table_adds_readiness_addresses_sessions_and_instances() -> None:
    text = render(fleet(), wide=True, now=NOW + timedelta(minutes=5))
    assert "READY   IP" in text
    assert "5m ago       yes     10.0.0.1" in text
    assert "wa-1   waha       not probed   ?/10       never        no      -" in text
    assert "PHASE     SESSION   INSTANCE   REASON" in text
    assert "wa          p1        Pairing   P1        wa-0       waiting" in text


def test_an_unreached_operator_is_said_first() -> None:
    text = render(build_status([], [], {}, UNREACHED), wide=False, now=NOW)
    assert text.startswith("Operator: NOT REACHED (no running operator pod with a metrics "
                           "port); pod health and last probe unknown. Looked at the pods x "
                           "in namespace wa\n")
    assert "Instance pods\nnone found\n" in text
    assert "Accounts\nnone found\n" in text
    assert text.endswith("Need a person: 0\n")


def test_json_is_the_whole_view_in_camel_case() -> None:
    import json

    data = json.loads(fleet().model_dump_json(by_alias=True))
    assert data["operator"] == {"reached": True, "source": "http://op:9090/metrics",
                                "error": None}
    assert data["pods"][0]["lastProbe"] == "2026-12-01T11:59:57Z"
    assert data["needsPerson"][0]["sessionId"] == "P1"
