"""`wa-controller status` against the real API server, instance simulators and a running
operator: the table, the JSON, the exit code, and an operator that cannot be reached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client as k8s

from devtools.control_plane import ControlPlane, free_port
from devtools.harness import Accounts, Fleet, running_operator, wait_for
from devtools.harness import operator_settings as settings

pytestmark = pytest.mark.integration


def wa_status(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller", "status", *args],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "KUBECONFIG": str(kubeconfig)})


def as_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.stderr == "", result.stderr
    return json.loads(result.stdout)


def phases(accounts: Accounts) -> dict[str, str | None]:
    return {name: (a.get("status") or {}).get("phase") for name, a in accounts.all().items()}


def test_status_shows_the_fleet_and_exits_non_zero_while_an_account_needs_a_person(
    control_plane: ControlPlane, namespace: str, fleet: Fleet, accounts: Accounts,
) -> None:
    wa0, wa1 = fleet.add("wa-0"), fleet.add("wa-1", protocol="waha", capacity=5)
    wa0.put("c1", "working", quiet=True)
    wa1.put("p1", "pairing", quiet=True)
    for name in ("c1", "p1"):
        accounts.create(name)
    accounts.create("q1", instanceSelector={"pool": "none"})
    port = free_port()
    metrics = f"http://127.0.0.1:{port}/metrics"
    args = ("--namespace", namespace, "--metrics-url", metrics)
    with running_operator(settings(namespace, metrics_port=port)):
        wait_for("c1 Connected, p1 Pairing, q1 Pending", lambda: phases(accounts) == {
            "c1": "Connected", "p1": "Pairing", "q1": "Pending"})

        result = wa_status(control_plane.kubeconfig, *args, "-o", "json")
        assert result.returncode == 1
        view = as_json(result)
        assert view["operator"] == {"reached": True, "source": metrics, "error": None}
        assert [(p["name"], p["protocol"], p["health"], p["sessions"], p["capacity"],
                 p["ready"]) for p in view["pods"]] == [
            ("wa-0", "blazz", "ok", 1, 50, True), ("wa-1", "waha", "ok", 1, 5, True)]
        for pod in view["pods"]:
            age = datetime.now(UTC) - datetime.fromisoformat(pod["lastProbe"])
            assert age.total_seconds() < 10, pod
        assert view["phases"] == {namespace: {
            "Pending": 1, "Starting": 0, "Pairing": 1, "Connected": 1, "Lost": 0,
            "Stopped": 0, "Failed": 0, "Moving": 0, "New": 0}}
        assert [(a["name"], a["phase"], a["reason"]) for a in view["needsPerson"]] == [
            ("p1", "Pairing", "waiting for a QR code scan on wa-1"),
            ("q1", "Pending", "no instance pod matches the selector")]

        table = wa_status(control_plane.kubeconfig, *args)
        assert table.returncode == 1
        assert f"Operator: per-pod view from {metrics}\n" in table.stdout
        assert "Need a person: 2\n" in table.stdout
        assert f"{namespace}   p1        Pairing   waiting for a QR code scan on wa-1" \
            in table.stdout

        # The person scans the QR code and drops the account nothing can run.
        wa1.put("p1", "working")
        accounts.custom.delete_namespaced_custom_object(
            "wa-controller.io", "v1alpha1", namespace, "waaccounts", "q1")
        wait_for("p1 Connected", lambda: phases(accounts) == {"c1": "Connected",
                                                             "p1": "Connected"})
        assert wa_status(control_plane.kubeconfig, *args).returncode == 0

        # An instance that stops answering shows as such, then its series go with it.
        wa1.fault("crash")
        wait_for("wa-1 down in the status view", lambda: [
            p["health"] for p in as_json(wa_status(control_plane.kubeconfig, *args, "-o",
                                                   "json"))["pods"]] == ["ok", "down"])
        fleet.remove("wa-1")
        wait_for("wa-1's instance series gone from /metrics", lambda: not [
            line for line in httpx.get(metrics).text.splitlines()
            if line.startswith("wa_controller_instance_") and 'pod="wa-1"' in line
            and f'namespace="{namespace}"' in line])

    not_metrics = wa_status(control_plane.kubeconfig, "--namespace", namespace,
                            "--metrics-url", f"{wa0.url}/_sim/stats")
    assert not_metrics.returncode == 3
    assert not_metrics.stdout.startswith(
        "Operator: NOT REACHED (the answer is not Prometheus metrics)")

    gone = wa_status(control_plane.kubeconfig, *args)
    assert gone.returncode == 3
    assert gone.stdout.startswith("Operator: NOT REACHED (")
    assert f"pod health and last probe unknown. Looked at {metrics}" in gone.stdout
    assert "wa-0   blazz      unknown" in gone.stdout


def test_the_operator_is_looked_for_through_the_api_server(
    control_plane: ControlPlane, namespace: str, core: k8s.CoreV1Api,
) -> None:
    result = wa_status(control_plane.kubeconfig, "--namespace", namespace)
    assert result.returncode == 3
    assert result.stdout.startswith(
        "Operator: NOT REACHED (no running operator pod with a metrics port); pod health and "
        f"last probe unknown. Looked at the pods app.kubernetes.io/name=wa-controller in "
        f"namespace {namespace} (API server pod proxy)\n")

    # An operator pod the API server will not proxy to (this test's loopback address):
    # its refusal is what the user reads.
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": "wa-controller-0",
                     "labels": {"app.kubernetes.io/name": "wa-controller"}},
        "spec": {"nodeName": "simulated-node", "containers": [
            {"name": "operator", "image": "wa-controller:dev",
             "ports": [{"name": "metrics", "containerPort": 9090}]}]}})
    core.patch_namespaced_pod_status("wa-controller-0", namespace, {"status": {
        "phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}})
    refused = wa_status(control_plane.kubeconfig, "--namespace", namespace)
    assert refused.returncode == 3
    assert refused.stdout.startswith(
        "Operator: NOT REACHED (wa-controller-0: address not allowed)")


def test_what_cannot_be_asked_is_said_without_a_traceback(
    tmp_path: Path, unanswered_kubeconfig: Path,
) -> None:
    nowhere = wa_status(tmp_path / "absent")
    assert nowhere.returncode == 2
    assert nowhere.stderr.startswith("wa-controller: no Kubernetes configuration found: not "
                                     f"in a pod, and no kubeconfig at {tmp_path / 'absent'}")
    silent = wa_status(unanswered_kubeconfig)
    assert silent.returncode == 2
    assert silent.stderr.startswith("wa-controller: the API server did not answer: Cannot "
                                    "connect to host 127.0.0.1:")
    for result in (nowhere, silent):
        assert "Traceback" not in result.stderr
