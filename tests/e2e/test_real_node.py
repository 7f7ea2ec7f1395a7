"""The chart on a real node: the image built here, pods run by a kubelet, traffic through
kube-proxy's Services and CoreDNS, as a user's `helm install` would run.

The tests run in file order on one installation (`release`): install, instances,
accounts, webhooks, metrics, an instance pod deleted, the operator deleted, an upgrade,
the uninstall. Each waits for conditions with a deadline and says what never happened.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.e2e.conftest import NAMESPACE, RELEASE, Node

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[2]
INSTANCES = ROOT / "hack" / "kind" / "instances.yaml"
ACCOUNTS = ROOT / "hack" / "kind" / "accounts.yaml"
ACCOUNT_NAMES = ("shop-1", "shop-2", "shop-3", "support")
OPERATOR_LABELS = "app.kubernetes.io/name=wa-controller,app.kubernetes.io/instance=wa-controller"
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 120,
             every: float = 1.0, explain: Callable[[], str] = lambda: "") -> T:
    """Poll `probe` (errors count as not yet) until it returns something truthy; else fail
    with what never happened, the last thing seen and `explain()`."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except (AssertionError, httpx.HTTPError, KeyError, IndexError, TypeError) as error:
            last = error
        else:
            if result:
                return result
            last = result
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last saw "
                         f"{last!r}\n{explain()}")


def ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) and \
        not pod["metadata"].get("deletionTimestamp")


def operator_pods(node: Node) -> list[dict[str, Any]]:
    return node.json("pods", "-l", OPERATOR_LABELS)["items"]


def ready_operator(node: Node, *, not_named: str = "") -> dict[str, Any]:
    """The one Ready operator pod (other than `not_named`), once there is exactly one."""
    def probe() -> dict[str, Any] | None:
        pods = operator_pods(node)
        live = [p for p in pods if ready(p) and p["metadata"]["name"] != not_named]
        return live[0] if len(live) == 1 and len(pods) == 1 else None

    def explain() -> str:
        pods = node.kubectl("get", "pods", "-l", OPERATOR_LABELS, "-o", "wide").stdout
        logs = node.kubectl("logs", "-l", OPERATOR_LABELS, "--previous", "--tail=15",
                            check=False)
        return f"{pods}\nthe operator's last crash ended with:\n{logs.stdout}{logs.stderr}"

    what = f"one Ready operator pod other than {not_named}" if not_named else \
        "one Ready operator pod"
    return wait_for(what, probe, timeout=180, explain=explain)


def accounts(node: Node) -> dict[str, dict[str, Any]]:
    items = node.json("waaccounts")["items"]
    return {a["metadata"]["name"]: a for a in items}


def connected(node: Node) -> dict[str, dict[str, Any]] | None:
    found = accounts(node)
    phases = {name: a.get("status", {}).get("phase") for name, a in found.items()}
    if set(found) == set(ACCOUNT_NAMES) and set(phases.values()) == {"Connected"}:
        return found
    return None


def service_url(node: Node, port: int) -> str:
    service = node.json("service", RELEASE)
    return f"http://{service['spec']['clusterIP']}:{port}"


def scrape(node: Node) -> dict[str, float]:
    """The operator's /metrics, through its Service's ClusterIP (kube-proxy's rules)."""
    text = httpx.get(f"{service_url(node, 9090)}/metrics", timeout=5).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def sessions_on(url: str, api_key: str) -> set[str]:
    answer = httpx.get(f"{url}/api/sessions", params={"api_key": api_key}, timeout=5)
    answer.raise_for_status()
    return {s["session_id"] for s in answer.json()["sessions"]}


def instance_pods(node: Node) -> dict[str, dict[str, Any]]:
    items = node.json("pods", "-l", "app.kubernetes.io/name=wa-sim")["items"]
    return {p["metadata"]["name"]: p for p in items}


# --- the tests, in the order a user meets the behaviour ------------------------------

