"""Helpers for tests and the benchmark: instance simulators on loopback, Pod objects that
point at them, the operator in-process (kopf's KopfRunner), and waiting with deadlines."""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
from kopf.testing import KopfRunner
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from controller import api
from controller.handlers import build_registry
from controller.settings import Settings
from controller.simulator import PROTOCOLS as SIMULATED
from devtools.control_plane import free_port, stop_process

T = TypeVar("T")
INSTANCE_LABELS = {"app.kubernetes.io/component": "whatsapp-instance"}
_addresses = itertools.count(10)


def wait_for(
    what: str, probe: Callable[[], T | None], *, timeout: float = 30.0, every: float = 0.2
) -> T:
    """Poll `probe` until it returns something truthy, or fail saying what never happened."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last saw {last!r}")


def next_loopback() -> str:
    """A fresh 127.0.0.x address: the pod IP of one simulated instance."""
    n = next(_addresses)
    return f"127.0.{n // 250}.{n % 250 + 2}"


# One client for every simulator's control API, shared by threads: a client per call
# builds a TLS context each time (~30 ms of CPU), which made a benchmark's 500 puts take
# 16 s and starved its watch thread.
_CONTROL = httpx.Client(timeout=10, trust_env=False)


@dataclass
class Simulator:
    """One `wa-controller simulate-instance` process and its control API."""

    protocol: str
    ip: str
    port: int
    process: subprocess.Popen[bytes]
    api_key_file: Path

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        answer = _CONTROL.request(method, f"{self.url}/_sim/{path}", json=body)
        answer.raise_for_status()
        return answer.json()

    def sessions(self) -> dict[str, dict[str, Any]]:
        return self.control("GET", "sessions")

    def put(self, session: str, state: str = "working", *, quiet: bool = False) -> None:
        """Set a session's state; unless `quiet`, the simulator sends its webhook."""
        self.control("PUT", f"sessions/{session}", {"state": state, "quiet": quiet})

    def remove(self, session: str) -> None:
        self.control("DELETE", f"sessions/{session}")

    def move(self, session: str, to: Simulator, *, quiet: bool = False) -> None:
        """The session now runs on `to`, which says so by webhook unless `quiet`."""
        self.control("POST", "move", {"session": session, "to": to.url, "quiet": quiet})

    def fault(self, mode: str, delay: float = 0.0) -> None:
        self.control("POST", "fault", {"mode": mode, "delay": delay})

    def configure(self, **options: Any) -> None:
        self.control("POST", "config", options)

    def requests(self, route: str | None = None) -> int:
        """Requests served, in all or on one route (e.g. "GET /api/sessions")."""
        counts = self.requests_by_route()
        return sum(counts.values()) if route is None else counts.get(route, 0)

    def requests_by_route(self) -> dict[str, int]:
        """Requests served so far, by route (the control API is not counted)."""
        return {route: int(n) for route, n in self.control("GET", "stats")["requests"].items()}

    def webhooks(self) -> dict[str, int]:
        """Webhook deliveries: attempts, delivered, refused, failed."""
        return self.control("GET", "stats")["webhooks"]

    def starts(self) -> dict[str, Any]:
        """Starts received: creates, restores, stops, doubleCreates, peakConcurrentCreates,
        createdAgain (the first 20 sessions created more than once on this pod)."""
        return self.control("GET", "stats")["starts"]

    def stop(self) -> None:
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        if self.process.poll() is None:
            self.process.kill()


@dataclass(frozen=True)
class WebhookTarget:
    """The operator's webhook receiver (its base URL), and the file with the secret the
    simulators sign with."""

    url: str
    secret_file: Path

    def url_for(self, protocol: str) -> str:
        """What an instance is configured with: blazz takes a base URL (`LARAVEL_URL`) and
        appends its fixed path; WAHA takes the whole URL."""
        return self.url if SIMULATED[protocol].webhook_path else f"{self.url}/webhooks"


def post_from(source_ip: str, url: str, body: bytes, headers: dict[str, str] | None = None
              ) -> httpx.Response:
    """POST from a chosen loopback address, as if sent by the pod with that IP."""
    transport = httpx.HTTPTransport(local_address=source_ip)
    with httpx.Client(transport=transport, timeout=10) as http:
        return http.post(url, content=body,
                         headers={"Content-Type": "application/json", **(headers or {})})


