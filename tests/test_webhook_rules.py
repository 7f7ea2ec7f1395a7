"""The webhook rules as pure functions: signatures, freshness, replays, throttling, senders."""

from __future__ import annotations

import json

import pytest

from controller.fleet import InstanceDefaults, pod_view
from controller.instances import (
    BlazzAdapter,
    InstanceEvent,
    SessionState,
    WahaAdapter,
    WebhookRejected,
    blazz,
    waha,
)
from controller.webhooks import RateLimiter, ReplayGuard, pods_at, sender_of

SECRET = "s3cret"
NOW = 1_800_000_000.0


def blazz_request(body: dict[str, object], *, timestamp: float = NOW, secret: str = SECRET
                  ) -> tuple[dict[str, str], bytes]:
    raw = json.dumps(body).encode()
    stamp = str(int(timestamp))
    return {"X-Timestamp": stamp,
            "X-HMAC-Signature": blazz.webhook_signature(secret, stamp, raw)}, raw


def read_blazz(headers: dict[str, str], raw: bytes) -> object:
    return BlazzAdapter.read_webhook(headers, raw, SECRET, NOW, 300)


def rejection(read: object, *args: object) -> str:
    with pytest.raises(WebhookRejected) as caught:
        read(*args)  # type: ignore[operator]
    return caught.value.reason


class TestBlazz:
    def test_a_signed_fresh_event_is_read(self) -> None:
        headers, raw = blazz_request({"event": "session_ready", "session": "s1",
                                      "data": {"session_id": "s1", "status": "connected"}})
        event = BlazzAdapter.read_webhook(headers, raw, SECRET, NOW + 299, 300)
        assert (event.name, event.session, event.state) == ("session_ready", "s1",
                                                             SessionState.WORKING)
        assert event.replay_key == f"blazz:{headers['X-HMAC-Signature']}"

    @pytest.mark.parametrize(("event", "state"), [
        ("session_ready", SessionState.WORKING),
        ("session_authenticated", SessionState.STARTING),
        ("qr_code_generated", SessionState.PAIRING),
        ("session_disconnected", SessionState.FAILED),
        ("message_received", None),
    ])
    def test_without_a_status_word_the_event_name_gives_the_state(
        self, event: str, state: SessionState | None
    ) -> None:
        headers, raw = blazz_request({"event": event, "data": {"session_id": "s1"}})
        read = read_blazz(headers, raw)
        assert (read.session, read.state) == ("s1", state)  # type: ignore[attr-defined]

    def test_missing_headers_are_unsigned(self) -> None:
        headers, raw = blazz_request({"event": "session_ready"})
        assert rejection(read_blazz, {}, raw) == "unsigned"
        assert rejection(read_blazz, {"X-Timestamp": headers["X-Timestamp"]}, raw) == "unsigned"

    def test_a_wrong_key_or_a_changed_body_or_timestamp_is_a_bad_signature(self) -> None:
        headers, raw = blazz_request({"event": "session_ready", "session": "s1"})
        _, other = blazz_request({"event": "session_ready", "session": "s2"})
        forged, _ = blazz_request({"event": "session_ready", "session": "s1"}, secret="guess")
        moved = {**headers, "X-Timestamp": str(int(NOW) + 1)}
        assert rejection(read_blazz, headers, other) == "bad_signature"
        assert rejection(read_blazz, forged, raw) == "bad_signature"
        assert rejection(read_blazz, moved, raw) == "bad_signature"

    @pytest.mark.parametrize("offset", [-301, 301, -10_000])
    def test_timestamps_more_than_300_s_off_are_expired(self, offset: int) -> None:
        headers, raw = blazz_request({"event": "session_ready"}, timestamp=NOW + offset)
        assert rejection(read_blazz, headers, raw) == "expired"

    def test_signed_garbage_is_malformed(self) -> None:
        stamp = str(int(NOW))
        for raw in (b"not json", b"[]", b'{"no_event": 1}'):
            headers = {"X-Timestamp": stamp,
                       "X-HMAC-Signature": blazz.webhook_signature(SECRET, stamp, raw)}
            assert rejection(read_blazz, headers, raw) == "malformed"
        bad_stamp = {"X-Timestamp": "yesterday",
                     "X-HMAC-Signature": blazz.webhook_signature(SECRET, "yesterday", b"{}")}
        assert rejection(read_blazz, bad_stamp, b"{}") == "malformed"


def waha_request(body: dict[str, object], *, secret: str = SECRET
                 ) -> tuple[dict[str, str], bytes]:
    raw = json.dumps(body).encode()
    return {"X-Webhook-Hmac": waha.webhook_signature(secret, raw),
            "X-Webhook-Hmac-Algorithm": "sha512"}, raw


def read_waha(headers: dict[str, str], raw: bytes) -> object:
    return WahaAdapter.read_webhook(headers, raw, SECRET, NOW, 300)