def test_the_operator_becomes_ready_under_the_charts_hardened_security_context(
        release: Node) -> None:
    pod = ready_operator(release)
    container = pod["spec"]["containers"][0]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["imagePullPolicy"] == "Never"
    # Ready, and not after a crash: it started once and stayed up.
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0, \
        release.kubectl("logs", pod["metadata"]["name"], "--previous", check=False).stdout
    name = pod["metadata"]["name"]
    identity = release.kubectl("exec", name, "--", "python3", "-c",
                               "import os; print(os.getuid(), os.getgid())").stdout.split()
    assert identity == ["65532", "65532"]
    write = release.kubectl("exec", name, "--", "python3", "-c",
                            "open('/etc/probe', 'w')", check=False)
    assert "Read-only file system" in write.stderr


def test_instance_pods_are_scheduled_and_become_ready_through_their_probes(
        release: Node) -> None:
    release.kubectl("apply", "-f", str(INSTANCES))

    def all_ready() -> dict[str, dict[str, Any]] | None:
        pods = instance_pods(release)
        return pods if len(pods) == 3 and all(ready(p) for p in pods.values()) else None

    pods = wait_for("3 Ready instance pods (wa-sim)", all_ready, timeout=180)
    for pod in pods.values():
        assert pod["spec"]["nodeName"] == "wa-node"
        assert pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/health"
        assert pod["status"]["podIP"].startswith("10.244.0.")


def test_sample_accounts_become_connected_at_urls_reachable_from_the_host(
        release: Node) -> None:
    release.kubectl("apply", "-f", str(ACCOUNTS))
    found = wait_for("the 4 sample accounts Connected", lambda: connected(release), timeout=180)
    pods = instance_pods(release)
    for name, account in found.items():
        instance = account["status"]["instance"]
        pod_ip = pods[instance["pod"]]["status"]["podIP"]
        assert instance["url"] == f"http://{pod_ip}:3000", name
        assert account["spec"]["sessionId"] in sessions_on(instance["url"], release.api_key)


def test_signed_webhooks_reach_the_operator_through_its_service_from_real_pod_ips(
        release: Node) -> None:
    # Every simulator signs its session_ready webhooks and posts them to
    # http://wa-controller.wa-controller.svc:8081 (CoreDNS, then kube-proxy); the
    # operator accepts a webhook only from an instance pod's own IP and a valid HMAC.
    def webhooks() -> dict[str, float]:
        return {name: value for name, value in scrape(release).items()
                if name.startswith("wa_controller_webhooks_total")}

    wait_for("accepted webhooks in the operator's metrics",
             lambda: webhooks().get('wa_controller_webhooks_total{result="accepted"}'),
             explain=lambda: f"webhooks by result: {webhooks()}")
    refused = {name: value for name, value in webhooks().items()
               if "accepted" not in name and value}
    assert not refused, f"webhooks refused: {refused}"


def test_metrics_are_scraped_through_the_service(release: Node) -> None:
    samples = scrape(release)
    key = f'wa_controller_accounts{{namespace="{NAMESPACE}",phase="Connected"}}'
    assert samples.get(key) == len(ACCOUNT_NAMES), {k: v for k, v in samples.items()
                                                    if "accounts" in k}
    assert any(k.startswith("wa_controller_probe_duration_seconds_count") for k in samples)


def test_a_deleted_instance_pod_heals_its_accounts_and_comes_back(release: Node) -> None:
    before = connected(release)
    assert before
    holders = sorted({a["status"]["instance"]["pod"] for a in before.values()})
    victim = holders[0]
    moved = {n for n, a in before.items() if a["status"]["instance"]["pod"] == victim}
    old_pod = instance_pods(release)[victim]
    old_url = f"http://{old_pod['status']['podIP']}:3000"
    release.kubectl("delete", "pod", victim, "--wait=false")

    def healed() -> dict[str, dict[str, Any]] | None:
        now = connected(release)
        if not now or any(now[n]["status"]["instance"]["url"] == old_url for n in moved):
            return None
        return now

    now = wait_for(f"the accounts of {victim} ({', '.join(sorted(moved))}) Connected elsewhere",
                   healed, timeout=240)
    for name in moved:
        instance = now[name]["status"]["instance"]
        assert now[name]["spec"]["sessionId"] in sessions_on(instance["url"], release.api_key)

    def back() -> dict[str, Any] | None:
        pod = instance_pods(release).get(victim)
        new = pod and pod["metadata"]["uid"] != old_pod["metadata"]["uid"] and ready(pod)
        return pod if new else None

    wait_for(f"the StatefulSet's new, Ready {victim}", back, timeout=180)


