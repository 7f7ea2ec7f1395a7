"""`hack/benchmark`: the operator against a simulated fleet on a real control plane, and the
seed's algorithm on the same fleet, side by side.

It starts its own control plane, N blazz simulators with their Pod objects, and the operator
as a separate process (so its RSS is its own), then measures a burst of creations, the
steady state, an instance crash whose sessions reappear elsewhere, and an instance that is
gone with its sessions. Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from controller import api
from controller.instances import BlazzAdapter
from controller.settings import Settings
from devtools.control_plane import ControlPlane, free_port, stop_process
from devtools.harness import (
    Accounts,
    ApplicationStub,
    Fleet,
    Simulator,
    WebhookTarget,
    post_from,
    wait_for,
)
from devtools.postgres import Postgres

NAMESPACE = "bench"
PLAIN_NAMESPACE = "bench-plain"  # the plain client's accounts: not served by the operator
API_KEY = "benchmark-key"
WEBHOOK_SECRET = "benchmark-webhook-secret"  # noqa: S105 - a throwaway fleet's secret
REDISCOVER_TOKEN = "benchmark-rediscover-token"  # noqa: S105
FAST_PATH_PROBE_INTERVAL = 600.0
CRASHED = "wa-0"  # the pod the crash phase crashes (it stays down)
DRAINED = "wa-2"  # the pod the drain phase drains (it stays drained)
SEED_TIMEOUT = 5.0  # the seed's per-instance timeout while it searches
LAUNCH_SECONDS = 0.5  # a simulated browser launch (the recorded ones take seconds)


@dataclass
class Report:
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    # Every figure as a number, under a stable key (`--json FILE` writes them; see README).
    figures: dict[str, float] = field(default_factory=dict)

    def add(self, what: str, ours: str, seed: str = "", **figures: float) -> None:
        self.rows.append((what, ours, seed))
        self.figures.update(figures)
        print(f"  {what}: {ours}" + (f"   (seed: {seed})" if seed else ""), flush=True)

    def print(self) -> None:
        width = max(len(r[0]) for r in self.rows)
        ours_width = max(len(r[1]) for r in [*self.rows, ("", "wa-controller", "")])
        print(f"\n{'':{width}}  {'wa-controller':{ours_width}}  seed algorithm")
        for what, ours, seed in self.rows:
            print(f"{what:{width}}  {ours:{ours_width}}  {seed}")


class StatusWatch:
    """Every account's (pod, phase) as one watch tells it, and when each last changed.

    Looking at 10,000 accounts by listing them all is a load of its own on the API server
    and takes seconds itself, which blurs what is measured; one watch costs neither, and
    says when each account became right to the fraction of a second.
    """

    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts
        self._lock = threading.Lock()
        self._status: dict[str, tuple[str | None, str | None]] = {}
        self._changed_at: dict[str, float] = {}
        self._mirrored_at: dict[str, float] = {}  # accounts showing Mirrored=True, since
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def status(self) -> dict[str, tuple[str | None, str | None]]:
        """Account name -> (pod, phase), as the watch last told."""
        with self._lock:
            return dict(self._status)

    def wait(self, what: str, names: Iterable[str], right: Callable[[str, str | None,
             str | None], bool], timeout: float) -> float:
        """Wait until `right(name, pod, phase)` holds for every name; returns when the last
        of them became right (monotonic), not when this noticed."""
        names = list(names)
        began = last_told = time.monotonic()

        def all_right() -> float | None:
            nonlocal last_told
            with self._lock:
                if all(right(n, *self._status.get(n, (None, None))) for n in names):
                    return max((self._changed_at.get(n, 0.0) for n in names), default=0.0)
                if time.monotonic() - last_told >= 20:  # how it goes, for a long wait
                    last_told = time.monotonic()
                    phases = Counter(self._status.get(n, (None, None))[1] for n in names)
                    print(f"    {last_told - began:4.0f} s: " + ", ".join(
                        f"{phase or 'no status'} {count}" for phase, count in
                        sorted(phases.items(), key=lambda kv: -kv[1])), flush=True)
            return None

        return wait_for(what, all_right, timeout=timeout, every=0.2)

    def unmirrored(self, names: Iterable[str]) -> int:
        """How many of the accounts do not show Mirrored=True."""
        with self._lock:
            return sum(n not in self._mirrored_at for n in names)

    def mirrored_at(self, names: Iterable[str]) -> float | None:
        """When the last of the accounts came to show Mirrored=True (None: not all do)."""
        names = list(names)
        with self._lock:
            if any(n not in self._mirrored_at for n in names):
                return None
            return max((self._mirrored_at[n] for n in names), default=0.0)

    def changed_at(self, names: Iterable[str]) -> dict[str, float]:
        """When each account's (pod, phase) last changed (monotonic)."""
        with self._lock:
            return {n: self._changed_at.get(n, 0.0) for n in names}

    def _run(self) -> None:
        custom, namespace = self._accounts.custom, self._accounts.namespace
        version = self._list()
        while not self._stop.is_set():
            try:
                for event in watch.Watch().stream(
                        custom.list_namespaced_custom_object, api.GROUP, api.VERSION,
                        namespace, api.PLURAL, resource_version=version, timeout_seconds=60,
                        allow_watch_bookmarks=True):
                    item = event["object"]
                    if event["type"] == "ERROR":  # 410: the history is gone, list again
                        version = self._list()
                        break
                    version = item["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self._saw(item, deleted=event["type"] == "DELETED")
            except ApiException as error:
                version = self._list() if error.status == 410 else version
            except Exception:  # a dropped connection: watch on from where it was
                time.sleep(0.5)

    def _list(self) -> str:
        answer = self._accounts.custom.list_namespaced_custom_object(
            api.GROUP, api.VERSION, self._accounts.namespace, api.PLURAL)
        for item in answer["items"]:
            self._saw(item)
        return str(answer["metadata"]["resourceVersion"])

    def _saw(self, item: dict[str, Any], deleted: bool = False) -> None:
        name = item["metadata"]["name"]
        status = item.get("status") or {}
        now = (None if deleted else (status.get("instance") or {}).get("pod"),
               None if deleted else status.get("phase"))
        mirrored = not deleted and any(
            c.get("type") == "Mirrored" and c.get("status") == "True"
            for c in status.get("conditions") or [])
        with self._lock:
            if self._status.get(name) != now:
                self._status[name] = now
                self._changed_at[name] = time.monotonic()
            if not mirrored:
                self._mirrored_at.pop(name, None)
            elif name not in self._mirrored_at:
                self._mirrored_at[name] = time.monotonic()


# Who else shares the machine, by the name of the program each process runs.
PARTS = {"kube-apiserver": "api_server", "etcd": "etcd", "postgres": "postgres"}


def cpu_by_part(operator: int) -> Counter[str]:
    """CPU seconds so far of each part sharing the machine, from /proc: which of them a
    burst waits for when the two cores are busy."""
    tick = os.sysconf("SC_CLK_TCK")
    parts: Counter[str] = Counter()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        pid, program = int(proc.name), Path(argv[0].decode(errors="replace")).name
        part = ("operator" if pid == operator else "benchmark" if pid == os.getpid()
                else "simulators" if b"simulate-instance" in argv
                else PARTS.get(program.split(":")[0]))
        if part is not None:
            parts[part] += (int(stat[11]) + int(stat[12])) / tick
    return parts


@dataclass
class Operator:
    process: subprocess.Popen[bytes]

    def memory_mib(self) -> tuple[float, float]:
        """(current RSS, peak RSS) in MiB, from /proc."""
        fields = dict(line.split(":", 1) for line in
                      Path(f"/proc/{self.process.pid}/status").read_text().splitlines())
        return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)

    def cpu_seconds(self) -> float:
        stat = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


