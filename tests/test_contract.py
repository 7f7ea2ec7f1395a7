"""Contract tests: the recordings of the real services (`../shared/recordings/*.json`) are
the truth. Every recorded exchange is replayed against the protocol adapter (the recorded
answer must mean what the service meant) and against the simulator (same request, same
status code and JSON shape). A recording dropped into that folder is picked up as it is.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from controller.instances import (
    PROTOCOLS,
    CallTimeouts,
    InstanceAuthError,
    InstanceError,
    InstanceHttp,
    InstanceInfo,
    InstanceRefused,
    InstanceUnavailable,
    InventoryReport,
    SessionRequest,
    SessionState,
    build_adapter,
)
from controller.simulator import Fault, InstanceSimulator

RECORDINGS = Path(os.environ.get(
    "WA_RECORDINGS", Path(__file__).resolve().parents[1].parent / "shared" / "recordings"))
KEY = "recorded-key"


def _recordings() -> list[Path]:
    found = sorted(RECORDINGS.glob("*.json"))
    if not found:
        raise AssertionError(f"no recordings in {RECORDINGS} (set WA_RECORDINGS)")
    return found


def _protocol_and_tier(path: Path) -> tuple[str, str]:
    protocol = path.name.split("-")[0]
    assert protocol in PROTOCOLS, f"{path.name}: name it <protocol>-<version>.json"
    if protocol == "waha":
        return protocol, "core" if "core" in path.stem.lower() else "plus"
    return protocol, "default"


EXCHANGES = [
    pytest.param(path, exchange, id=f"{path.stem}: {exchange['name']}")
    for path in _recordings()
    for exchange in json.loads(path.read_text())["exchanges"]
]


def _substitute(value: Any) -> Any:
    """The recordings say <API_KEY> for the key the service was started with."""
    if isinstance(value, str):
        return value.replace("<API_KEY>", KEY)
    if isinstance(value, dict):
        return {k: _substitute(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v) for v in value]
    return value


def shape(value: Any) -> Any:
    """Keys and value types, not values (an int and a float are both numbers)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in sorted(value.items())}
    if isinstance(value, list):
        return sorted((shape(item) for item in value), key=repr)
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__


# --- the simulator answers as the service did -------------------------------------------

def _seed(sim: InstanceSimulator, body: Any) -> None:
    """Put the sessions a recorded answer lists into the simulator, as they were listed."""
    entries = body if isinstance(body, list) else (body or {}).get("sessions") \
        if isinstance(body, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        name = entry.get("session_id") or entry.get("name")
        if name and not (name in sim.sessions and sim.sessions[name].status == entry.get(
                "status")):
            sim.put(name, entry.get("status"), entry.get("workspace_id"), quiet=True)


@pytest.mark.parametrize(("recording", "exchange"), EXCHANGES)
async def test_the_simulator_answers_as_recorded(recording: Path, exchange: dict[str, Any]
                                                 ) -> None:
    protocol, tier = _protocol_and_tier(recording)
    # As recorded: WhatsApp itself unreachable, so creates fail after the browser started.
    sim = InstanceSimulator(protocol, api_key=KEY, tier=tier, create_delay=0,
                            whatsapp_reachable=False)
    request, recorded = _substitute(exchange["request"]), exchange["response"]
    _seed(sim, recorded.get("body"))
    server = TestServer(sim.app())
    await server.start_server()
    try:
        async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=30) as http:
            started = time.monotonic()
            answer = await http.request(
                request["method"], request["path"], params=request.get("query"),
                headers=request.get("headers"),
                json=request.get("body") if "body" in request else None)
            elapsed_ms = (time.monotonic() - started) * 1000
    finally:
        await server.close()
        await sim.aclose()
    assert answer.status_code == recorded["status"], answer.text
    if recorded.get("body") is not None:
        assert shape(answer.json()) == shape(recorded["body"])
    if recorded.get("elapsed_ms", 0) >= 1000 and recorded["status"] < 500:
        # A slow answer of the service (WAHA's stop sleeps ~3 s) is slow here too.
        assert elapsed_ms >= recorded["elapsed_ms"] / 2


# --- the adapter reads each recorded answer for what it means ---------------------------

@dataclass(frozen=True)
class Sent:
    """A request the adapter sent."""

    method: str
    path: str


