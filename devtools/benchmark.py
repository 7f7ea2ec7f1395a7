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
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client, config

from controller.instances import BlazzAdapter
from devtools.control_plane import ControlPlane, free_port
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
SEED_TIMEOUT = 5.0  # the seed's per-instance timeout while it searches


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

    # --- the world -------------------------------------------------------------------

    def setup(self) -> None:
        self.core.create_namespace({"metadata": {"name": NAMESPACE}})
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
            self.fleet.add(f"wa-{i}", "blazz", capacity=capacity, auto_pair=0.5)
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
             f"--metrics-port={free_port()}",
             f"--webhook-port={self.webhook_url.rsplit(':', 1)[1]}",
             # Measure the relay, not the per-source flood guard.
             "--webhook-rate=100000", "--webhook-burst=100000",
             f"--database-url={self.postgres.url(database='bench')}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)}))

    def stop_operator(self) -> None:
        if self.operator is not None:
            self.operator.process.terminate()
            try:
                self.operator.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.operator.process.kill()
            self.operator = None

    def close(self) -> None:
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

    @property
    def look_every(self) -> float:
        """Seconds between two looks at all accounts: each look lists every account, a load
        of its own on the API server at 10,000 (0.2 s per 1,000 accounts)."""
        return max(0.2, self.args.accounts / 5000)

    def status_writes(self) -> int:
        """WAAccount status PATCHes the API server served so far (its own counter)."""
        text = httpx.get(f"{self.plane.server}/metrics", verify=str(self.plane.ca_file),
                         headers={"Authorization": f"Bearer {self.plane.token}"},
                         timeout=30).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith("apiserver_request_total{") and 'resource="waaccounts"' in line \
                    and 'subresource="status"' in line and 'verb="PATCH"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def instance_requests(self) -> int:
        return sum(sim.requests() for sim in self.sims().values())

    # --- phases ------------------------------------------------------------------------

    def burst(self) -> None:
        n = self.args.accounts
        print(f"\nburst: creating {n} WAAccounts at once", flush=True)
        writes_before = self.status_writes()
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: self.accounts.create(
                f"acct-{i:05d}", phoneNumber=f"+62811{i:07d}"), range(n)))
        created = time.monotonic() - started

        def all_connected() -> dict[str, tuple[str | None, str | None]] | None:
            now = self.placements()
            return now if sum(p == "Connected" for _, p in now.values()) == n else None

        # Each look lists every account: at 10,000 that is a load of its own on the API
        # server, so look less often the more there are (1 s per 2,000 accounts).
        placed = wait_for(f"all {n} accounts Connected", all_connected, timeout=3600,
                          every=max(1.0, self.look_every))
        elapsed = time.monotonic() - started
        writes = self.status_writes() - writes_before
        spread = Counter(pod for pod, _ in placed.values())
        loads = [spread.get(name, 0) for name in self.sims()]
        self.report.add("burst: creations sent", f"{created:.1f} s", burst_create_seconds=created)
        self.report.add("burst: all Connected", f"{elapsed:.1f} s after the first creation",
                        burst_connected_seconds=elapsed)
        self.report.add("burst: status writes", f"{writes} ({writes / n:.2f} per account)",
                        burst_status_writes=writes)
        self.report.add("burst: spread per pod", f"min {min(loads)} / max {max(loads)} "
                        f"/ stdev {statistics.pstdev(loads):.2f}",
                        burst_spread_min=min(loads), burst_spread_max=max(loads))
        self.report.add("burst: events", self.event_reasons())
        plain = self.plain_client(writes)
        self.report.add("limit: plain client, same status writes",
                        f"{plain:.1f} s ({writes / plain:.0f} patches/s, kubernetes_asyncio, "
                        f"32 in flight); burst/limit = {elapsed / plain:.2f}",
                        plain_client_seconds=plain, burst_over_limit=elapsed / plain)

    def plain_client(self, writes: int) -> float:
        """The API server's limit on this machine, in the same run: a plain asyncio client
        writing as many status patches as the burst needed, to accounts of its own."""
        import asyncio

        from kubernetes_asyncio import client as aclient
        from kubernetes_asyncio import config as aconfig

        n = min(self.args.accounts, 1000)
        names = [f"plain-{i:05d}" for i in range(n)]
        self.core.create_namespace({"metadata": {"name": PLAIN_NAMESPACE}})  # not served
        plain = Accounts(self.accounts.custom, PLAIN_NAMESPACE)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda name: plain.create(name), names))
        status = {"phase": "Starting", "message": "asked wa-3 to start the session",
                  "instance": {"pod": "wa-3", "url": "http://127.0.0.9:3000",
                               "assignedAt": "2026-12-01T00:00:00Z"}}

        async def patch_all() -> float:
            configuration = aclient.Configuration()
            await aconfig.load_kube_config(str(self.kubeconfig),
                                           client_configuration=configuration)
            configuration.connection_pool_maxsize = 32
            async with aclient.ApiClient(configuration) as api_client:
                custom = aclient.CustomObjectsApi(api_client)
                in_flight = asyncio.Semaphore(32)

                async def one(i: int) -> None:
                    async with in_flight:
                        await custom.patch_namespaced_custom_object_status(
                            "wa-controller.io", "v1alpha1", PLAIN_NAMESPACE, "waaccounts",
                            names[i % n], {"status": {**status, "message": f"write {i}"}},
                            _content_type="application/merge-patch+json")

                started = time.monotonic()
                await asyncio.gather(*(one(i) for i in range(writes)))
                return time.monotonic() - started

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
        time.sleep(cycles * interval)
        statements = self.postgres.statements_logged() - statements
        written = sum(v != versions.get(k) for k, v in self.resource_versions().items())
        new_events = self.event_count() - events
        per_cycle = (self.instance_requests() - requests) / cycles
        cpu_share = (self.operator.cpu_seconds() - cpu) / (cycles * interval) * 100
        seed = self.seed_cycle()
        self.report.add("steady: HTTP requests per probe cycle", f"{per_cycle:.1f}",
                        f"{seed['requests']} (one per account), {seed['seconds']:.1f} s per cycle",
                        steady_requests_per_cycle=per_cycle)
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
        """The seed's "instance crash": a pod stops answering, its sessions come back on others."""
        victim, others = CRASHED, [n for n in self.sims() if n != CRASHED]
        recorded = {name: pod for name, (pod, _) in self.placements().items()}
        sessions = sorted(self.sims()[victim].sessions())
        print(f"\ncrash: {victim} stops answering; its {len(sessions)} sessions "
              "reappear on the other pods", flush=True)
        versions = self.resource_versions()
        started = time.monotonic()
        self.sims()[victim].fault("crash")
        moved_to = {s: others[i % len(others)] for i, s in enumerate(sessions)}
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda s: self.sims()[moved_to[s]].put(s), sessions))
        reappeared = time.monotonic() - started

        def all_right() -> bool:
            now = self.placements()
            return all(now[s] == (pod, "Connected") for s, pod in moved_to.items())

        wait_for("every moved account's status to name its new pod", all_right, timeout=300,
                 every=self.look_every)
        elapsed = time.monotonic() - started

        def all_rows_right() -> dict[str, tuple[str | None, datetime]] | None:
            table = self.mirror()
            return table if all(table[s][0] == pod for s, pod in moved_to.items()) else None

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
                        crash_right_after_reappear_seconds=elapsed - reappeared,
                        crash_unmoved_written=unmoved_written)
        self.report.add("crash: last moved mirror row right", f"{rows_right:.1f} s after the crash",
                        crash_mirror_right_seconds=rows_right)
        self.report.add("crash: mirror rows written", f"{len(stamps)} rows over {span:.2f} s"
                        + (f" ({len(stamps) / span:.0f} rows/s)" if span else " (one batch)"))

    def crash_pod_gone(self) -> None:
        """A pod is gone with its sessions: the operator starts them on the least loaded."""
        victim = "wa-1"
        affected = [name for name, (pod, _) in self.placements().items() if pod == victim]
        print(f"\npod gone: {victim} is deleted with its {len(affected)} sessions", flush=True)
        started = time.monotonic()
        self.fleet.remove(victim)

        def all_replaced() -> bool:
            now = self.placements()
            return all(now[a][0] not in (None, victim) and now[a][1] == "Connected"
                       for a in affected)

        wait_for("every account of the gone pod Connected elsewhere", all_replaced, timeout=300,
                 every=self.look_every)
        gone = time.monotonic() - started
        self.report.add("pod gone: its accounts Connected elsewhere", f"{gone:.1f} s",
                        "never (the seed does not re-place)", pod_gone_seconds=gone)

    def fast_path(self) -> None:
        """With a 10-minute probe interval, how long a moved session's status stays wrong
        when its new pod sends a webhook, or when an application asks for a rediscovery."""
        samples = self.args.fast_path_samples
        print(f"\nfast path: operator restarted with probe interval "
              f"{FAST_PATH_PROBE_INTERVAL:.0f} s; {samples} moves each way", flush=True)
        self.stop_operator()
        versions = self.resource_versions()
        self.start_operator(FAST_PATH_PROBE_INTERVAL)
        custom = self.accounts.custom
        names = [name for name in self.sims() if name != CRASHED]
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
        restart_writes = sum(v != versions.get(k) for k, v in self.resource_versions().items()
                             if k not in moved)
        self.report.add("restart: accounts already right that were written",
                        f"{restart_writes}", restart_status_writes=restart_writes)

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/benchmark", description=__doc__)
    parser.add_argument("--pods", type=int, default=10)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--capacity", type=int, default=0, help="per pod (default: 1.5x fair)")
    parser.add_argument("--probe-interval", type=float, default=5.0)
    parser.add_argument("--steady-cycles", type=int, default=3)
    parser.add_argument("--fast-path-samples", type=int, default=10)
    parser.add_argument("--relay-events", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write every figure to FILE (keys documented in the README)")
    args = parser.parse_args(argv)
    phases: list[Callable[[Bench], None]] = [
        Bench.burst, Bench.steady_state, Bench.crash_sessions_reappear, Bench.crash_pod_gone,
        Bench.fast_path, Bench.relay]
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