def start_simulator(protocol: str, api_key_file: Path, *, auto_pair: float | None = None,
                    webhooks: WebhookTarget | None = None, worker_id: str | None = None,
                    tier: str = "default", storage_dir: Path | None = None,
                    create_delay: float = 0.5, ideal: bool = False) -> Simulator:
    """One simulator process, faithful to the recorded service unless `ideal`. Its creates
    take `create_delay` (a browser launch: the recorded ones take seconds)."""
    ip = next_loopback()
    port = free_port(ip)
    argv = [sys.executable, "-m", "controller", "simulate-instance", "--protocol", protocol,
            "--listen", f"{ip}:{port}", "--api-key-file", str(api_key_file),
            "--tier", tier, "--create-delay", str(create_delay)]
    if storage_dir is not None:
        argv += ["--storage-dir", str(storage_dir)]
    if ideal:
        argv.append("--ideal")
    if auto_pair is not None:
        argv += ["--auto-pair", str(auto_pair)]
    if webhooks is not None:
        argv += ["--webhook-url", webhooks.url_for(protocol),
                 "--webhook-secret-file", str(webhooks.secret_file)]
    if worker_id is not None:
        argv += ["--worker-id", worker_id]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sim = Simulator(protocol, ip, port, process, api_key_file)

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"simulator exited: {process.stderr.read().decode()}")
        with contextlib.suppress(httpx.HTTPError):
            return _CONTROL.get(f"{sim.url}/_sim/stats", timeout=1).status_code == 200
        return False

    wait_for(f"the {protocol} simulator on {sim.url}", answers, timeout=20)
    return sim


class ApplicationStub:
    """The application's webhook endpoint, on loopback: answers from `script` (then 200)
    and keeps what it accepted, with when it arrived (monotonic)."""

    def __init__(self) -> None:
        self.script: list[int] = []
        self.always: int | None = None  # answer this to everything (a long outage)
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.arrived: list[float] = []
        self.answers: list[int] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            # Keeps connections open, as applications' web servers do: one connection per
            # relayed event would cost the operator (and this stub) a TCP setup each.
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with stub.lock:
                    status = stub.always or (stub.script.pop(0) if stub.script else 200)
                    stub.answers.append(status)
                    if status == 200:
                        stub.received.append((dict(self.headers), body))
                        stub.arrived.append(time.monotonic())
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/whatsapp/webhooks/webjs"

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(body) for _, body in self.received]

    def __enter__(self) -> ApplicationStub:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()


@dataclass
class Fleet:
    """Instance Pod objects in one namespace, each pointing at a simulator."""

    core: client.CoreV1Api
    namespace: str
    api_key_file: Path
    webhooks: WebhookTarget | None = None  # where new simulators send their webhooks
    simulators: dict[str, Simulator] = field(default_factory=dict)
    # Stored logins, one directory per storage group: pods of a group restore each other's
    # sessions (the seed's instances share one sessions folder).
    storage_dirs: dict[str, Path] = field(default_factory=dict)

    @property
    def storage_dir(self) -> Path | None:
        return self.storage_dirs.get("shared")

    def add(self, name: str, protocol: str = "blazz", *, capacity: int = 50, ready: bool = True,
            labels: dict[str, str] | None = None, auto_pair: float | None = None,
            tier: str | None = None, create_delay: float = 0.5,
            storage_group: str = "shared") -> Simulator:
        """A pod and its simulator. WAHA pods are Plus unless `tier="core"` says otherwise."""
        if storage_group not in self.storage_dirs:
            self.storage_dirs[storage_group] = Path(tempfile.mkdtemp(prefix="wa-logins-"))
        sim = start_simulator(protocol, self.api_key_file, auto_pair=auto_pair,
                              webhooks=self.webhooks, worker_id=name,
                              tier=tier or ("plus" if protocol == "waha" else "default"),
                              storage_dir=self.storage_dirs[storage_group],
                              create_delay=create_delay)
        self.simulators[name] = sim
        annotations = {"wa-controller.io/protocol": protocol,
                       "wa-controller.io/port": str(sim.port),
                       "wa-controller.io/capacity": str(capacity)}
        if storage_group != "shared":
            annotations[api.STORAGE_GROUP_ANNOTATION] = storage_group
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "labels": {**INSTANCE_LABELS, **(labels or {})},
                "annotations": annotations,
            },
            # nodeName: with no kubelet, a deleted pod then stays Terminating, as in life.
            "spec": {"nodeName": "simulated-node",
                     "containers": [{"name": "instance", "image": "wa-controller:sim"}]},
        }
        self.core.create_namespaced_pod(self.namespace, pod)
        self.set_status(name, ready=ready, ip=sim.ip)
        return sim

    def set_status(self, name: str, *, ready: bool, ip: str | None = None) -> None:
        ip = ip or self.simulators[name].ip
        status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "conditions": [
            {"type": "Ready", "status": "True" if ready else "False"}]}
        self.core.patch_namespaced_pod_status(name, self.namespace, {"status": status})

    def terminate(self, name: str, grace_seconds: int = 30) -> None:
        """Delete gracefully: with no kubelet the pod stays Terminating."""
        self.core.delete_namespaced_pod(name, self.namespace,
                                        grace_period_seconds=grace_seconds)

    def annotate(self, name: str, key: str, value: str | None) -> None:
        self.core.patch_namespaced_pod(name, self.namespace,
                                       {"metadata": {"annotations": {key: value}}})

    def remove(self, name: str) -> None:
        """The pod is gone for good (and its process with it)."""
        self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)
        self.simulators.pop(name).stop()

    def stop_all(self) -> None:
        for sim in self.simulators.values():
            sim.stop()
        for directory in self.storage_dirs.values():
            shutil.rmtree(directory, ignore_errors=True)


