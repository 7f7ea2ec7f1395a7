"""The operator as the fleet's one webhook endpoint: instances post to it, it learns from
the event and relays it to the application, re-signed, with the pod named, in order per
session, retried, and every loss counted. A real loopback HTTP server is the application
and verifies the signatures with its own secret."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import httpx
import pytest
from kubernetes import client as k8s

from controller.instances import BlazzAdapter, WahaAdapter, WebhookRejected, blazz
from devtools.control_plane import free_port
from devtools.harness import (
    Accounts,
    ApplicationStub,
    Fleet,
    all_settled,
    post_from,
    running_operator,
    scrape,
    seed_sessions,
    wait_for,
)
from devtools.harness import operator_settings as settings

pytestmark = pytest.mark.integration

SECRET = "instances-webhook-secret-1f0a"
APP_SECRET = "the-applications-own-secret-77c2"  # what the seed's Laravel app verifies with


@pytest.fixture
def application() -> Iterator[ApplicationStub]:
    with ApplicationStub() as app:
        yield app


@pytest.fixture
def receiver(core: k8s.CoreV1Api, namespace: str, fleet: Fleet, application: ApplicationStub
             ) -> str:
    """The instances' webhook Secret, the application's relay Secret, and the receiver."""
    def secret(name: str, values: dict[str, str]) -> None:
        core.create_namespaced_secret(namespace, {"metadata": {"name": name}, "data": {
            k: base64.b64encode(v.encode()).decode() for k, v in values.items()}})

    secret("wa-controller-webhooks", {"hmac-secret": SECRET, "rediscover-token": "t"})
    secret("wa-controller-relay", {"url": application.url, "hmac-secret": APP_SECRET})
    # The simulators send nothing by themselves here: each test posts its instances' events.
    return f"http://127.0.0.1:{free_port()}"


def operator(receiver: str, **overrides: object) -> dict[str, object]:
    return {"probe_interval": 600.0, "webhook_port": int(receiver.rsplit(":", 1)[1]),
            **overrides}


def blazz_post(fleet: Fleet, pod: str, receiver: str, event: dict[str, object]) -> int:
    """An instance's webhook, as the seed's service sends it, to its fixed path."""
    body = json.dumps(event).encode()
    headers = {**BlazzAdapter.sign_webhook(body, SECRET, time.time()),
               "X-Instance-Url": "http://localhost:3000"}
    return post_from(fleet.simulators[pod].ip, f"{receiver}/api/whatsapp/webhooks/webjs",
                     body, headers).status_code


def verified_by_the_application(headers: dict[str, str], body: bytes) -> None:
    """What the seed's Laravel endpoint does with a blazz webhook: check the signature."""
    event = BlazzAdapter.read_webhook(headers, body, APP_SECRET, time.time(), 300)
    assert event.name


def test_a_blazz_event_corrects_its_account_and_reaches_the_application_resigned(
    namespace: str, fleet: Fleet, accounts: Accounts, receiver: str, application: ApplicationStub
) -> None:
    fleet.add("wa-0")
    wa1 = fleet.add("wa-1")
    seed_sessions(fleet, accounts, {"wa-0": ["r1"]})
    with running_operator(settings(namespace, **operator(receiver))):
        wait_for("r1 Connected and mirrored", lambda: all_settled(accounts, 1))
        wa1.put("r1", quiet=True)  # the session moved; wa-1 says so itself
        fleet.simulators["wa-0"].remove("r1")
        ready = {"event": "session_ready", "data": {"session_id": "r1", "workspace_id": "1",
                                                    "status": "connected"}}
        assert blazz_post(fleet, "wa-1", receiver, ready) == 202
        wait_for("r1 recorded on wa-1", lambda: accounts.pod_of("r1") == "wa-1")
        wait_for("the event at the application", lambda: len(application.received) == 1)
        headers, body = application.received[0]
        assert json.loads(body) == ready
        verified_by_the_application(headers, body)
        assert headers["X-WA-Controller-Pod"] == "wa-1"
        assert headers["X-WA-Controller-Instance-Url"] == wa1.url
        assert headers["X-WA-Controller-Namespace"] == namespace
        assert "X-Instance-Url" not in headers

        # A media message: 200 kB inline, relayed byte for byte.
        media = base64.b64encode(bytes(range(256)) * 600).decode()
        message = json.dumps({"event": "message_received", "data": {
            "session_id": "r1", "workspace_id": "1", "media": media}}).encode()
        signed = BlazzAdapter.sign_webhook(message, SECRET, time.time())
        assert len(message) > 200_000
        answer = post_from(wa1.ip, f"{receiver}/api/whatsapp/webhooks/webjs", message, signed)
        assert answer.status_code == 202
        wait_for("the media message at the application", lambda: len(application.received) == 2)
        headers, body = application.received[1]
        assert body == message
        verified_by_the_application(headers, body)


