"""The fast path end to end: webhooks and rediscovery with a 10-minute probe interval, so
every correction seen here came through them, not through a timer."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import time
from pathlib import Path

import httpx
import pytest
from kubernetes import client as k8s

from controller import metrics
from controller.instances import blazz, waha
from devtools.control_plane import free_port
from devtools.harness import (
    Accounts,
    Fleet,
    WebhookTarget,
    all_settled,
    post_from,
    running_operator,
    seed_sessions,
    wait_for,
)
from devtools.harness import operator_settings as settings
from tests.conftest import Kubectl

pytestmark = pytest.mark.integration

SECRET = "webhook-hmac-secret-9c1e"
TOKEN = "rediscover-token-51d0"
LONG = 600.0  # probe interval: no timer fires during a test


@pytest.fixture
def receiver(core: k8s.CoreV1Api, namespace: str, fleet: Fleet, tmp_path: Path
             ) -> str:
    """The webhook Secret, and the URL the operator's receiver will listen on."""
    core.create_namespaced_secret(namespace, {
        "metadata": {"name": "wa-controller-webhooks"},
        "data": {key: base64.b64encode(value.encode()).decode()
                 for key, value in {"hmac-secret": SECRET, "rediscover-token": TOKEN}.items()},
    })
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(SECRET)
    url = f"http://127.0.0.1:{free_port()}"
    fleet.webhooks = WebhookTarget(url, secret_file)
    return url


def operator(receiver: str, **overrides: object) -> dict[str, object]:
    port = int(receiver.rsplit(":", 1)[1])
    return {"probe_interval": LONG, "webhook_port": port, **overrides}


def blazz_event(session: str, event: str = "session_ready", *, age: float = 0.0,
                secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"event": event, "session": session,
                       "data": {"session_id": session, "status": "connected"}}).encode()
    timestamp = str(int(time.time() - age))
    return body, {"X-Timestamp": timestamp,
                  "X-HMAC-Signature": blazz.webhook_signature(secret, timestamp, body)}


def waha_event(session: str, worker: str, event_id: str, *, secret: str = SECRET
               ) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({
        "id": event_id, "timestamp": int(time.time() * 1000), "event": "session.status",
        "session": session, "payload": {"name": session, "status": "WORKING"},
        "environment": {"worker": {"id": worker}},
    }).encode()
    return body, {"X-Webhook-Hmac": waha.webhook_signature(secret, body),
                  "X-Webhook-Hmac-Algorithm": "sha512", "X-Webhook-Request-Id": event_id}


def probes(fleet: Fleet, pod: str) -> int:
    return fleet.simulators[pod].requests("GET /api/sessions")


def settle_after_a_probe_of(fleet: Fleet, receiver: str, pod: str) -> None:
    """A valid webhook from `pod`, waited for until the pod was probed: every request sent
    before it has been handled by then (the ordering checks below rely on it)."""
    before = probes(fleet, pod)
    body, headers = blazz_event(f"nothing-{time.monotonic()}")
    assert post_from(fleet.simulators[pod].ip, f"{receiver}/webhooks", body,
                     headers).status_code == 202
    wait_for(f"{pod} probed after its webhook", lambda: probes(fleet, pod) > before, timeout=10)


@pytest.mark.parametrize("protocol", ["blazz", "waha"])
def test_a_moved_session_is_corrected_by_its_new_pods_webhook(
    namespace: str, fleet: Fleet, accounts: Accounts, receiver: str, protocol: str
) -> None:
    for name in ("wa-0", "wa-1"):
        fleet.add(name, protocol)
    seed_sessions(fleet, accounts, {"wa-0": ["a1", "a2"]})
    with running_operator(settings(namespace, **operator(receiver))):
        wait_for("both accounts Connected on wa-0", lambda: all_settled(accounts, 2))
        assert accounts.pod_of("a1") == "wa-0"
        accepted = metrics.WEBHOOKS.labels("accepted")._value.get()

        # The session comes up on wa-1, which says so (session_ready / session.status WORKING).
        fleet.simulators["wa-0"].move("a1", fleet.simulators["wa-1"])

        wait_for("a1 recorded on wa-1", lambda: accounts.pod_of("a1") == "wa-1", timeout=10)
        assert accounts.status("a1")["instance"]["url"] == fleet.simulators["wa-1"].url
        assert accounts.pod_of("a2") == "wa-0"
        assert metrics.WEBHOOKS.labels("accepted")._value.get() > accepted
        assert fleet.simulators["wa-1"].webhooks()["delivered"] >= 1