class Accounts:
    """WAAccounts in one namespace, through the real API server."""

    def __init__(self, custom: client.CustomObjectsApi, namespace: str) -> None:
        self.custom = custom
        self.namespace = namespace

    def create(self, name: str, session: str | None = None, **spec: Any) -> None:
        body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name},
                "spec": {"sessionId": session or name, **spec}}
        self.custom.create_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.PLURAL, body)

    def patch_spec(self, name: str, **spec: Any) -> None:
        self.custom.patch_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.PLURAL, name, {"spec": spec})

    def get(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.PLURAL, name)

    def all(self) -> dict[str, dict[str, Any]]:
        items = self.custom.list_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.PLURAL)["items"]
        return {item["metadata"]["name"]: item for item in items}

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def pod_of(self, name: str) -> str | None:
        return (self.status(name).get("instance") or {}).get("pod")

    def events(self, core: client.CoreV1Api, name: str) -> list[tuple[str, str, str]]:
        items = core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}").items
        return [(e.type, e.reason, e.message) for e in items]


@contextlib.contextmanager
def running_operator(settings: Settings) -> Iterator[KopfRunner]:
    """The operator in-process, as `wa-controller run` runs it, against the test cluster."""
    args = ["run", "--verbose"]
    if settings.peering is None:
        args.append("--standalone")
    else:
        args += [f"--peering={settings.peering}", f"--priority={settings.priority or 0}"]
    args += [f"--namespace={ns}" for ns in settings.namespaces]
    with KopfRunner(args, registry=build_registry(settings), timeout=60) as runner:
        yield runner


@contextlib.contextmanager
def operator_process(log: Path, *flags: str, **settings: Any) -> Iterator[subprocess.Popen[bytes]]:
    """`wa-controller run` as its own process (its whole log in `log`), stopped at the end.
    `settings` become flags (`probe_interval=1` -> `--probe-interval=1`)."""
    argv = [sys.executable, "-m", "controller", "run", *flags,
            *(f"--{name.replace('_', '-')}={value}" for name, value in settings.items())]
    with log.open("ab") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop_process(process, timeout=20)


def operator_settings(namespace: str, **overrides: Any) -> Settings:
    """Settings for a test operator: one namespace, quick probes, an in-memory mirror."""
    values = {
        "namespaces": [namespace], "operator_namespace": namespace, "probe_interval": 1.0,
        "probe_timeout": 1.0, "probe_failure_threshold": 2, "start_grace": 5.0,
        "liveness_port": None, "metrics_port": None, "webhook_port": None,
        "database_url": "sqlite://",
        **overrides,
    }
    return Settings(**values)


def scrape(port: int) -> dict[str, float]:
    """The operator's /metrics, as `name{label="v",...}` (labels sorted) -> value."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def all_connected(accounts: Accounts, count: int) -> bool:
    phases = [(a.get("status") or {}).get("phase") for a in accounts.all().values()]
    return len(phases) == count and all(p == "Connected" for p in phases)


def all_settled(accounts: Accounts, count: int) -> bool:
    """Every account Connected and its mirror row written: nothing left to write."""
    items = accounts.all().values()
    return all_connected(accounts, count) and all(
        any(c["type"] == "Mirrored" and c["status"] == "True"
            for c in (a.get("status") or {}).get("conditions", []))
        for a in items)


def seed_sessions(fleet: Fleet, accounts: Accounts, layout: dict[str, list[str]]) -> None:
    """Sessions already running on instances, and accounts for them."""
    for pod, sessions in layout.items():
        for session in sessions:
            fleet.simulators[pod].put(session, "working")
            accounts.create(session)


