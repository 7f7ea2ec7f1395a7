"""`wa-controller status`: the fleet at a glance, and an exit code for cron.

Where each part comes from: accounts and instance pods from the API server (the truth
the operator writes); each pod's health, load and last probe from the operator's own
memory, as it exports it on /metrics (`wa_controller_instance_*`). The operator's pods are
scraped through the API server's pod proxy, each replica: only the acting one probes, so
per instance pod the freshest probe wins. `--metrics-url` reads one endpoint directly.

Pure: `probes_from_metrics`, `build_status`, `needs_person`, `exit_code`, `render`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from controller import api
from controller.kubeconfig import api_message, status_message

# Phases that wait for a person: a QR code to scan, a session found nowhere, no room,
# a refused account.
NEEDS_PERSON = (api.Phase.PAIRING, api.Phase.LOST, api.Phase.PENDING, api.Phase.FAILED)
NEW_PHASE = "New"  # how an account not decided yet is shown
PHASES = (*(p.value for p in api.Phase), NEW_PHASE)
OPERATOR_SELECTOR = "app.kubernetes.io/name=wa-controller"  # the chart's selector label

# Exit codes: cron's "alert when non-zero" habit.
EXIT_OK = 0
EXIT_NEEDS_PERSON = 1
EXIT_OPERATOR_UNREACHED = 3


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class Probe(_Model):
    """What the operator knows of one instance pod from its last probe."""

    protocol: str
    health: str
    last_probe: datetime
    sessions: int | None = None
    capacity: int | None = None


class PodStatus(_Model):
    namespace: str
    name: str
    ready: bool
    ip: str | None
    protocol: str | None
    health: str  # the operator's word, or "not probed" / "unknown" (operator not reached)
    sessions: int | None
    capacity: int | None
    last_probe: datetime | None


class NeedsPerson(_Model):
    namespace: str
    name: str
    session_id: str
    phase: str
    instance: str | None
    reason: str


class OperatorView(_Model):
    reached: bool
    source: str  # where the per-pod view came from, or was looked for
    error: str | None = None


class FleetStatus(_Model):
    operator: OperatorView
    pods: list[PodStatus]
    phases: dict[str, dict[str, int]]  # namespace -> phase -> accounts
    needs_person: list[NeedsPerson]


# --- pure: metrics, the view, the exit code, the rendering ------------------------------


def probes_from_metrics(texts: Iterable[str]) -> dict[tuple[str, str], Probe]:
    """Per (namespace, pod), the freshest probe among the replicas' /metrics texts."""
    best: dict[tuple[str, str], Probe] = {}
    for text in texts:
        for key, probe in _probes(text).items():
            if key not in best or probe.last_probe > best[key].last_probe:
                best[key] = probe
    return best