def test_blazz_webhooks_without_a_valid_fresh_signature_change_nothing(
    namespace: str, fleet: Fleet, accounts: Accounts, receiver: str
) -> None:
    fleet.webhooks = None  # the test sends every webhook itself
    for name in ("wa-0", "wa-1", "wa-2"):
        fleet.add(name)
    seed_sessions(fleet, accounts, {"wa-0": ["a1"]})
    with running_operator(settings(namespace, **operator(receiver))):
        wait_for("a1 Connected", lambda: all_settled(accounts, 1))
        fleet.simulators["wa-0"].move("a1", fleet.simulators["wa-1"])  # silently
        wa1, url = fleet.simulators["wa-1"], f"{receiver}/webhooks"
        before = probes(fleet, "wa-1")

        body, headers = blazz_event("a1")
        forged = {**headers, "X-HMAC-Signature": blazz.webhook_signature("guess", headers[
            "X-Timestamp"], body)}
        tampered = body.replace(b"a1", b"a9")
        expired_body, expired = blazz_event("a1", age=301)
        attempts = {
            "forged": (body, forged),
            "unsigned": (body, {}),
            "tampered": (tampered, headers),
            "expired": (expired_body, expired),
        }
        for what, (payload, signed) in attempts.items():
            answer = post_from(wa1.ip, url, payload, signed)
            assert answer.status_code == 401, f"{what}: {answer.status_code} {answer.text}"
        assert post_from(wa1.ip, url, b"{}", {}).json()["result"] == "unsigned"

        settle_after_a_probe_of(fleet, receiver, "wa-2")
        assert probes(fleet, "wa-1") == before, "a refused webhook made the operator probe"
        assert accounts.pod_of("a1") == "wa-0"
        assert metrics.WEBHOOKS.labels("expired")._value.get() >= 1

        # The same event, correctly signed and fresh, is what corrects it.
        assert post_from(wa1.ip, url, body, headers).status_code == 202
        wait_for("a1 recorded on wa-1", lambda: accounts.pod_of("a1") == "wa-1", timeout=10)


def test_waha_replayed_and_forged_webhooks_change_nothing(
    namespace: str, fleet: Fleet, accounts: Accounts, receiver: str
) -> None:
    fleet.webhooks = None
    for name in ("wa-0", "wa-1", "wa-2"):
        fleet.add(name, "waha")
    seed_sessions(fleet, accounts, {"wa-0": ["a1"]})
    with running_operator(settings(namespace, **operator(receiver))):
        wait_for("a1 Connected", lambda: all_settled(accounts, 1))
        wa1, url = fleet.simulators["wa-1"], f"{receiver}/webhooks"
        body, headers = waha_event("a1", "wa-1", "evt_first")

        forged_body, forged = waha_event("a1", "wa-1", "evt_forged", secret="guess")
        assert post_from(wa1.ip, url, forged_body, forged).status_code == 401
        sha256 = {**headers, "X-Webhook-Hmac-Algorithm": "sha256"}
        assert post_from(wa1.ip, url, body, sha256).status_code == 401

        fleet.simulators["wa-0"].move("a1", wa1)  # silently
        assert post_from(wa1.ip, url, body, headers).status_code == 202
        wait_for("a1 recorded on wa-1", lambda: accounts.pod_of("a1") == "wa-1", timeout=10)

        # The same delivery again, even with a new request-id header: ignored.
        before = probes(fleet, "wa-1")
        replay = post_from(wa1.ip, url, body, {**headers, "X-Webhook-Request-Id": "evt_new"})
        assert (replay.status_code, replay.json()["result"]) == (200, "replayed")
        body2, headers2 = waha_event("nothing", "wa-2", "evt_control")
        assert post_from(fleet.simulators["wa-2"].ip, url, body2, headers2).status_code == 202
        wait_for("wa-2 probed", lambda: probes(fleet, "wa-2") > 1, timeout=10)
        assert probes(fleet, "wa-1") == before, "a replayed webhook made the operator probe"