def test_an_application_that_fails_three_times_gets_the_event_once_and_in_order(
    namespace: str, fleet: Fleet, accounts: Accounts, receiver: str, application: ApplicationStub
) -> None:
    fleet.add("wa-0")
    seed_sessions(fleet, accounts, {"wa-0": ["o1"]})
    with running_operator(settings(namespace, **operator(receiver))):
        wait_for("o1 Connected and mirrored", lambda: all_settled(accounts, 1))
        application.script = [503, 503, 503]
        for i in range(4):
            event = {"event": "message_received", "data": {"session_id": "o1", "n": i}}
            assert blazz_post(fleet, "wa-0", receiver, event) == 202
        wait_for("four events at the application", lambda: len(application.events()) == 4)
        assert [e["data"]["n"] for e in application.events()] == [0, 1, 2, 3]  # type: ignore[index]
        assert application.answers == [503, 503, 503, 200, 200, 200, 200]


def test_an_application_down_longer_than_the_retries_loses_counted_events_only(
    namespace: str, fleet: Fleet, accounts: Accounts, receiver: str, application: ApplicationStub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fleet.add("wa-0")
    seed_sessions(fleet, accounts, {"wa-0": ["d1"]})
    port = free_port()
    config = settings(namespace, **operator(receiver), relay_attempts=3, metrics_port=port)
    with running_operator(config) as runner:
        wait_for("d1 Connected and mirrored", lambda: all_settled(accounts, 1))
        application.script = [500] * 6  # two events, three attempts each
        dropped = 'wa_controller_relay_events_total{result="dropped_undeliverable"}'
        before = scrape(port).get(dropped, 0)
        for i in range(2):
            event = {"event": "message_received", "data": {"session_id": "d1", "n": i}}
            assert blazz_post(fleet, "wa-0", receiver, event) == 202
        wait_for("both losses counted", lambda: scrape(port).get(dropped, 0) == before + 2)
        # The operator still answers at once, and events flow again.
        event = {"event": "message_received", "data": {"session_id": "d1", "n": 2}}
        assert blazz_post(fleet, "wa-0", receiver, event) == 202
        wait_for("the later event delivered", lambda: len(application.events()) == 1)
        assert application.events()[0]["data"]["n"] == 2  # type: ignore[index]
    losses = [line for line in runner.output.splitlines() if "lost an event" in line]
    assert len(losses) == 1  # one line per destination per minute, not one per event


def waha_unsigned(session: str, status: str) -> bytes:
    return json.dumps({"event": "session.status", "session": session,
                       "payload": {"name": session, "status": status},
                       "environment": {"version": "2024.10.8", "tier": "CORE"}}).encode()


def test_unsigned_waha_webhooks_only_from_pods_that_opt_in(
    namespace: str, fleet: Fleet, accounts: Accounts, receiver: str, application: ApplicationStub,
    core: k8s.CoreV1Api,
) -> None:
    closed, trusting = fleet.add("w-closed", "waha"), fleet.add("w-open", "waha")
    core.patch_namespaced_pod("w-open", namespace, {"metadata": {"annotations": {
        "wa-controller.io/webhook-auth": "source-address"}}})
    url = f"{receiver}/webhooks"
    with running_operator(settings(namespace, **operator(receiver))):
        wait_for("the receiver up", lambda: _answers(receiver))
        wait_for("the opt-in seen", lambda: post_from(
            trusting.ip, url, waha_unsigned("u0", "STARTING")).status_code == 202)
        assert post_from(closed.ip, url, waha_unsigned("u1", "WORKING")).status_code == 401
        assert post_from("127.0.0.1", url, waha_unsigned("u1", "WORKING")).status_code == 403
        answer = post_from(trusting.ip, url, waha_unsigned("u1", "WORKING"))
        assert answer.status_code == 202
        # The same body again at once is a replay (no event id to tell them apart).
        assert post_from(trusting.ip, url, waha_unsigned("u1", "WORKING")).json() == {
            "result": "replayed"}
        wait_for("two events at the application", lambda: len(application.received) == 2)
        [(headers, body)] = [(h, b) for h, b in application.received
                             if b == waha_unsigned("u1", "WORKING")]
        assert headers["X-WA-Controller-Pod"] == "w-open"
        # Re-signed in WAHA's scheme with the application's secret.
        event = WahaAdapter.read_webhook(headers, body, APP_SECRET, time.time(), 300)
        assert event.session == "u1"
        with pytest.raises(WebhookRejected):
            WahaAdapter.read_webhook(headers, body, "another secret", time.time(), 300)


def test_a_body_over_the_limit_is_refused(
    namespace: str, fleet: Fleet, accounts: Accounts, receiver: str
) -> None:
    # The default limit (16 MiB) takes media messages (see above); a smaller one refuses.
    fleet.add("wa-0")
    with running_operator(settings(namespace, **operator(receiver), webhook_max_body=1 << 20)):
        url = f"{receiver}/api/whatsapp/webhooks/webjs"
        big = b'{"event": "message_received", "data": {"media": "' + b"x" * (2 << 20) + b'"}}'
        stamp = str(int(time.time()))
        headers = {"X-Timestamp": stamp,
                   "X-HMAC-Signature": blazz.webhook_signature(SECRET, stamp, big)}
        wait_for("the receiver up", lambda: _answers(receiver))
        assert post_from(fleet.simulators["wa-0"].ip, url, big, headers).status_code == 413


def _answers(receiver: str) -> bool:
    try:
        httpx.get(receiver, timeout=1)
    except httpx.HTTPError:
        return False
    return True