class Bench:
    def __init__(self, plane: ControlPlane, workdir: Path, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = workdir
        self.report = Report()
        configuration = client.Configuration()
        config.load_kube_config(str(plane.kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = 32
        self.api = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api)
        self.accounts = Accounts(client.CustomObjectsApi(self.api), NAMESPACE)
        self.kubeconfig = plane.kubeconfig
        key_file = workdir / "api-key"
        key_file.write_text(API_KEY)
        secret_file = workdir / "webhook-secret"
        secret_file.write_text(WEBHOOK_SECRET)
        self.webhook_url = f"http://127.0.0.1:{free_port()}"
        self.fleet = Fleet(self.core, NAMESPACE, key_file,
                           webhooks=WebhookTarget(self.webhook_url, secret_file))
        self.operator: Operator | None = None
        self.operator_started = 0.0  # monotonic time of the operator process's start
        self.postgres = Postgres(log_statements=True)
        self.plane = plane
        self.app = ApplicationStub()  # the application the operator relays webhooks to
        self.watch = StatusWatch(self.accounts)

    # --- the world -------------------------------------------------------------------

    def setup(self) -> None:
        self.core.create_namespace({"metadata": {"name": NAMESPACE}})
        self.watch.start()
        self.core.create_namespaced_secret(NAMESPACE, {
            "metadata": {"name": "wa-controller-instances"},
            "data": {"api-key": base64.b64encode(API_KEY.encode()).decode()}})
        self.app.__enter__()
        self.core.create_namespaced_secret(NAMESPACE, {
            "metadata": {"name": "wa-controller-relay"},
            "stringData": {"url": self.app.url, "hmac-secret": "benchmark-app-secret"}})
        self.core.create_namespaced_secret(NAMESPACE, {
            "metadata": {"name": "wa-controller-webhooks"},
            "data": {key: base64.b64encode(value.encode()).decode() for key, value in {
                "hmac-secret": WEBHOOK_SECRET, "rediscover-token": REDISCOVER_TOKEN}.items()}})
        capacity = self.args.capacity or -(-self.args.accounts * 3 // (2 * self.args.pods))
        for i in range(self.args.pods):
            self.fleet.add(f"wa-{i}", "blazz", capacity=capacity, auto_pair=0.5,
                           create_delay=LAUNCH_SECONDS)
        self.postgres.start()
        self.postgres.sql("CREATE DATABASE bench")
        self.start_operator(self.args.probe_interval)
        print(f"fleet: {self.args.pods} blazz pods (capacity {capacity}) sending webhooks, "
              f"probe interval {self.args.probe_interval} s; operator log "
              f"{self.workdir / 'operator.log'}", flush=True)

    def start_operator(self, probe_interval: float) -> None:
        log = (self.workdir / "operator.log").open("ab")
        self.operator_started = time.monotonic()
        self.operator = Operator(subprocess.Popen(
            [sys.executable, "-m", "controller", "run", f"--namespaces={NAMESPACE}",
             f"--operator-namespace={NAMESPACE}", f"--probe-interval={probe_interval}",
             "--start-grace=30", f"--liveness-port={free_port()}", "--log-format=json",
             f"--starts-per-pod={self.args.starts_per_pod}",
             f"--metrics-port={free_port()}",
             f"--webhook-port={self.webhook_url.rsplit(':', 1)[1]}",
             # Measure the relay, not the per-source flood guard.
             "--webhook-rate=100000", "--webhook-burst=100000",
             f"--database-url={self.postgres.url(database='bench')}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)}))

    def stop_operator(self) -> None:
        if self.operator is not None:
            stop_process(self.operator.process, timeout=20)
            self.operator = None

    def close(self) -> None:
        self.watch.stop()
        self.stop_operator()
        self.app.__exit__()
        self.fleet.stop_all()
        self.postgres.remove()
        self.api.close()

    def sims(self) -> dict[str, Simulator]:
        return self.fleet.simulators

    def placements(self) -> dict[str, tuple[str | None, str | None]]:
        """Account name -> (pod, phase), as status says."""
        return {name: ((item.get("status") or {}).get("instance", {}).get("pod"),
                       (item.get("status") or {}).get("phase"))
                for name, item in self.accounts.all().items()}

    def resource_versions(self) -> dict[str, str]:
        return {name: item["metadata"]["resourceVersion"]
                for name, item in self.accounts.all().items()}

    def event_count(self) -> int:
        return len(self.core.list_namespaced_event(NAMESPACE).items)

    def event_reasons(self) -> str:
        reasons = Counter(e.reason for e in self.core.list_namespaced_event(NAMESPACE).items
                          for _ in range(e.count or 1))
        return ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))

    def mirror(self) -> dict[str, tuple[str | None, datetime]]:
        """Account name -> (assigned pod, updated_at), as the SQL mirror says."""
        found = self.postgres.sql(
            "SELECT name, assigned_pod, updated_at FROM whatsapp_accounts "
            "WHERE deleted_at IS NULL", database="bench")
        return {str(name): (pod, stamp) for name, pod, stamp in found}  # type: ignore[misc]

    def api_requests(self) -> Counter[tuple[str, str, str]]:
        """Requests the API server served so far by (verb, resource[/subresource], code), by
        its own counter (`apiserver_request_total`)."""
        text = httpx.get(f"{self.plane.server}/metrics", verify=str(self.plane.ca_file),
                         headers={"Authorization": f"Bearer {self.plane.token}"},
                         timeout=30).text
        served: Counter[tuple[str, str, str]] = Counter()
        for line in text.splitlines():
            if line.startswith("apiserver_request_total{"):
                labels = dict(part.split("=", 1) for part in
                              line[line.index("{") + 1:line.rindex("}")].split(","))
                label = {key: value.strip('"') for key, value in labels.items()}
                resource = label.get("resource", "") + (
                    f"/{label['subresource']}" if label.get("subresource") else "")
                served[(label.get("verb", ""), resource, label.get("code", ""))] += int(
                    float(line.rsplit(" ", 1)[1]))
        return served

    def status_writes(self) -> tuple[int, int]:
        """WAAccount status PATCHes the API server served so far, and of them those refused
        as conflicts (409: written at an older resourceVersion)."""
        patches = {code: count for (verb, resource, code), count in self.api_requests().items()
                   if verb == "PATCH" and resource == "waaccounts/status"}
        return sum(patches.values()), patches.get("409", 0)

    def instance_requests(self) -> Counter[str]:
        """Requests the instances served so far, by route (the control API not counted)."""
        routes: Counter[str] = Counter()
        for sim in self.sims().values():
            routes.update(sim.requests_by_route())
        return routes

    # --- phases ------------------------------------------------------------------------

    def burst(self) -> None:
        n = self.args.accounts
        assert self.operator is not None
        port = int(self.webhook_url.rsplit(":", 1)[1])
        wait_for("the operator's webhook port", lambda: _listening(port), timeout=300,
                 every=0.1)
        time.sleep(5)  # its first probes
        rss, _ = self.operator.memory_mib()
        self.report.add("operator RSS before the burst", f"{rss:.0f} MiB", idle_rss_mib=rss)
        print(f"\nburst: creating {n} WAAccounts at once", flush=True)
        writes_before = self.status_writes()
        requests_before = self.api_requests()
        cpu_before = self.operator.cpu_seconds()
        parts_before = cpu_by_part(self.operator.process.pid)
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: self.accounts.create(
                f"acct-{i:05d}", phoneNumber=f"+62811{i:07d}"), range(n)))
        created = time.monotonic() - started

        names = [f"acct-{i:05d}" for i in range(n)]
        done = self.watch.wait(f"all {n} accounts Connected", names,
                               lambda _, pod, phase: phase == "Connected", timeout=3600)
        elapsed = done - started
        cpu = self.operator.cpu_seconds() - cpu_before
        parts = cpu_by_part(self.operator.process.pid)
        parts.subtract(parts_before)
        placed = self.watch.status()
        writes, conflicts = (a - b for a, b in zip(self.status_writes(), writes_before,
                                                   strict=True))
        requests = Counter({(verb, resource): 0 for verb, resource, _ in requests_before})
        for (verb, resource, _), count in (self.api_requests() - requests_before).items():
            requests[(verb, resource)] += count
        spread = Counter(pod for pod, _ in placed.values())
        loads = [spread.get(name, 0) for name in self.sims()]
        self.report.add("burst: creations sent", f"{created:.1f} s", burst_create_seconds=created)
        self.report.add("burst: all Connected", f"{elapsed:.1f} s after the first creation",
                        burst_connected_seconds=elapsed)
        # The start waves alone take this long, however fast everything else is.
        floor = n * LAUNCH_SECONDS / (self.args.pods * self.args.starts_per_pod)
        self.report.add("burst: the start waves' floor", f"{floor:.1f} s ({n} launches of "
                        f"{LAUNCH_SECONDS} s, {self.args.starts_per_pod} at a time on each of "
                        f"{self.args.pods} pods)", burst_start_waves_floor_seconds=floor)
        # What the burst cost the operator itself: less sensitive than the time to other
        # work on a shared machine.
        self.report.add("burst: operator CPU", f"{cpu:.1f} s ({cpu / n * 1000:.1f} ms per "
                        "account)", burst_operator_cpu_seconds=cpu)
        self.report.add("burst: CPU by part", ", ".join(
            f"{part} {seconds:.0f} s" for part, seconds in parts.most_common())
            + f" (of {elapsed * (os.cpu_count() or 1):.0f} s on {os.cpu_count()} cores)",
            **{f"burst_cpu_{part}_seconds": seconds for part, seconds in parts.items()})
        self.report.add("burst: API requests by kind", ", ".join(
            f"{verb} {resource} {count}" for (verb, resource), count in requests.most_common(8)
            if count))
        self.report.add("burst: status writes", f"{writes} ({writes / n:.2f} per account; "
                        f"{conflicts} refused as conflicts)", burst_status_writes=writes,
                        burst_status_conflicts=conflicts)
        self.report.add("burst: spread per pod", f"min {min(loads)} / max {max(loads)} "
                        f"/ stdev {statistics.pstdev(loads):.2f}",
                        burst_spread_min=min(loads), burst_spread_max=max(loads))
        self.report.add("burst: events", self.event_reasons())
        unmirrored = self.watch.unmirrored(names)
        self.report.add("burst: accounts not yet Mirrored=True when all were Connected",
                        f"{unmirrored}", burst_unmirrored=unmirrored)
        # The plain client measures a quiet API server, and the steady state begins with
        # nothing left to write.
        mirrored = wait_for(f"all {n} accounts Mirrored=True",
                            lambda: self.watch.mirrored_at(names), timeout=1800)
        self.report.add("burst: all Mirrored=True", f"{mirrored - started:.1f} s after the "
                        "first creation", burst_mirrored_seconds=mirrored - started)
        plain, plain_written = self.plain_client(writes, max(1, writes - conflicts))
        self.report.add("limit: plain client, same status writes",
                        f"{plain:.1f} s ({writes / plain:.0f} patches/s, kubernetes_asyncio, "
                        f"32 in flight); burst/limit = {elapsed / plain:.2f}",
                        plain_client_seconds=plain, burst_over_limit=elapsed / plain)
        # A conflict costs the API server less than a write, and no placement needs one.
        self.report.add("limit: plain client, the writes that were not conflicts",
                        f"{plain_written:.1f} s; burst/limit = {elapsed / plain_written:.2f}",
                        plain_client_written_seconds=plain_written,
                        burst_over_limit_written=elapsed / plain_written)
        shaped, _ = self.plain_client(writes, writes, like=self.accounts.status(names[0]))
        self.report.add("limit: plain client, same writes on accounts shaped as the operator's",
                        f"{shaped:.1f} s ({writes / shaped:.0f} patches/s); "
                        f"burst/limit = {elapsed / shaped:.2f}",
                        plain_client_shaped_seconds=shaped,
                        burst_over_limit_shaped=elapsed / shaped)

    def plain_client(self, writes: int, checkpoint: int, like: dict[str, Any] | None = None
                     ) -> tuple[float, float]:
        """The API server's limit on this machine, in the same run: a plain asyncio client
        writing as many status patches as the burst needed, to accounts of its own; the
        seconds for all of them, and for the first `checkpoint`.

        Without `like`, the accounts have a small status (phase, message, instance) and each
        write changes its message. With `like` (a status the operator wrote), the accounts
        first get that status, untimed, and the writes alternate between a Starting and a
        Connected write as a placement makes them (phase, message, session status and the
        conditions): what the API server decodes, patches, validates, tracks in
        managedFields and stores grows with the object, and the operator's objects carry
        three conditions besides the instance.
        """
        import asyncio

        from kubernetes_asyncio import client as aclient
        from kubernetes_asyncio import config as aconfig

        n = min(self.args.accounts, 1000)
        names = [f"plain-{i:05d}" for i in range(n)]
        try:
            self.core.create_namespace({"metadata": {"name": PLAIN_NAMESPACE}})  # not served
        except ApiException as error:
            if error.status != 409:  # made by the first of the plain client's runs
                raise
        plain = Accounts(self.accounts.custom, PLAIN_NAMESPACE)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda name: plain.create(name), names))
        if like is None:
            first: dict[str, Any] | None = None
            bodies = [{"phase": "Starting", "message": "asked wa-3 to start the session",
                       "instance": {"pod": "wa-3", "url": "http://127.0.0.9:3000",
                                    "assignedAt": "2026-12-01T00:00:00Z"}}]
        else:
            first = like
            bodies = placement_writes(like)

        async def patch_all() -> tuple[float, float]:
            configuration = aclient.Configuration()
            await aconfig.load_kube_config(str(self.kubeconfig),
                                           client_configuration=configuration)
            configuration.connection_pool_maxsize = 32
            async with aclient.ApiClient(configuration) as api_client:
                # As the operator's client: no proxy and ~/.netrc lookups in a thread.
                api_client.rest_client.pool_manager._trust_env = False
                custom = aclient.CustomObjectsApi(api_client)
                in_flight = asyncio.Semaphore(32)
                done, at_checkpoint = 0, 0.0

                async def write(name: str, status: dict[str, Any]) -> None:
                    async with in_flight:
                        await custom.patch_namespaced_custom_object_status(
                            "wa-controller.io", "v1alpha1", PLAIN_NAMESPACE, "waaccounts",
                            name, {"status": status},
                            _content_type="application/merge-patch+json")

                async def one(i: int) -> None:
                    nonlocal done, at_checkpoint
                    body = bodies[i // n % len(bodies)]
                    await write(names[i % n], {**body, "message": f"write {i}"})
                    done += 1
                    if done == checkpoint:
                        at_checkpoint = time.monotonic() - started

                if first is not None:
                    await asyncio.gather(*(write(name, first) for name in names))
                started = time.monotonic()
                await asyncio.gather(*(one(i) for i in range(writes)))
                return time.monotonic() - started, at_checkpoint

        seconds = asyncio.run(patch_all())
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda name: self.accounts.custom.delete_namespaced_custom_object(
                "wa-controller.io", "v1alpha1", PLAIN_NAMESPACE, "waaccounts", name), names))
        return seconds

    def steady_state(self) -> None:
        cycles = self.args.steady_cycles
        interval = self.args.probe_interval
        print(f"\nsteady state: watching {cycles} probe cycles", flush=True)
        time.sleep(interval)  # let the last placements' events and probes settle
        assert self.operator is not None
        versions, events = self.resource_versions(), self.event_count()
        statements = self.postgres.statements_logged()
        requests, cpu = self.instance_requests(), self.operator.cpu_seconds()
        began = time.monotonic()
        time.sleep(cycles * interval)
        routes = self.instance_requests() - requests
        # Per interval of the time between the two counts (a few probes more or less).
        per_cycle = routes.total() * interval / (time.monotonic() - began)
        statements = self.postgres.statements_logged() - statements
        written = sum(v != versions.get(k) for k, v in self.resource_versions().items())
        new_events = self.event_count() - events
        cpu_share = (self.operator.cpu_seconds() - cpu) / (cycles * interval) * 100
        seed = self.seed_cycle()
        self.report.add("steady: HTTP requests per probe cycle", f"{per_cycle:.1f}",
                        f"{seed['requests']} (one per account), {seed['seconds']:.1f} s per cycle",
                        steady_requests_per_cycle=per_cycle)
        self.report.add("steady: requests by route", ", ".join(
            f"{route} {count}" for route, count in sorted(routes.items())) or "none")
        self.report.add("steady: API writes per cycle",
                        f"{(written + new_events) / cycles:.1f} "
                        f"({written} status, {new_events} events in {cycles} cycles)",
                        steady_api_writes_per_cycle=(written + new_events) / cycles)
        self.report.add("steady: SQL statements per cycle",
                        f"{statements / cycles:.1f}", steady_sql_per_cycle=statements / cycles)
        self.report.add("steady: operator CPU", f"{cpu_share:.1f} % of one core",
                        steady_cpu_percent=cpu_share)
        rss, peak = self.operator.memory_mib()
        self.report.add("operator RSS", f"{rss:.0f} MiB (peak {peak:.0f} MiB)",
                        steady_rss_mib=rss, peak_rss_mib=peak)

    def crash_sessions_reappear(self) -> None:
        """The seed's "instance crash": a pod stops answering, its sessions come back on others.

        An account is right when its status names the one pod that runs its session, as
        the simulators tell. Most sessions reappear before the operator calls the pod down
        and are found where they reappeared; one that reappears only after that was
        already restarted elsewhere by the operator, and one of its two copies is stopped:
        both count, the second kind is told apart.
        """
        victim, others = CRASHED, [n for n in self.sims() if n not in (CRASHED, DRAINED)]
        recorded = {name: pod for name, (pod, _) in self.placements().items()}
        sessions = sorted(self.sims()[victim].sessions())
        print(f"\ncrash: {victim} stops answering; its {len(sessions)} sessions "
              "reappear on the other pods", flush=True)
        versions = self.resource_versions()
        started = time.monotonic()
        self.sims()[victim].fault("crash")
        moved_to = {s: others[i % len(others)] for i, s in enumerate(sessions)}
        reappeared_at: dict[str, float] = {}

        def reappear(session: str) -> None:
            self.sims()[moved_to[session]].put(session)
            reappeared_at[session] = time.monotonic()

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(reappear, sessions))
        reappeared = time.monotonic() - started
        print(f"    all {len(sessions)} reappeared {reappeared:.1f} s after the crash",
              flush=True)

        def holders() -> dict[str, list[str]]:
            found: dict[str, list[str]] = {s: [] for s in sessions}
            for pod in others:
                for session, state in self.sims()[pod].sessions().items():
                    if session in found and state.get("state") != "stopped":
                        found[session].append(pod)
            return found

        def all_right() -> dict[str, str] | None:
            status = self.watch.status()
            if any(status.get(s, (None, None))[1] != "Connected" or
                   status.get(s, (None, None))[0] == victim for s in sessions):
                return None
            truth = holders()
            right = all(truth[s] == [status[s][0]] for s in sessions)
            return {s: truth[s][0] for s in sessions} if right else None

        final = wait_for("every moved account's status to name the one pod running it",
                         all_right, timeout=300, every=1.0)
        changed = self.watch.changed_at(sessions)
        elapsed = max(changed.values()) - started
        found = [s for s in sessions if final[s] == moved_to[s]]
        restarted = len(sessions) - len(found)
        delays = sorted(changed[s] - reappeared_at[s] for s in found) or [0.0]
        after = delays[-1]

        def all_rows_right() -> dict[str, tuple[str | None, datetime]] | None:
            table = self.mirror()
            return table if all(table[s][0] == pod for s, pod in final.items()) else None

        table = wait_for("every moved account's mirror row to name its new pod",
                         all_rows_right, timeout=300)
        rows_right = time.monotonic() - started
        stamps = sorted(table[s][1] for s in moved_to)
        span = (stamps[-1] - stamps[0]).total_seconds()
        unmoved_written = sum(v != versions[k] for k, v in self.resource_versions().items()
                              if k not in moved_to)
        seed = self.seed_repair(recorded, victim=victim)
        hung = seed["seconds"] + seed["victim_requests"] * SEED_TIMEOUT
        self.report.add("crash: moved accounts all right",
                        f"{elapsed:.1f} s ({reappeared:.1f} s of it for the sessions to "
                        f"reappear); {unmoved_written} unmoved accounts written",
                        f"{seed['seconds']:.1f} s, {seed['requests']} requests, "
                        f"{seed['found']}/{len(recorded)} found; >= {hung:.0f} s if the "
                        "instance hangs instead of refusing",
                        crash_sessions=len(sessions), crash_right_seconds=elapsed,
                        crash_reappear_seconds=reappeared,
                        crash_right_after_reappear_seconds=after,
                        crash_unmoved_written=unmoved_written)
        self.report.add("crash: found where they reappeared",
                        f"{len(found)}, right after their own reappearance in median "
                        f"{statistics.median(delays):.1f} s, at most {after:.1f} s; "
                        f"{restarted} reappeared only after {victim} was called down, were "
                        "restarted by the operator meanwhile, and kept one copy",
                        crash_right_after_own_reappearance_median_seconds=statistics.median(
                            delays),
                        crash_restarted_before_reappearing=restarted)
        self.report.add("crash: last moved mirror row right", f"{rows_right:.1f} s after the crash",
                        crash_mirror_right_seconds=rows_right)
        self.report.add("crash: mirror rows written", f"{len(stamps)} rows over {span:.2f} s"
                        + (f" ({len(stamps) / span:.0f} rows/s)" if span else " (one batch)"))

    def peak_starts(self, *, besides: str) -> int:
        """The most browser launches any pod (but `besides`) ran at once, so far."""
        return max(sim.starts()["peakConcurrentCreates"] for name, sim in self.sims().items()
                   if name not in (besides, CRASHED))

    def drain(self) -> None:
        """`kubectl annotate pod wa-2 wa-controller.io/drain=true`: its sessions move away,
        a few at a time, each stopped, confirmed gone, then started elsewhere in waves."""
        affected = [name for name, (pod, _) in self.placements().items() if pod == DRAINED]
        if not affected:
            print(f"\ndrain: {DRAINED} holds no session (run the burst first)", flush=True)
            return
        print(f"\ndrain: {DRAINED} is drained with its {len(affected)} sessions", flush=True)
        started = time.monotonic()
        self.core.patch_namespaced_pod(DRAINED, NAMESPACE, {"metadata": {"annotations": {
            api.DRAIN_ANNOTATION: "true"}}})
        done = self.watch.wait("every account of the drained pod Connected elsewhere",
                               affected, lambda _, pod, phase: pod not in (None, DRAINED)
                               and phase == "Connected", timeout=3600)
        elapsed = done - started
        peak = self.peak_starts(besides=DRAINED)
        self.report.add("drain: its accounts Connected elsewhere",
                        f"{elapsed:.1f} s for {len(affected)} sessions "
                        f"({len(affected) / elapsed:.1f} moves/s); peak concurrent starts on "
                        f"a pod so far: {peak}", drain_sessions=len(affected),
                        drain_seconds=elapsed, drain_peak_concurrent_starts=peak)

    def crash_pod_gone(self) -> None:
        """A pod is gone with its sessions: the operator starts them on the least loaded."""
        victim = "wa-1"
        affected = [name for name, (pod, _) in self.placements().items() if pod == victim]
        print(f"\npod gone: {victim} is deleted with its {len(affected)} sessions", flush=True)
        started = time.monotonic()
        self.fleet.remove(victim)

        done = self.watch.wait("every account of the gone pod Connected elsewhere", affected,
                               lambda _, pod, phase: pod not in (None, victim)
                               and phase == "Connected", timeout=300)
        gone = done - started
        peak = self.peak_starts(besides=victim)
        self.report.add("pod gone: its accounts Connected elsewhere",
                        f"{gone:.1f} s for {len(affected)} sessions, started in waves (peak "
                        f"concurrent starts on a pod so far: {peak})",
                        "never (the seed does not re-place)", pod_gone_seconds=gone,
                        pod_gone_sessions=len(affected), pod_gone_peak_concurrent_starts=peak)

    def fast_path(self) -> None:
        """With a 10-minute probe interval, how long a moved session's status stays wrong
        when its new pod sends a webhook, or when an application asks for a rediscovery."""
        samples = self.args.fast_path_samples
        print(f"\nfast path: operator restarted with probe interval "
              f"{FAST_PATH_PROBE_INTERVAL:.0f} s; {samples} moves each way", flush=True)
        self.stop_operator()
        before = self.accounts.all()
        versions = {name: item["metadata"]["resourceVersion"] for name, item in before.items()}
        self.start_operator(FAST_PATH_PROBE_INTERVAL)
        custom = self.accounts.custom
        names = [name for name in self.sims() if name not in (CRASHED, DRAINED)]
        on_pod = {name: pod for name, (pod, phase) in self.placements().items()
                  if phase == "Connected" and pod in names}
        chosen = iter(sorted(on_pod))

        def time_move(how: str, i: int) -> float:
            account = next(chosen)
            source = on_pod[account]
            target = names[(names.index(source) + 1 + i) % len(names)]
            target = target if target != source else names[(names.index(target) + 1) % len(names)]
            started = time.monotonic()
            self.sims()[source].move(account, self.sims()[target], quiet=how != "webhook")
            if how == "annotation":
                custom.patch_namespaced_custom_object(
                    "wa-controller.io", "v1alpha1", NAMESPACE, "waaccounts", account,
                    {"metadata": {"annotations": {"wa-controller.io/rediscover": f"bench-{i}"}}})
            elif how == "http call":
                httpx.post(f"{self.webhook_url}/rediscover/{NAMESPACE}/{account}", timeout=30,
                           headers={"Authorization": f"Bearer {REDISCOVER_TOKEN}"})
            wait_for(f"{account} recorded on {target} ({how})",
                     lambda: self.accounts.pod_of(account) == target, timeout=120, every=0.02)
            return time.monotonic() - started

        # The first webhook after the restart, sent as soon as the receiver listens.
        port = int(self.webhook_url.rsplit(":", 1)[1])
        wait_for("the restarted operator's webhook port", lambda: _listening(port),
                 timeout=300, every=0.1)
        first_move = time_move("webhook", 0)
        since_start = time.monotonic() - self.operator_started
        self.report.add("restart: first webhook corrects its account",
                        f"{since_start:.1f} s after the process started "
                        f"({first_move:.1f} s after the move)",
                        restart_first_webhook_seconds=since_start)
        time.sleep(10)  # the restart's re-decisions settle (nothing to change)
        moved = {a for a, pod in on_pod.items() if self.accounts.pod_of(a) != pod}
        after = self.accounts.all()
        written = sorted(name for name, item in after.items() if name not in moved
                         and item["metadata"]["resourceVersion"] != versions.get(name))
        self.report.add("restart: accounts already right that were written",
                        f"{len(written)}", restart_status_writes=len(written))
        if written:  # what was written, for whoever has to find out why
            print(f"    e.g. {written[0]}: status before "
                  f"{json.dumps(before[written[0]].get('status'), sort_keys=True)}\n"
                  f"    after {json.dumps(after[written[0]].get('status'), sort_keys=True)}",
                  flush=True)

        for how in ("webhook", "annotation", "http call"):
            times = sorted(time_move(how, i) for i in range(samples))
            key = how.replace(" ", "_")
            self.report.add(f"fast path: moved session's status right, by {how}",
                            f"median {statistics.median(times):.2f} s, max {times[-1]:.2f} s "
                            f"({samples} moves)",
                            "webhook: minutes to never (X-Instance-Url, no retry on 5xx)"
                            if how == "webhook" else "",
                            **{f"fast_path_{key}_median_seconds": statistics.median(times),
                               f"fast_path_{key}_max_seconds": times[-1]})
        self.report.add("fast path: without either",
                        f"up to the probe interval ({FAST_PATH_PROBE_INTERVAL:.0f} s)")

    def relay(self) -> None:
        """Instance webhooks through the operator to the application: how many a second, the
        latency it adds, and the operator's memory with the relay queue full."""
        n = self.args.relay_events
        senders = [sim for name, sim in self.sims().items() if name != CRASHED]
        print(f"\nrelay: {n} message events posted by the instances", flush=True)
        with self.app.lock:
            self.app.received.clear()
            self.app.arrived.clear()
        body = b"x" * 2000

        def post(i: int) -> float:
            event = json.dumps({"event": "message_received", "data": {
                "session_id": f"acct-{i % 1000:05d}", "n": i, "text": body.decode()}}).encode()
            sim = senders[i % len(senders)]
            sent = time.monotonic()
            answer = post_signed(sim.ip, self.webhook_url, event)
            assert answer == 202, answer
            return sent

        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            sent = list(pool.map(post, range(n)))
        wait_for(f"{n} events at the application", lambda: sum(
            e.get("event") == "message_received" for e in self.app.events()) >= n,
            timeout=600, every=1)
        with self.app.lock:
            arrived = {json.loads(b)["data"]["n"]: at for (_, b), at
                       in zip(self.app.received, self.app.arrived, strict=True)
                       if json.loads(b).get("event") == "message_received"}
        latencies = sorted(arrived[i] - sent[i] for i in range(n) if i in arrived)
        elapsed = max(arrived.values()) - started
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        self.report.add("relay: events per second", f"{n / elapsed:.0f} ({n} events)",
                        relay_events_per_second=n / elapsed)
        self.report.add("relay: added latency (post to application)",
                        f"median {statistics.median(latencies) * 1000:.0f} ms, "
                        f"p99 {p99 * 1000:.0f} ms",
                        relay_latency_median_seconds=statistics.median(latencies),
                        relay_latency_p99_seconds=p99)
        # The application is down: the queue fills to its bound (10,000 events).
        self.app.always = 503
        full = 10_000
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(post, range(n, n + full + 200)))
        assert self.operator is not None
        rss, _ = self.operator.memory_mib()
        self.report.add("relay: operator RSS with the queue full",
                        f"{rss:.0f} MiB ({full} events of ~2 kB queued, 200 refused)",
                        relay_full_queue_rss_mib=rss)
        self.app.always = None

    # --- the seed's algorithm, on the same fleet ---------------------------------------

    def seed_cycle(self) -> dict[str, Any]:
        """The seed's health check: one status request per account to its recorded instance."""
        recorded = {name: pod for name, (pod, _) in self.placements().items()}
        return self.seed_repair(recorded)

    def seed_repair(self, recorded: dict[str, str | None], victim: str = "") -> dict[str, Any]:
        """Per account, ask the recorded instance; on a miss ask every instance, one by one,
        each with a 5 s timeout (the seed's rediscovery)."""
        urls = {name: sim.url for name, sim in self.sims().items()}
        requests = found = victim_requests = 0
        started = time.monotonic()
        with httpx.Client(timeout=SEED_TIMEOUT) as http:
            def has(url: str, session: str) -> bool:
                nonlocal requests, victim_requests
                requests += 1
                victim_requests += url == urls.get(victim)
                try:
                    return http.get(f"{url}/api/sessions/{session}/status",
                                    params={"api_key": API_KEY}).status_code == 200
                except httpx.HTTPError:
                    return False

            for session, pod in recorded.items():
                if pod in urls and has(urls[pod], session):
                    found += 1
                    continue
                found += any(has(url, session) for name, url in urls.items() if name != pod)
        return {"requests": requests, "seconds": time.monotonic() - started, "found": found,
                "victim_requests": victim_requests}