class RecordedService:
    """Answers the one recorded request with its recorded answer, and every other request an
    operation makes with the service's ordinary answer (`neutral`), on a loopback server."""

    def __init__(self, exchange: dict[str, Any],
                 neutral: Callable[[Sent, dict[str, Any]], web.Response]) -> None:
        self.exchange, self.neutral = exchange, neutral
        self.sent: list[Sent] = []

    def matches(self, request: Sent) -> bool:
        recorded = self.exchange["request"]
        return (request.method, request.path) == (recorded["method"], recorded["path"])

    async def handle(self, request: web.Request) -> web.Response:
        sent = Sent(request.method, request.path)
        self.sent.append(sent)
        if self.matches(sent):
            response = self.exchange["response"]
            body = response.get("body")
            return web.Response(status=response["status"],
                                body=b"" if body is None else json.dumps(body).encode(),
                                content_type="application/json")
        return self.neutral(sent, self.exchange["request"])


def _blazz_neutral(request: Sent, recorded: dict[str, Any]) -> web.Response:
    if request.method == "GET" and recorded["method"] == "DELETE":  # the pod holds it
        return web.json_response({"session_id": "s", "status": "connected"})
    if request.method == "GET":
        return web.json_response({"error": "Session not found"}, status=404)
    return web.json_response({"success": True, "status": "qr_scanning"})


def _waha_neutral(request: Sent, recorded: dict[str, Any]) -> web.Response:
    creating = (recorded["method"], recorded["path"]) == ("POST", "/api/sessions")
    if request.method == "GET" and creating:
        return web.json_response({"statusCode": 404, "message": "Session not found"},
                                 status=404)
    if request.method == "GET":
        name = request.path.rsplit("/", 1)[-1]
        return web.json_response({"name": name, "status": "STOPPED", "config": None})
    return web.Response(status=201)


NEUTRAL = {"blazz": _blazz_neutral, "waha": _waha_neutral}


def _session_of(request: dict[str, Any]) -> str:
    body = request.get("body") or {}
    parts = request["path"].split("/")
    named = parts[3] if len(parts) > 3 and parts[1:3] == ["api", "sessions"] else None
    return body.get("session_id") or body.get("name") or named or "s1"


async def _operation(protocol: str, exchange: dict[str, Any], adapter: Any) -> Any:
    """The adapter call that sends the recorded request, and what it returned or raised."""
    request = exchange["request"]
    method, path = request["method"], request["path"]
    session = _session_of(request)
    if method == "GET" and path == "/api/sessions":
        call = adapter.inventory()
    elif method == "GET" and re.fullmatch(r"/api/(server/)?version", path):
        call = adapter.describe()
    elif method == "DELETE" or path.endswith("/stop"):
        call = adapter.stop(session, "1")
    elif method == "POST" or (method == "GET" and path.startswith("/api/sessions/")):
        call = adapter.start(SessionRequest(session, "1", "1", resume=path.endswith("/restore")))
    else:
        return None  # not a call any adapter makes (health, ping): the simulator's alone
    try:
        return await call
    except InstanceError as error:
        return error


# What the recordings teach, exchange by exchange: the meaning each answer must have.
MEANINGS: dict[str, Callable[[Any, RecordedService], None]] = {
    "list sessions, empty": lambda r, _: _sessions(r, {}),
    "list sessions after the service restored a session": lambda r, _: _sessions(
        r, {"webjs_1_acct1": SessionState.UNKNOWN, "webjs_1_acct2": SessionState.PAIRING}),
    "status of an unknown session": lambda r, s: _created(r, s),
    "create, no browser installed": lambda r, _: _failed(r, "Could not find expected browser"),
    "create, browser installed, WhatsApp unreachable": lambda r, _: _failed(
        r, "ERR_NAME_NOT_RESOLVED"),
    "restore any session": lambda r, s: _created(r, s),
    "delete an unknown session": lambda r, _: _succeeded(r),
    "list all sessions": lambda r, _: _sessions(r, {}),
    "list all sessions, wrong key": lambda r, _: _sessions(r, {}),
    "list running sessions": lambda r, _: _sessions(r, {}),
    "one session": lambda r, s: _started(r, s),
    "unknown session": lambda r, s: _created(r, s),
    "create a session not named default (CORE)": lambda r, _: _refused(r, "only 'default'"),
    "start a session not named default (CORE)": lambda r, _: _refused(r, "only 'default'"),
    "stop a session not named default (CORE)": lambda r, _: _refused(r, "only 'default'"),
    "create a session that exists": lambda r, s: _started(r, s),
    "start default": lambda r, _: _succeeded(r),
    "stop default": lambda r, _: _succeeded(r),
}


