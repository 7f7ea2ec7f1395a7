"""The Helm chart and the GitOps manifests against the real API server, with real helm and
kubectl: rendering, install/upgrade/uninstall, the schema, RBAC, and the operator running
with exactly the chart's permissions."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from controller.settings import Settings
from devtools import manifests
from devtools.control_plane import ControlPlane, free_port, tool
from devtools.harness import (
    Accounts,
    Fleet,
    all_settled,
    running_operator,
    seed_sessions,
    wait_for,
)
from devtools.harness import operator_settings as settings
from tests.conftest import Kubectl

pytestmark = pytest.mark.integration

CHART = manifests.CHART
RELEASE = "wa"
FULLNAME = "wa-wa-controller"
SECRET = "wa-controller-instances"  # the Secret the fleet fixture creates

# Stand-ins for the Prometheus Operator's CRDs, so that a ServiceMonitor and a
# PrometheusRule can be dry-run.
PROMETHEUS_OPERATOR_CRDS = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, plural: servicemonitors, singular: servicemonitor}
  versions:
    - name: v1
      served: true
      storage: true
      schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: prometheusrules.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: PrometheusRule, plural: prometheusrules, singular: prometheusrule}
  versions:
    - name: v1
      served: true
      storage: true
      schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
"""


class Helm:
    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.kubeconfig, self.namespace = kubeconfig, namespace

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(tool("helm")), f"--kubeconfig={self.kubeconfig}", f"--namespace={self.namespace}",
             *args], capture_output=True, text=True, timeout=120, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stderr}")
        return result

    def template(self, *values: str) -> str:
        return self.run("template", RELEASE, str(CHART), *values).stdout


@pytest.fixture(scope="module")
def chart_crds(control_plane: ControlPlane) -> None:
    """The chart's CRDs (kopf's peering ones too) and the Prometheus Operator stand-ins."""
    control_plane.kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
    control_plane.kubectl("apply", "-f", "-", stdin=PROMETHEUS_OPERATOR_CRDS)


@pytest.fixture
def helm(control_plane: ControlPlane, namespace: str, chart_crds: None) -> Helm:
    return Helm(control_plane.kubeconfig, namespace)