def _probes(text: str) -> dict[tuple[str, str], Probe]:
    fields: dict[tuple[str, str], dict[str, Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            key = (labels.get("namespace", ""), labels.get("pod", ""))
            if sample.name == "wa_controller_instance_health" and sample.value == 1:
                fields.setdefault(key, {}).update(protocol=labels.get("protocol", ""),
                                                  health=labels.get("health", ""))
            elif sample.name == "wa_controller_instance_last_probe_timestamp_seconds":
                fields.setdefault(key, {})["last_probe"] = datetime.fromtimestamp(
                    sample.value, UTC)
            elif sample.name == "wa_controller_instance_sessions":
                fields.setdefault(key, {})["sessions"] = int(sample.value)
            elif sample.name == "wa_controller_instance_capacity":
                fields.setdefault(key, {})["capacity"] = int(sample.value)
    return {key: Probe(**f) for key, f in fields.items() if {"health", "last_probe"} <= f.keys()}


def needs_person(account: Mapping[str, Any]) -> str | None:
    """Why the account waits for a person, or None."""
    status = account.get("status") or {}
    reasons = []
    phase = status.get("phase")
    if phase in NEEDS_PERSON:
        reasons.append(status.get("message") or phase)
    mirrored = next((c for c in status.get("conditions") or []
                     if c.get("type") == api.ConditionType.MIRRORED), None)
    if mirrored is not None and mirrored.get("status") == "False":
        reasons.append(f"not mirrored: {mirrored.get('reason')}: {mirrored.get('message')}")
    return "; ".join(reasons) or None


def build_status(accounts: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]],
                 probes: Mapping[tuple[str, str], Probe], operator: OperatorView
                 ) -> FleetStatus:
    """The view from what the API server and the operator said."""
    rows = []
    for pod in sorted(pods, key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"])):
        metadata, status = pod["metadata"], pod.get("status") or {}
        key = (metadata["namespace"], metadata["name"])
        probe = probes.get(key)
        annotations = metadata.get("annotations") or {}
        capacity = annotations.get(api.CAPACITY_ANNOTATION)
        rows.append(PodStatus(
            namespace=key[0], name=key[1],
            ready=any(c.get("type") == "Ready" and c.get("status") == "True"
                      for c in status.get("conditions") or []),
            ip=status.get("podIP"),
            protocol=probe.protocol if probe else annotations.get(api.PROTOCOL_ANNOTATION),
            health=probe.health if probe else "not probed" if operator.reached else "unknown",
            sessions=probe.sessions if probe else None,
            capacity=probe.capacity if probe and probe.capacity is not None else
            int(capacity) if capacity and capacity.isdigit() else None,
            last_probe=probe.last_probe if probe else None,
        ))
    phases: dict[str, dict[str, int]] = {}
    waiting = []
    for account in sorted(accounts, key=lambda a: (a["metadata"]["namespace"],
                                                   a["metadata"]["name"])):
        metadata, status = account["metadata"], account.get("status") or {}
        phase = status.get("phase") or NEW_PHASE
        counts = phases.setdefault(metadata["namespace"], dict.fromkeys(PHASES, 0))
        counts[phase] = counts.get(phase, 0) + 1
        reason = needs_person(account)
        if reason is not None:
            waiting.append(NeedsPerson(
                namespace=metadata["namespace"], name=metadata["name"],
                session_id=(account.get("spec") or {}).get("sessionId", ""), phase=phase,
                instance=(status.get("instance") or {}).get("pod"), reason=reason))
    return FleetStatus(operator=operator, pods=rows, phases=phases, needs_person=waiting)


def exit_code(status: FleetStatus) -> int:
    """1 when an account needs a person; else 3 when the operator could not be asked
    (pod health unknown); else 0."""
    if status.needs_person:
        return EXIT_NEEDS_PERSON
    if not status.operator.reached:
        return EXIT_OPERATOR_UNREACHED
    return EXIT_OK


def _age(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "never"
    seconds = max(0, int((now - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=False)]
    lines = ["   ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in (headers, *rows)]
    return "\n".join(lines) + "\n"


def render(status: FleetStatus, *, wide: bool, now: datetime) -> str:
    """The human view: the operator, the pods, the accounts per phase, who needs a person."""
    operator = status.operator
    parts = [f"Operator: per-pod view from {operator.source}\n" if operator.reached else
             f"Operator: NOT REACHED ({operator.error}); pod health and last probe "
             f"unknown. Looked at {operator.source}\n"]
    headers = ["NAMESPACE", "POD", "PROTOCOL", "HEALTH", "SESSIONS", "LAST PROBE"]
    if wide:
        headers += ["READY", "IP"]
    pods = []
    for pod in status.pods:
        row = [pod.namespace, pod.name, pod.protocol or "?", pod.health,
               f"{'?' if pod.sessions is None else pod.sessions}/"
               f"{'?' if pod.capacity is None else pod.capacity}",
               _age(pod.last_probe, now)]
        if wide:
            row += ["yes" if pod.ready else "no", pod.ip or "-"]
        pods.append(row)
    parts.append("\nInstance pods\n" + (_table(headers, pods) if pods else "none found\n"))
    shown = [p for p in PHASES if any(c.get(p) for c in status.phases.values())]
    phase_rows = [[ns, str(sum(counts.values())), *(str(counts.get(p, 0)) for p in shown)]
                  for ns, counts in sorted(status.phases.items())]
    parts.append("\nAccounts\n" + (_table(["NAMESPACE", "TOTAL", *(p.upper() for p in shown)],
                                          phase_rows) if phase_rows else "none found\n"))
    headers = ["NAMESPACE", "ACCOUNT", "PHASE"] + (["SESSION", "INSTANCE"] if wide else [])
    waiting = [[a.namespace, a.name, a.phase,
                *([a.session_id, a.instance or "-"] if wide else []), a.reason]
               for a in status.needs_person]
    parts.append(f"\nNeed a person: {len(waiting)}\n"
                 + (_table([*headers, "REASON"], waiting) if waiting else ""))
    return "".join(parts)


# --- the shell: ask the API server and the operator -------------------------------------


class StatusError(RuntimeError):
    """The API server could not be asked: nothing to show."""


async def gather(api_client: client.ApiClient, *, namespace: str | None,
                 instance_selector: str, operator_namespace: str, operator_selector: str,
                 metrics_url: str | None) -> FleetStatus:
    custom, core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
    where = f"namespace {namespace}" if namespace else "all namespaces"
    try:
        if namespace:
            accounts = await custom.list_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.PLURAL)
            pods = await core.list_namespaced_pod(namespace, label_selector=instance_selector)
        else:
            accounts = await custom.list_cluster_custom_object(api.GROUP, api.VERSION,
                                                               api.PLURAL)
            pods = await core.list_pod_for_all_namespaces(label_selector=instance_selector)
    except ApiException as error:
        hint = "; pass --namespace" if not namespace and error.status == 403 else ""
        raise StatusError(f"cannot list WAAccounts and instance pods in {where}: "
                          f"{api_message(error)}{hint}") from None
    if metrics_url:
        texts, operator = await _scrape_url(metrics_url)
    else:
        texts, operator = await _scrape_operator_pods(core, operator_namespace,
                                                      operator_selector)
    try:
        probes = probes_from_metrics(texts)
    except ValueError:
        probes, operator = {}, OperatorView(reached=False, source=operator.source,
                                            error="the answer is not Prometheus metrics")
    return build_status(accounts["items"], [api_client.sanitize_for_serialization(p)
                                            for p in pods.items], probes, operator)


async def _scrape_url(url: str) -> tuple[list[str], OperatorView]:
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.get(url)
            answer.raise_for_status()
    except httpx.HTTPError as error:
        return [], OperatorView(reached=False, source=url,
                                error=str(error) or type(error).__name__)
    return [answer.text], OperatorView(reached=True, source=url)


async def _scrape_operator_pods(core: client.CoreV1Api, namespace: str, selector: str
                                ) -> tuple[list[str], OperatorView]:
    """Every running replica's /metrics, through the API server's pod proxy."""
    source = f"the pods {selector} in namespace {namespace} (API server pod proxy)"
    try:
        pods = (await core.list_namespaced_pod(namespace, label_selector=selector)).items
    except ApiException as error:
        return [], OperatorView(reached=False, source=source, error=api_message(error))
    texts, errors = [], []
    for pod in pods:
        port = next((p.container_port for c in pod.spec.containers for p in c.ports or []
                     if p.name == "metrics"), None)
        if pod.status.phase != "Running" or port is None:
            continue
        try:
            # The raw answer: the client would read the metrics text as JSON.
            answer = await core.connect_get_namespaced_pod_proxy_with_path(
                f"{pod.metadata.name}:{port}", namespace, "metrics", _preload_content=False)
            body = await answer.text()
        except ApiException as error:
            errors.append(f"{pod.metadata.name}: {api_message(error)}")
            continue
        if answer.status == 200:
            texts.append(body)
        else:
            why = status_message(body, answer.status, answer.reason)
            errors.append(f"{pod.metadata.name}: {why}")
    if not texts:
        why = "; ".join(errors) or "no running operator pod with a metrics port"
        return [], OperatorView(reached=False, source=source, error=why)
    return texts, OperatorView(reached=True, source=f"{len(texts)} operator pod(s) in "
                                                    f"namespace {namespace}")