STATUS_EVENT = {"id": "evt_1", "timestamp": int(NOW * 1000), "event": "session.status",
                "session": "s1", "payload": {"name": "s1", "status": "WORKING"},
                "environment": {"worker": {"id": "wa-1"}}}


class TestWaha:
    def test_a_signed_session_status_is_read(self) -> None:
        assert read_waha(*waha_request(STATUS_EVENT)) == InstanceEvent(
            name="session.status", session="s1", state=SessionState.WORKING,
            replay_key="waha:evt_1", worker_id="wa-1")

    def test_new_status_words_are_unknown_and_other_events_carry_no_state(self) -> None:
        passkey = {**STATUS_EVENT, "payload": {"name": "s1", "status": "PASSKEY_REQUIRED"}}
        assert read_waha(*waha_request(passkey)).state is SessionState.UNKNOWN  # type: ignore[attr-defined]
        message = {"event": "message", "session": "s1", "payload": {"body": "hi"}}
        read = read_waha(*waha_request(message))
        assert (read.session, read.state) == ("s1", None)  # type: ignore[attr-defined]

    def test_the_replay_key_is_the_signed_event_id_not_the_header(self) -> None:
        headers, raw = waha_request(STATUS_EVENT)
        relabelled = {**headers, "X-Webhook-Request-Id": "evt_other"}
        assert read_waha(relabelled, raw).replay_key == "waha:evt_1"  # type: ignore[attr-defined]
        no_id = {k: v for k, v in STATUS_EVENT.items() if k != "id"}
        headers, raw = waha_request(no_id)
        assert read_waha(headers, raw).replay_key == f"waha:{headers['X-Webhook-Hmac']}"  # type: ignore[attr-defined]

    def test_unsigned_forged_downgraded_and_stale_events_are_refused(self) -> None:
        headers, raw = waha_request(STATUS_EVENT)
        forged, _ = waha_request(STATUS_EVENT, secret="guess")
        old = {**STATUS_EVENT, "timestamp": int((NOW - 301) * 1000)}
        assert rejection(read_waha, {}, raw) == "unsigned"
        assert rejection(read_waha, forged, raw) == "bad_signature"
        assert rejection(read_waha, {**headers, "X-Webhook-Hmac-Algorithm": "md5"},
                         raw) == "bad_signature"
        assert rejection(read_waha, *waha_request(old)) == "expired"
        assert rejection(read_waha, *waha_request({"payload": {}})) == "malformed"


class TestRateLimiter:
    def test_a_burst_then_the_rate(self) -> None:
        limiter = RateLimiter(rate=2, burst=3)
        assert [limiter.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
        assert limiter.allow("b", 0.0), "each source has its own bucket"
        assert not limiter.allow("a", 0.4)
        assert limiter.allow("a", 0.5)  # one token back after 1/rate seconds
        assert [limiter.allow("a", 100.0) for _ in range(4)] == [True, True, True, False]

    def test_sources_are_bounded_and_the_quietest_forgotten(self) -> None:
        limiter = RateLimiter(rate=1, burst=1, max_sources=2)
        assert limiter.allow("a", 0.0)
        assert limiter.allow("b", 0.0)
        assert limiter.allow("c", 0.0)  # forgets "a", heard from longest ago
        assert limiter.allow("a", 0.0)  # a fresh bucket
        assert not limiter.allow("c", 0.0)


class TestReplayGuard:
    def test_a_key_is_new_once_within_the_ttl(self) -> None:
        guard = ReplayGuard(ttl=10)
        assert guard.first_time("k", 0.0)
        assert not guard.first_time("k", 9.0)
        assert guard.first_time("k", 10.5)

    def test_entries_are_bounded(self) -> None:
        guard = ReplayGuard(ttl=100, max_entries=2)
        assert all(guard.first_time(k, 0.0) for k in ("a", "b", "c"))
        assert guard.first_time("a", 1.0), "the oldest entry went first"
        assert not guard.first_time("c", 1.0)


def pod(name: str, ip: str) -> object:
    body = {"metadata": {"name": name, "namespace": "ns"},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}
    return pod_view(body, InstanceDefaults(), ("blazz", "waha"))


def test_the_sender_is_the_pod_at_the_source_address() -> None:
    pods = [pod("wa-0", "10.0.0.1"), pod("wa-1", "10.0.0.2"), pod("host-a", "10.9.9.9"),
            pod("host-b", "10.9.9.9")]
    assert [p.name for p in pods_at("10.0.0.2", pods)] == ["wa-1"]  # type: ignore[attr-defined]
    assert pods_at("10.0.0.3", pods) == []
    # A worker id only chooses among the pods at the source address...
    shared = pods_at("10.9.9.9", pods)
    assert [p.name for p in sender_of(shared, "host-b")] == ["host-b"]
    assert [p.name for p in sender_of(shared, None)] == ["host-a", "host-b"]
    # ...and never names a pod elsewhere.
    assert [p.name for p in sender_of(pods_at("10.0.0.1", pods), "wa-1")] == ["wa-0"]