def test_foreign_oversized_and_flooding_senders_are_refused_and_the_operator_keeps_up(
    namespace: str, fleet: Fleet, accounts: Accounts, receiver: str
) -> None:
    fleet.webhooks = None
    for name in ("wa-0", "wa-1", "wa-2"):
        fleet.add(name)
    seed_sessions(fleet, accounts, {"wa-0": ["a1"]})
    limits = operator(receiver, webhook_rate=5.0, webhook_burst=10)
    with running_operator(settings(namespace, **limits)):
        wait_for("a1 Connected", lambda: all_settled(accounts, 1))
        url = f"{receiver}/webhooks"
        body, headers = blazz_event("a1")

        # Correctly signed, but not from an instance pod's address.
        foreign = post_from("127.0.0.1", url, body, headers)
        assert (foreign.status_code, foreign.json()["result"]) == (403, "unknown_sender")

        big = post_from(fleet.simulators["wa-1"].ip, url, b"x" * (17 << 20), headers)
        assert big.status_code == 413  # over the default 16 MiB

        # wa-2 floods; meanwhile wa-1 reports a1, which moved there.
        flooder = fleet.simulators["wa-2"].ip
        transport = httpx.HTTPTransport(local_address=flooder)
        with httpx.Client(transport=transport, timeout=10) as http, \
                concurrent.futures.ThreadPoolExecutor(1) as pool:
            noise, noise_headers = blazz_event("noise", "session_authenticated")

            def flood() -> list[int]:
                return [http.post(url, content=noise, headers=noise_headers).status_code
                        for _ in range(400)]

            flooding = pool.submit(flood)
            fleet.simulators["wa-0"].move("a1", fleet.simulators["wa-1"])
            moved_body, moved_headers = blazz_event("a1")
            answer = post_from(fleet.simulators["wa-1"].ip, url, moved_body, moved_headers)
            assert answer.status_code == 202, answer.text
            wait_for("a1 recorded on wa-1 during the flood",
                     lambda: accounts.pod_of("a1") == "wa-1", timeout=10)
            statuses = flooding.result(timeout=120)
        assert statuses.count(429) > 300, f"throttled only {statuses.count(429)} of 400"
        assert metrics.WEBHOOKS.labels("throttled")._value.get() >= statuses.count(429)


def test_the_rediscover_annotation_corrects_a_stale_account(
    namespace: str, fleet: Fleet, accounts: Accounts, receiver: str, kubectl: Kubectl
) -> None:
    fleet.webhooks = None
    for name in ("wa-0", "wa-1"):
        fleet.add(name)
    seed_sessions(fleet, accounts, {"wa-0": ["a1", "a2"]})
    with running_operator(settings(namespace, **operator(receiver))):
        wait_for("both Connected", lambda: all_settled(accounts, 2))
        fleet.simulators["wa-0"].move("a1", fleet.simulators["wa-1"])  # nobody says so

        kubectl.run("annotate", "waaccount", "a1", "wa-controller.io/rediscover=send-failed-1")

        wait_for("a1 recorded on wa-1", lambda: accounts.pod_of("a1") == "wa-1", timeout=10)
        assert accounts.pod_of("a2") == "wa-0"


def test_the_rediscover_call_needs_the_token_and_coalesces_bursts(
    namespace: str, fleet: Fleet, accounts: Accounts, receiver: str
) -> None:
    fleet.webhooks = None
    for name in ("wa-0", "wa-1"):
        fleet.add(name)
    seed_sessions(fleet, accounts, {"wa-0": ["a1"]})
    with running_operator(settings(namespace, **operator(receiver))):
        wait_for("a1 Connected", lambda: all_settled(accounts, 1))
        call = f"{receiver}/rediscover/{namespace}/a1"
        assert httpx.post(call).status_code == 401
        assert httpx.post(call, headers={"Authorization": "Bearer wrong"}).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        missing = httpx.post(f"{receiver}/rediscover/{namespace}/nobody", headers=auth)
        assert missing.status_code == 404

        fleet.simulators["wa-0"].move("a1", fleet.simulators["wa-1"])
        before = {pod: probes(fleet, pod) for pod in ("wa-0", "wa-1")}
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(lambda _: httpx.post(call, headers=auth, timeout=10),
                                    range(10)))

        assert [a.status_code for a in answers] == [200] * 10
        assert answers[-1].json()["observedOn"] == ["wa-1"]
        wait_for("a1 recorded on wa-1", lambda: accounts.pod_of("a1") == "wa-1", timeout=10)
        extra = {pod: probes(fleet, pod) - before[pod] for pod in before}
        assert all(1 <= n <= 4 for n in extra.values()), f"10 requests cost {extra} probes"