def placement_writes(connected: dict[str, Any]) -> list[dict[str, Any]]:
    """A Starting and a Connected write as the operator makes them for a placement, from a
    status it wrote for a Connected account: the fields a placement changes, the conditions
    whole (a merge patch replaces a list)."""
    conditions = connected.get("conditions") or []
    starting = [{**c, "status": "False", "reason": "Starting",
                 "message": "asked wa-3 to start the session",
                 "lastTransitionTime": "2026-12-01T00:00:00Z"} if c.get("type") == "Ready"
                else c for c in conditions]
    return [{"phase": "Starting", "sessionStatus": None, "conditions": starting},
            {"phase": connected.get("phase"), "sessionStatus": connected.get("sessionStatus"),
             "conditions": conditions}]


def post_signed(source_ip: str, receiver: str, body: bytes) -> int:
    """A blazz instance's webhook, from its own address, to the operator."""
    headers = BlazzAdapter.sign_webhook(body, WEBHOOK_SECRET, time.time())
    return post_from(source_ip, f"{receiver}/api/whatsapp/webhooks/webjs", body,
                     headers).status_code


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def _control_plane() -> Iterator[tuple[ControlPlane, Path]]:
    """A control plane of its own; the working directory (with the operator's log) is kept."""
    workdir = Path(tempfile.mkdtemp(prefix="wa-bench-"))
    plane = ControlPlane(workdir / "control-plane")
    plane.start()
    try:
        yield plane, workdir
    finally:
        plane.stop()
        shutil.rmtree(workdir / "control-plane", ignore_errors=True)