def test_a_deleted_operator_pod_restarts_and_reassigns_nothing(release: Node) -> None:
    before = wait_for("the accounts Connected", lambda: connected(release))
    old = ready_operator(release)["metadata"]["name"]
    release.kubectl("delete", "pod", old)
    new = ready_operator(release, not_named=old)

    # The new operator has probed every instance pod before its view counts.
    def probed_all() -> bool:
        samples = scrape(release)
        counts = [v for k, v in samples.items()
                  if k.startswith("wa_controller_probe_duration_seconds_count")]
        return len(counts) >= 3 and all(counts)

    wait_for(f"{new['metadata']['name']} to probe every instance pod", probed_all)
    after = wait_for("the accounts Connected", lambda: connected(release))
    for name in ACCOUNT_NAMES:
        assert after[name]["status"]["instance"] == before[name]["status"]["instance"], name
    samples = scrape(release)
    for counter in ("wa_controller_placements_total", "wa_controller_reassignments_total"):
        assert not samples.get(f'{counter}{{namespace="{NAMESPACE}"}}'), counter


def test_an_image_that_was_not_imported_is_never_pulled(release: Node) -> None:
    release.kubectl("run", "not-imported", "--image=docker.io/library/busybox:1.36",
                    "--image-pull-policy=IfNotPresent", "--restart=Never")

    def pull_refused() -> str | None:
        pod = release.json("pod", "not-imported")
        waiting = pod["status"]["containerStatuses"][0]["state"].get("waiting", {})
        message = waiting.get("message", "")
        return message if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff") \
            else None

    message = wait_for("the pull of a non-imported image to fail", pull_refused, timeout=60)
    assert "127.0.0.1:9" in message  # containerd's dead-end proxy: nothing left the host
    release.kubectl("delete", "pod", "not-imported", "--grace-period=0", "--force")


def test_helm_upgrade_with_a_changed_setting_rolls_the_operator(release: Node) -> None:
    old = ready_operator(release)["metadata"]["name"]
    release.helm("upgrade", RELEASE, str(ROOT / "helm" / "wa-controller"), "--reuse-values",
                 "--set", "probe.interval=20")
    new = ready_operator(release, not_named=old)
    env = {e["name"]: e.get("value") for e in new["spec"]["containers"][0]["env"]}
    assert env["WA_PROBE_INTERVAL"] == "20"
    wait_for("the accounts Connected after the upgrade", lambda: connected(release))


def test_helm_uninstall_removes_everything_but_the_crds(release: Node) -> None:
    kinds = "deployment,service,serviceaccount,role,rolebinding,secret,configmap,kopfpeering"
    owned = f"app.kubernetes.io/instance={RELEASE}"
    assert release.kubectl("get", kinds, "-l", owned, "-o", "name").stdout.strip()
    release.helm("uninstall", RELEASE, "--wait")

    def left() -> str:
        namespaced = release.kubectl("get", kinds, "-l", owned, "-o", "name").stdout
        cluster_wide = release.kubectl("get", "clusterrole,clusterrolebinding,clusterkopfpeering",
                                       "-l", owned, "-o", "name").stdout
        pods = [p["metadata"]["name"] for p in operator_pods(release)]
        return (namespaced + cluster_wide + " ".join(pods)).strip()

    wait_for("the release's objects and pods to be gone", lambda: not left(),
             explain=lambda: f"left behind: {left()}")
    crds = release.kubectl("get", "crd", "-o", "name").stdout
    assert re.search(r"waaccounts\.wa-controller\.io", crds)
    assert "kopfpeerings.kopf.dev" in crds
    assert set(accounts(release)) == set(ACCOUNT_NAMES)  # the users' objects stay