def test_helm_lint_is_clean() -> None:
    result = subprocess.run([str(tool("helm")), "lint", "--strict", str(CHART)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


VARIANTS = {
    "defaults": [],
    "cluster-wide": ["--set", "clusterWide=true"],
    "metrics": ["--set", "metrics.serviceMonitor.enabled=true",
                "--set", "metrics.prometheusRule.enabled=true",
                "--set", "metrics.dashboard.enabled=true"],
    "pdb": ["--set", "replicas=2", "--set", "podDisruptionBudget.enabled=true"],
    "network-policy": ["--set", "networkPolicy.enabled=true",
                       "--set", "networkPolicy.clientNamespaceLabels.team=shop"],
    "secrets-from-values": ["--set", "secret.apiKey=k", "--set", "secret.hmacSecret=h",
                            "--set", "mirror.databaseUrl=postgresql+psycopg://u:p@db/wa"],
    "no-endpoints": ["--set", "metrics.enabled=false", "--set", "webhooks.enabled=false"],
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_passes_a_server_side_dry_run(helm: Helm, kubectl: Kubectl,
                                                    variant: str) -> None:
    rendered = helm.template(*VARIANTS[variant])
    kinds = {doc["kind"] for doc in yaml.safe_load_all(rendered) if doc}
    expected = {"defaults": "KopfPeering", "cluster-wide": "ClusterKopfPeering",
                "metrics": "ServiceMonitor", "pdb": "PodDisruptionBudget",
                "network-policy": "NetworkPolicy", "secrets-from-values": "Secret",
                "no-endpoints": "Deployment"}[variant]
    assert expected in kinds
    if variant == "metrics":
        assert "PrometheusRule" in kinds
    if variant == "no-endpoints":
        assert "Service" not in kinds
    result = kubectl.run("apply", "--dry-run=server", "-f", "-", stdin=rendered)
    assert "(server dry run)" in result.stdout


def test_bad_values_are_refused_with_a_message_naming_the_value(helm: Helm) -> None:
    cases = {
        ("--set", "probe.interval=0"): "interval",
        ("--set", "instances.protocol=evolution"): "protocol",
        ("--set", "replcas=2"): "replcas",
        ("--set", "mirror.table=Robert'); DROP TABLE"): "table",
        ("--set", "podDisruptionBudget.enabled=true"): "podDisruptionBudget.minAvailable",
        ("--set", "metrics.prometheusRule.pairingFor=half an hour"): "pairingFor",
    }
    for values, named in cases.items():
        result = helm.run("template", RELEASE, str(CHART), *values, check=False)
        assert result.returncode != 0, f"{values} was accepted"
        assert named in result.stderr, f"{values}: {result.stderr}"


def test_the_charts_settings_are_settings_the_operator_takes(helm: Helm) -> None:
    # Helm writes big numbers as floats (16777216 -> 1.6777216e+07): the operator must get
    # what it parses, or it exits at start (a real node showed it: CrashLoopBackOff).
    result = helm.run("template", RELEASE, str(CHART))  # values.yaml's numbers are floats
    [deployment] = [d for d in yaml.safe_load_all(result.stdout)
                    if d and d.get("kind") == "Deployment"]
    env = {e["name"]: e["value"] for e in
           deployment["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}
    settings_env = {k.removeprefix("WA_").lower(): v for k, v in env.items()
                    if k.startswith("WA_")}
    parsed = Settings(**settings_env)
    assert parsed.webhook_max_body == 16 << 20


def objects(kubectl: Kubectl, kinds: str) -> set[str]:
    found = kubectl.run("get", kinds, "-o", "name", "-l", f"app.kubernetes.io/instance={RELEASE}")
    return set(found.stdout.split())


def test_install_upgrade_and_uninstall(helm: Helm, kubectl: Kubectl) -> None:
    kinds = "deployment,serviceaccount,service,secret,role,rolebinding,kopfpeering"
    installed = helm.run("install", RELEASE, str(CHART), "--set", "secret.apiKey=k1",
                         "--set", "secret.hmacSecret=h1")
    assert "kubectl get waaccounts -w" in installed.stdout  # NOTES.txt
    assert objects(kubectl, kinds) == {
        f"deployment.apps/{FULLNAME}", f"serviceaccount/{FULLNAME}", f"service/{FULLNAME}",
        f"secret/{FULLNAME}", f"role.rbac.authorization.k8s.io/{FULLNAME}",
        f"role.rbac.authorization.k8s.io/{FULLNAME}-secrets",
        f"rolebinding.rbac.authorization.k8s.io/{FULLNAME}",
        f"rolebinding.rbac.authorization.k8s.io/{FULLNAME}-secrets",
        f"kopfpeering.kopf.dev/{FULLNAME}"}

    def env(name: str) -> str:
        return kubectl.run("get", f"deployment/{FULLNAME}", "-o",
                           f"jsonpath={{.spec.template.spec.containers[0].env[?(@.name=='{name}')].value}}"
                           ).stdout

    assert env("WA_PROBE_INTERVAL") == "30"
    helm.run("upgrade", RELEASE, str(CHART), "--reuse-values", "--set", "probe.interval=7")
    assert env("WA_PROBE_INTERVAL") == "7"
    assert helm.run("status", RELEASE).stdout.count("REVISION: 2") == 1

    helm.run("uninstall", RELEASE)
    assert objects(kubectl, kinds) == set()


SA = f"system:serviceaccount:{{ns}}:{FULLNAME}"


def can(kubectl: Kubectl, *request: str, as_user: str) -> bool:
    result = kubectl.run("auth", "can-i", *request, f"--as={as_user}", check=False)
    return result.stdout.strip() == "yes"


def test_rbac_allows_exactly_what_the_operator_uses(
    helm: Helm, kubectl: Kubectl, control_plane: ControlPlane, namespace: str
) -> None:
    helm.run("install", RELEASE, str(CHART), "--set", f"secret.existingSecret={SECRET}")
    other = f"{namespace}-other"
    control_plane.kubectl("create", "namespace", other)
    sa = SA.format(ns=namespace)
    allowed = [
        ("list", "waaccounts.wa-controller.io"), ("watch", "waaccounts.wa-controller.io"),
        ("patch", "waaccounts.wa-controller.io", "--subresource=status"),
        ("list", "pods"), ("watch", "pods"), ("create", "events"),
        ("get", f"secret/{SECRET}"), ("patch", f"kopfpeerings.kopf.dev/{FULLNAME}"),
        ("watch", "namespaces", "--all-namespaces"),
        ("get", "secret/wa-controller-relay"),  # the application's webhook, per namespace
    ]
    denied = [
        ("delete", "pods"), ("create", "pods"), ("patch", "pods"),
        ("delete", "waaccounts.wa-controller.io"), ("create", "waaccounts.wa-controller.io"),
        ("get", "secret/some-other-secret"), ("list", "secrets"),
        ("get", f"secret/{SECRET}", f"--namespace={other}"),
        ("get", "secret/wa-controller-relay", f"--namespace={other}"),
        ("list", "waaccounts.wa-controller.io", f"--namespace={other}"),
        ("patch", "kopfpeerings.kopf.dev/someone-else"), ("update", "deployments"),
        ("delete", "events"), ("create", "clusterroles"),
    ]
    assert [r for r in allowed if not can(kubectl, *r, as_user=sa)] == []
    assert [r for r in denied if can(kubectl, *r, as_user=sa)] == []


def test_cluster_wide_rbac_serves_every_namespace_but_reads_only_its_own_secret(
    helm: Helm, kubectl: Kubectl, control_plane: ControlPlane, namespace: str
) -> None:
    helm.run("install", RELEASE, str(CHART), "--set", "clusterWide=true",
             "--set", f"secret.existingSecret={SECRET}")
    other = f"{namespace}-other"
    control_plane.kubectl("create", "namespace", other)
    sa = SA.format(ns=namespace)
    assert can(kubectl, "list", "waaccounts.wa-controller.io", f"--namespace={other}", as_user=sa)
    assert can(kubectl, "watch", "pods", "--all-namespaces", as_user=sa)
    assert can(kubectl, "patch", f"clusterkopfpeerings.kopf.dev/{FULLNAME}", as_user=sa)
    assert can(kubectl, "get", f"secret/{SECRET}", as_user=sa)
    assert not can(kubectl, "get", f"secret/{SECRET}", f"--namespace={other}", as_user=sa)
    assert not can(kubectl, "delete", "pods", f"--namespace={other}", as_user=sa)
    helm.run("uninstall", RELEASE)


def service_account_kubeconfig(control_plane: ControlPlane, namespace: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount (a real bound token)."""
    token = control_plane.kubectl("create", "token", FULLNAME, "-n", namespace,
                                  "--duration=1h").stdout.strip()
    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    config["users"] = [{"name": "operator", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "operator"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_operator_reconciles_with_the_charts_service_account(
    helm: Helm, control_plane: ControlPlane, namespace: str, fleet: Fleet, accounts: Accounts,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    helm.run("install", RELEASE, str(CHART), "--set", f"secret.existingSecret={SECRET}")
    monkeypatch.setenv("KUBECONFIG", str(service_account_kubeconfig(
        control_plane, namespace, tmp_path / "operator.kubeconfig")))
    for name in ("wa-0", "wa-1"):
        fleet.add(name, auto_pair=0.2)  # a new session's QR code is scanned at once
    seed_sessions(fleet, accounts, {"wa-0": ["a1"], "wa-1": ["b1"]})
    metrics_port = free_port()
    config = settings(namespace, peering=FULLNAME, priority=10, api_key_secret=SECRET,
                      webhook_secret=SECRET, metrics_port=metrics_port)
    with running_operator(config) as runner:
        accounts.create("c1")  # placed by the operator
        wait_for("every account Connected and mirrored", lambda: all_settled(accounts, 3))

        # wa-0 crashes; a1 comes back on wa-1.
        fleet.simulators["wa-0"].fault("crash")
        fleet.set_status("wa-0", ready=False)
        fleet.simulators["wa-0"].move("a1", fleet.simulators["wa-1"], quiet=True)
        wait_for("a1 reassigned to wa-1", lambda: accounts.pod_of("a1") == "wa-1")
        wait_for("a Reassigned event posted with the operator's identity",
                 lambda: "Reassigned" in [r for _, r, _ in accounts.events(fleet.core, "a1")])

        def scraped() -> dict[str, float]:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            ns = f'namespace="{namespace}"'
            wanted = {
                "connected": f'wa_controller_accounts{{{ns},phase="Connected"}}',
                "reassigned": f"wa_controller_reassignments_total{{{ns}}}",
                "wa-1 sessions": f'wa_controller_instance_sessions{{{ns},pod="wa-1"}}',
                "errors": f"wa_controller_reconcile_errors_total{{{ns}}}",
            }
            values = {}
            for label, series in wanted.items():
                match = re.search(re.escape(series) + r" (\S+)", text)
                values[label] = float(match.group(1)) if match else float("nan")
            return values

        # c1 was placed on wa-0 too: it is started again on wa-1 (placed, not reassigned).
        expected = {"connected": 3.0, "reassigned": 1.0, "wa-1 sessions": 3.0, "errors": 0.0}
        try:
            wait_for(f"the metrics endpoint to report {expected}",
                     lambda: scraped() == expected, timeout=15)
        except AssertionError as error:
            events = {n: accounts.events(fleet.core, n) for n in ("a1", "b1", "c1")}
            raise AssertionError(f"{error}; the endpoint says {scraped()}; "
                                 f"events: {events}") from None
    log = runner.output
    assert "Forbidden" not in log, "the operator hit an RBAC refusal"
    assert " 403" not in log, "the operator hit an RBAC refusal"


def test_the_manifests_are_what_the_chart_renders(control_plane: ControlPlane) -> None:
    crd_file = "waaccounts.wa-controller.io.yaml"
    assert (CHART / "crds" / crd_file).read_text() == (manifests.ROOT / "crds" / crd_file
                                                       ).read_text(), "copy crds/ into the chart"
    assert manifests.main(["--check"]) == 0, "run hack/generate-manifests"
    kubectl = [str(tool("kubectl")), f"--kubeconfig={control_plane.kubeconfig}"]

    def built(overlay: str) -> dict[manifests.Key, dict[str, object]]:
        out = subprocess.run([*kubectl, "kustomize", str(manifests.MANIFESTS / overlay)],
                             capture_output=True, text=True, check=True).stdout
        return {manifests.key_of(o): o for o in yaml.safe_load_all(out) if o}

    def rendered(*values: str) -> dict[manifests.Key, dict[str, object]]:
        objs = manifests.helm_template(*values)
        return {manifests.key_of(o): o for o in objs}

    base = built("base")
    crds_and_namespace = {k for k in base if k[0] in ("CustomResourceDefinition", "Namespace")}
    assert {k: v for k, v in base.items() if k not in crds_and_namespace} == rendered()
    wide = built("overlays/cluster-wide")
    assert {k: v for k, v in wide.items() if k not in crds_and_namespace} == rendered(
        "--set", "clusterWide=true")
    assert ("Secret", manifests.NAMESPACE, manifests.NAMESPACE) not in base, \
        "no secret belongs in git"


def test_the_kind_demo_objects_pass_a_server_side_dry_run(control_plane: ControlPlane,
                                                         chart_crds: None) -> None:
    """hack/kind-up's instances and sample accounts, as the API server would take them."""
    namespaces = control_plane.kubectl("get", "namespaces", "-o", "name").stdout.split()
    if f"namespace/{manifests.NAMESPACE}" not in namespaces:
        control_plane.kubectl("create", "namespace", manifests.NAMESPACE)
    for demo in sorted((manifests.ROOT / "hack" / "kind").glob("*.yaml")):
        result = control_plane.kubectl("apply", "--dry-run=server", "-f", str(demo))
        assert "(server dry run)" in result.stdout, demo.name
