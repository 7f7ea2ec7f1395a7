"""`hack/quickstart`: a control plane, three simulated instances, the operator, sample accounts.

Everything runs on loopback, in the background, until `hack/quickstart down`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from kubernetes import client, config

from controller import api
from devtools import control_plane
from devtools.harness import WebhookTarget

NAMESPACE = "whatsapp-demo"
INSTANCES = {"wa-0": ("127.0.0.2", "blazz"), "wa-1": ("127.0.0.3", "blazz"),
             "wa-2": ("127.0.0.4", "waha")}
API_KEY = "quickstart-key"
WEBHOOK_SECRET = "quickstart-webhook-secret"  # noqa: S105 - a local demo's secret
REDISCOVER_TOKEN = "quickstart-rediscover-token"  # noqa: S105


def _state_dir() -> Path:
    return control_plane.state_dir().parent / "quickstart"


def _spawn(argv: list[str], log: Path) -> int:
    with log.open("ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    return process.pid


def up() -> None:
    kubeconfig = control_plane.up()
    state = _state_dir()
    state.mkdir(parents=True, exist_ok=True)
    key_file = state / "api-key"
    key_file.write_text(API_KEY)
    hmac_file = state / "webhook-secret"
    hmac_file.write_text(WEBHOOK_SECRET)
    webhook_url = f"http://127.0.0.1:{control_plane.free_port()}"
    configuration = client.Configuration()
    config.load_kube_config(str(kubeconfig), client_configuration=configuration)
    core = client.CoreV1Api(client.ApiClient(configuration))
    custom = client.CustomObjectsApi(core.api_client)
    with contextlib.suppress(client.ApiException):
        core.create_namespace({"metadata": {"name": NAMESPACE}})
    with contextlib.suppress(client.ApiException):
        core.create_namespaced_secret(NAMESPACE, {
            "metadata": {"name": "wa-controller-instances"},
            "data": {"api-key": base64.b64encode(API_KEY.encode()).decode()}})
    with contextlib.suppress(client.ApiException):
        core.create_namespaced_secret(NAMESPACE, {
            "metadata": {"name": "wa-controller-webhooks"},
            "data": {key: base64.b64encode(value.encode()).decode() for key, value in {
                "hmac-secret": WEBHOOK_SECRET, "rediscover-token": REDISCOVER_TOKEN}.items()}})

    pids = []
    for name, (ip, protocol) in INSTANCES.items():
        port = control_plane.free_port(ip)
        target = WebhookTarget(webhook_url, hmac_file)
        pids.append(_spawn([sys.executable, "-m", "controller", "simulate-instance",
                            "--protocol", protocol, "--listen", f"{ip}:{port}",
                            "--tier", "plus" if protocol == "waha" else "default",
                            "--storage-dir", str(state / "logins"),
                            "--api-key-file", str(key_file), "--auto-pair", "3",
                            "--webhook-url", target.url_for(protocol),
                            "--webhook-secret-file", str(hmac_file), "--worker-id", name],
                           state / f"{name}.log"))
        with contextlib.suppress(client.ApiException):
            core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)
        core.create_namespaced_pod(NAMESPACE, {
            "metadata": {"name": name,
                         "labels": {"app.kubernetes.io/component": "whatsapp-instance"},
                         "annotations": {"wa-controller.io/protocol": protocol,
                                         "wa-controller.io/port": str(port),
                                         "wa-controller.io/capacity": "10"}},
            "spec": {"nodeName": "simulated-node",
                     "containers": [{"name": "instance", "image": "wa-controller:sim"}]}})
        core.patch_namespaced_pod_status(name, NAMESPACE, {"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}]}})

    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    with (state / "operator.log").open("ab") as out:
        operator = subprocess.Popen(
            [sys.executable, "-m", "controller", "run", f"--namespaces={NAMESPACE}",
             f"--operator-namespace={NAMESPACE}", "--probe-interval=2", "--start-grace=5",
             f"--liveness-port={control_plane.free_port()}", "--log-format=plain",
             f"--metrics-port={control_plane.free_port()}",
             f"--webhook-port={webhook_url.rsplit(':', 1)[1]}",
             f"--database-url=sqlite:///{state / 'mirror.sqlite'}"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True)
    pids.append(operator.pid)
    (state / "pids.json").write_text(json.dumps(pids))

    for i, phone in enumerate(["6281180164101", "6281180164102", "6281180164103",
                               "6281180164104", "6281180164105", "6281180164106"]):
        with contextlib.suppress(client.ApiException):
            custom.create_namespaced_custom_object(api.GROUP, api.VERSION, NAMESPACE, api.PLURAL, {
                "apiVersion": api.API_VERSION, "kind": api.KIND,
                "metadata": {"name": f"shop-{i}"},
                "spec": {"sessionId": f"session-{i}", "phoneNumber": f"+{phone}"}})

    bin_dir = control_plane.tools_bin_dir()
    wa0_ip = INSTANCES["wa-0"][0]
    print(f"""
wa-controller is running on a local control plane (logs in {state}).

  export KUBECONFIG={kubeconfig}
  export PATH={bin_dir}:$PATH
  kubectl -n {NAMESPACE} get waaccounts -w

Crash instance wa-0 and watch its accounts heal onto the other pods:

  kubectl -n {NAMESPACE} delete pod wa-0 --grace-period=0 --force

(or make it stop answering: curl -X POST http://{wa0_ip}:<port>/_sim/fault -d '{{"mode":"crash"}}',
the port is in `kubectl -n {NAMESPACE} get pod wa-0 -o yaml`).

Ask for an immediate re-check of one account (what an application does when a send fails):

  kubectl -n {NAMESPACE} annotate waaccount shop-1 \\
    wa-controller.io/rediscover=$(date +%s) --overwrite
  curl -X POST -H 'Authorization: Bearer {REDISCOVER_TOKEN}' \\
    {webhook_url}/rediscover/{NAMESPACE}/shop-1

The SQL mirror applications would read is the SQLite file {state / 'mirror.sqlite'}
(table whatsapp_accounts).

Stop everything:  hack/quickstart down
""")


def down() -> None:
    pids_file = _state_dir() / "pids.json"
    if pids_file.exists():
        # Simulators and the operator exit before their control plane goes.
        control_plane.stop_processes(json.loads(pids_file.read_text()), grace=10)
        pids_file.unlink()
    control_plane.down()
    print("stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/quickstart")
    parser.add_argument("action", nargs="?", choices=["up", "down"], default="up")
    if parser.parse_args(argv).action == "up":
        up()
    else:
        down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
