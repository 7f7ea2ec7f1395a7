"""No log level leaks a secret: the operator runs with `--verbose` through webhooks, the
relay, rediscovery, the rotation of every Secret and a database outage, and then its whole
log, the events, the statuses, the mirror, /metrics and what the application received are
searched for every secret value, raw and base64."""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from kubernetes import client as k8s

from controller.mirror import engine_for
from devtools.control_plane import free_port
from devtools.harness import (
    Accounts,
    ApplicationStub,
    Fleet,
    WebhookTarget,
    all_connected,
    operator_process,
    wait_for,
)
from devtools.postgres import Postgres
from tests.conftest import API_KEY
from tests.test_mirror import MIRROR, condition
from tests.test_secrets_live import write_secret

pytestmark = pytest.mark.integration


def test_no_secret_reaches_a_log_an_event_a_status_the_mirror_or_metrics(
    namespace: str, fleet: Fleet, accounts: Accounts, core: k8s.CoreV1Api,
    postgres: Postgres, tmp_path: Path,
) -> None:
    values = {name: f"{name}-{secrets.token_hex(6)}" for name in (
        "hmac", "token", "rotated-hmac", "rotated-token", "rotated-api-key", "relay",
        "db-password")}
    role, database = f"leak_{secrets.token_hex(3)}", f"leak_{secrets.token_hex(3)}"
    postgres.sql(f"CREATE ROLE {role} LOGIN PASSWORD '{values['db-password']}'")
    postgres.sql(f"CREATE DATABASE {database} OWNER {role}")
    url = postgres.url(user=role, password=values["db-password"], database=database)
    webhook_port, metrics_port = free_port(), free_port()
    receiver = f"http://127.0.0.1:{webhook_port}"
    write_secret(core, namespace, "wa-controller-webhooks", hmac_secret=values["hmac"],
                 rediscover_token=values["token"])
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(values["hmac"])
    fleet.webhooks = WebhookTarget(receiver, secret_file)
    for name in ("wa-0", "wa-1"):
        fleet.add(name, auto_pair=0.2)
    log = tmp_path / "operator.log"
    with ApplicationStub() as application, operator_process(
            log, "--verbose", namespaces=namespace, operator_namespace=namespace,
            probe_interval=1, start_grace=3, liveness_port=free_port(),
            metrics_port=metrics_port, webhook_port=webhook_port, database_url=url,
            mirror_retry_max=1, secret_refresh_interval=1):
        write_secret(core, namespace, "wa-controller-relay", url=application.url,
                     hmac_secret=values["relay"])
        for name in ("a1", "a2", "a3"):
            accounts.create(name)
        wait_for("every account Connected", lambda: all_connected(accounts, 3), timeout=60)
        # Webhooks: a session moves and its new pod says so; events reach the application.
        holder = accounts.pod_of("a1") or "wa-0"
        other = "wa-1" if holder == "wa-0" else "wa-0"
        fleet.simulators[holder].move("a1", fleet.simulators[other])
        wait_for("events relayed to the application", lambda: application.events(), timeout=30)
        # Rediscovery, with the token and with a wrong one.
        call = f"{receiver}/rediscover/{namespace}/a2"
        assert httpx.post(call, headers={"Authorization": f"Bearer {values['token']}"},
                          timeout=10).status_code == 200
        assert httpx.post(call, headers={"Authorization": "Bearer wrong"},
                          timeout=10).status_code == 401
        # Every Secret rotated (the instances keep the old API key: refused, then restored).
        write_secret(core, namespace, "wa-controller-webhooks",
                     hmac_secret=values["rotated-hmac"], rediscover_token=values["rotated-token"])
        write_secret(core, namespace, "wa-controller-instances",
                     api_key=values["rotated-api-key"])
        wait_for("the rotated API key refused by the instances", lambda: any(
            reason == "InstanceAuthFailed" for _, reason, _ in accounts.events(core, "wa-0")),
            timeout=15)
        write_secret(core, namespace, "wa-controller-instances", api_key=API_KEY)
        assert httpx.post(call, headers={"Authorization": f"Bearer {values['rotated-token']}"},
                          timeout=10).status_code in (200, 401)  # 401 until re-read
        wait_for("the rotated token in force", lambda: httpx.post(call, headers={
            "Authorization": f"Bearer {values['rotated-token']}"}, timeout=10
        ).status_code == 200, timeout=10)
        # A database outage, reported on the accounts, then over.
        postgres.stop()
        try:
            accounts.patch_spec("a3", workspaceId="during-outage")
            wait_for("Mirrored=False during the outage",
                     lambda: condition(accounts, "a3") == ("False", "DatabaseUnavailable"),
                     timeout=30)
        finally:
            postgres.start()
        wait_for("Mirrored=True after it", lambda: condition(accounts, "a3")
                 == ("True", "RowWritten"), timeout=60)
        time.sleep(0.5)  # the last lines of the outage's end reach the log file
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text

    engine = engine_for(postgres.url(database=database))
    with engine.connect() as db:
        mirror = json.dumps([dict(row) for row in db.execute(sa.select(MIRROR)).mappings()],
                            default=str)
    engine.dispose()
    events = json.dumps([e.to_dict() for e in core.list_namespaced_event(namespace).items],
                        default=str)
    statuses = json.dumps(list(accounts.all().values()), default=str)
    relayed = json.dumps([headers for headers, _ in application.received])
    text = log.read_text()
    assert '"severity": "debug"' in text, "the operator did not log verbosely"
    artifacts = {"log": text, "events": events, "statuses": statuses, "mirror": mirror,
                 "metrics": metrics, "relayed headers": relayed}
    leaked = [f"{name} ({form}) in {where}"
              for name, value in {**values, "api-key": API_KEY}.items()
              for form, shown in (("raw", value),
                                  ("base64", base64.b64encode(value.encode()).decode()))
              for where, artifact in artifacts.items() if shown in artifact]
    assert leaked == []
    assert "X-Instance-Url" not in relayed
