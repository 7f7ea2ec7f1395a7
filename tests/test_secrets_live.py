"""Secrets followed live against the real API server: a rotated webhook secret, rediscover
token or instance API key is in force within seconds, the previous webhook secret only for
the overlap, and a deleted Secret revokes."""

from __future__ import annotations

import base64
import itertools
import time

import httpx
import pytest
from kubernetes import client as k8s

from controller.instances import blazz
from devtools.control_plane import free_port
from devtools.harness import (
    Accounts,
    Fleet,
    all_settled,
    post_from,
    running_operator,
    seed_sessions,
    wait_for,
)
from devtools.harness import operator_settings as settings

pytestmark = pytest.mark.integration

WEBHOOK_SECRET = "wa-controller-webhooks"
_sessions = itertools.count()


def write_secret(core: k8s.CoreV1Api, namespace: str, name: str, **values: str) -> None:
    body = {"metadata": {"name": name},
            "data": {key.replace("_", "-"): base64.b64encode(value.encode()).decode()
                     for key, value in values.items()}}
    try:
        core.replace_namespaced_secret(name, namespace, body)
    except k8s.ApiException as error:
        if error.status != 404:
            raise
        core.create_namespaced_secret(namespace, body)


def signed_by(fleet: Fleet, receiver: str, secret: str) -> int:
    """The receiver's answer to a fresh blazz event from wa-0 signed with `secret`."""
    session = f"s{next(_sessions)}"  # a new body each time: never a replay
    body = (b'{"event":"session_ready","session":"%s","data":{"session_id":"%s"}}'
            % (session.encode(), session.encode()))
    timestamp = str(int(time.time()))
    headers = {"X-Timestamp": timestamp,
               "X-HMAC-Signature": blazz.webhook_signature(secret, timestamp, body)}
    return post_from(fleet.simulators["wa-0"].ip, f"{receiver}/webhooks", body,
                     headers).status_code


def rediscover_with(receiver: str, namespace: str, token: str) -> int:
    return httpx.post(f"{receiver}/rediscover/{namespace}/a1",
                      headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code


def test_rotated_webhook_secret_and_token_are_in_force_within_seconds_then_revoked(
    core: k8s.CoreV1Api, namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    write_secret(core, namespace, WEBHOOK_SECRET, hmac_secret="old-hmac-1",
                 rediscover_token="old-token-1")
    fleet.add("wa-0")
    seed_sessions(fleet, accounts, {"wa-0": ["a1"]})
    port = free_port()
    receiver = f"http://127.0.0.1:{port}"
    config = settings(namespace, webhook_port=port, probe_interval=600.0,
                      secret_refresh_interval=1.0, webhook_secret_overlap=6.0)
    with running_operator(config):
        wait_for("a1 Connected", lambda: all_settled(accounts, 1))
        assert signed_by(fleet, receiver, "old-hmac-1") == 202
        assert rediscover_with(receiver, namespace, "old-token-1") == 200

        write_secret(core, namespace, WEBHOOK_SECRET, hmac_secret="new-hmac-2",
                     rediscover_token="new-token-2")
        wait_for("the new HMAC secret accepted",
                 lambda: signed_by(fleet, receiver, "new-hmac-2") == 202, timeout=5)
        # Instances not re-keyed yet keep working during the overlap...
        assert signed_by(fleet, receiver, "old-hmac-1") == 202
        assert signed_by(fleet, receiver, "forged-hmac") == 401
        # ...the token has no overlap: the application reads the new one from the Secret.
        wait_for("the new token accepted",
                 lambda: rediscover_with(receiver, namespace, "new-token-2") == 200, timeout=5)
        assert rediscover_with(receiver, namespace, "old-token-1") == 401
        wait_for("the old HMAC secret refused after the overlap",
                 lambda: signed_by(fleet, receiver, "old-hmac-1") == 401, timeout=15)
        assert signed_by(fleet, receiver, "new-hmac-2") == 202

        core.delete_namespaced_secret(WEBHOOK_SECRET, namespace)
        wait_for("a deleted Secret revoking the HMAC secret",
                 lambda: signed_by(fleet, receiver, "new-hmac-2") == 503, timeout=5)
        assert rediscover_with(receiver, namespace, "new-token-2") == 503


def test_a_rotated_instance_api_key_is_used_within_seconds(
    core: k8s.CoreV1Api, namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    fleet.add("wa-0")
    fleet.add("wa-1")
    seed_sessions(fleet, accounts, {"wa-0": ["a1"]})
    config = settings(namespace, secret_refresh_interval=1.0)
    with running_operator(config):
        wait_for("a1 Connected", lambda: all_settled(accounts, 1))
        # A key the instances do not know: every probe is refused, and said so.
        write_secret(core, namespace, "wa-controller-instances", api_key="rotated-too-early")
        wait_for("wa-0 reported as refusing the key", lambda: any(
            reason == "InstanceAuthFailed" for _, reason, _ in accounts.events(core, "wa-0")),
            timeout=10)
        # Back to the key they know: the operator sees sessions move again.
        write_secret(core, namespace, "wa-controller-instances",
                     api_key=fleet.api_key_file.read_text())
        fleet.simulators["wa-0"].move("a1", fleet.simulators["wa-1"], quiet=True)
        wait_for("a1 found on wa-1 with the restored key",
                 lambda: accounts.pod_of("a1") == "wa-1", timeout=15)