def _sessions(result: Any, expected: dict[str, SessionState]) -> None:
    assert isinstance(result, InventoryReport), result
    assert {n: s.state for n, s in result.sessions.items()} == expected
    assert result.skipped == ()


def _succeeded(result: Any) -> None:
    assert result is None, result


def _created(result: Any, service: RecordedService) -> None:
    """A session absent (or a restore that failed) ends in exactly one create."""
    assert result is None, result
    creates = [r for r in service.sent if (r.method, r.path) == ("POST", "/api/sessions")]
    assert len(creates) == 1


def _started(result: Any, service: RecordedService) -> None:
    """A session that exists (WAHA's 422 "already exists") is started, not created again."""
    assert result is None, result
    assert any(r.method == "POST" and r.path.endswith("/start") for r in service.sent)


def _failed(result: Any, said: str) -> None:
    assert isinstance(result, InstanceUnavailable), result
    assert said in str(result)


def _refused(result: Any, said: str) -> None:
    assert isinstance(result, InstanceRefused), result
    assert said in result.instance_message


@pytest.mark.parametrize(("recording", "exchange"), EXCHANGES)
async def test_the_adapter_reads_what_the_service_meant(recording: Path,
                                                        exchange: dict[str, Any]) -> None:
    protocol, _ = _protocol_and_tier(recording)
    service = RecordedService(_substitute(exchange), NEUTRAL[protocol])
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", service.handle)
    server = TestServer(app)
    await server.start_server()
    http = InstanceHttp(timeout=5)
    try:
        adapter = build_adapter(protocol, http, str(server.make_url("")), KEY,
                                info=InstanceInfo())
        result = await _operation(protocol, exchange, adapter)
    finally:
        await http.aclose()
        await server.close()
    if not service.sent:
        return  # a call no adapter makes; the simulator test covers it
    assert any(service.matches(r) for r in service.sent), \
        f"the adapter never sent {exchange['request']['method']} {exchange['request']['path']}"
    status = exchange["response"]["status"]
    if status == 401:
        assert isinstance(result, InstanceAuthError), result
    else:  # a meaning, never a crash: a value, or an error the controller can report
        assert result is None or isinstance(result, InventoryReport | InstanceInfo
                                             | InstanceError), result
    if exchange["name"] in MEANINGS:
        MEANINGS[exchange["name"]](result, service)


def test_every_recorded_state_word_is_known_to_its_adapter() -> None:
    for path in _recordings():
        protocol, _ = _protocol_and_tier(path)
        states = json.loads(path.read_text()).get("states", [])
        words = [w for w in states if not w.startswith("(")]
        for word in words:
            assert PROTOCOLS[protocol].normalize(word) is not SessionState.UNKNOWN, word


# --- deadlines: a start's own requests wait as long as a start may take -----------------

@pytest.mark.parametrize(("protocol", "tier"), [("blazz", "default"), ("waha", "plus")])
async def test_a_busy_pod_slower_than_a_probe_still_gets_the_start_once(protocol: str,
                                                                        tier: str) -> None:
    """A pod busy launching browsers answers every request late. Its inventory may be given
    up at the probe's deadline, but the questions a start asks first belong to the start:
    giving up on them would send the session to another pod for nothing."""
    sim = InstanceSimulator(protocol, api_key=KEY, tier=tier, create_delay=0,
                            fault=Fault.SLOW, delay=0.3)
    server = TestServer(sim.app())
    await server.start_server()
    http = InstanceHttp(timeout=5)
    adapter = build_adapter(protocol, http, str(server.make_url("")).rstrip("/"), KEY,
                            info=InstanceInfo(), timeouts=CallTimeouts(probe=0.1, start=5,
                                                                       stop=5))
    try:
        with pytest.raises(InstanceUnavailable) as late:
            await adapter.inventory()
        assert late.value.kind == "timeout"
        await adapter.start(SessionRequest("s1", "1", "1", resume=False))
        assert (sim.starts.creates, sim.starts.double_creates) == (1, 0)
        await adapter.stop("s1", "1")
        assert sim.starts.stops == 1
    finally:
        await http.aclose()
        await server.close()
        await sim.aclose()