# The phases in the order they run: each one starts from what the one before left.
PHASES: dict[str, Callable[[Bench], None]] = {
    "burst": Bench.burst, "steady": Bench.steady_state, "drain": Bench.drain,
    "crash": Bench.crash_sessions_reappear,
    "pod-gone": Bench.crash_pod_gone, "restart": Bench.fast_path, "relay": Bench.relay}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/benchmark", description=__doc__)
    parser.add_argument("--pods", type=int, default=10)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--capacity", type=int, default=0, help="per pod (default: 1.5x fair)")
    parser.add_argument("--probe-interval", type=float, default=5.0)
    parser.add_argument("--starts-per-pod", type=int,
                        default=Settings.model_fields["starts_per_pod"].default,
                        help="the operator's start waves (default: its own default)")
    parser.add_argument("--steady-cycles", type=int, default=3)
    parser.add_argument("--fast-path-samples", type=int, default=10)
    parser.add_argument("--relay-events", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write every figure to FILE (keys documented in the README)")
    parser.add_argument("--phases", default=",".join(PHASES), metavar="P1,P2",
                        help=f"phases to run, in this order (default: all): {', '.join(PHASES)}")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.phases.split(",") if name.strip()]
    if unknown := [name for name in chosen if name not in PHASES]:
        parser.error(f"unknown phases {', '.join(unknown)}; known: {', '.join(PHASES)}")
    phases = [phase for name, phase in PHASES.items() if name in chosen]
    # A long run stopped with kill (SIGINT is ignored in background jobs) still stops what
    # it started: the operator, the simulators, PostgreSQL and the control plane.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with _control_plane() as (plane, workdir):
        bench = Bench(plane, workdir, args)
        try:
            bench.setup()
            for phase in phases:
                phase(bench)
        finally:
            bench.close()
        bench.report.print()
        if args.json is not None:
            figures = {"accounts": args.accounts, "pods": args.pods,
                       "probe_interval": args.probe_interval, **bench.report.figures}
            args.json.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
