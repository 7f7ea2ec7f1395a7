"""The reconciler's work queue shell with an injected clock: a pass that keeps failing
backs off exponentially and is logged once per change of reason, not on every retry."""

from __future__ import annotations

import asyncio
import copy
import logging
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from controller.api import Condition
from controller.decisions import Policy
from controller.events import EventRecorder
from controller.fleet import InstanceDefaults
from controller.instances import InstanceHttp
from controller.observer import Observer
from controller.reconciler import Reconciler
from controller.secrets import SecretValue
from tests.test_workqueue import FakeClock


class RefusingKube:
    """An API server that refuses every status write, as one under a bad admission hook."""

    def __init__(self) -> None:
        self.writes = 0

    async def patch_status(self, *_: Any) -> bool:
        self.writes += 1
        raise ApiException(status=500, reason="admission webhook is down")


def account(name: str, version: str = "1") -> dict[str, Any]:
    return {"apiVersion": "wa-controller.io/v1alpha1", "kind": "WAAccount",
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}",
                         "resourceVersion": version, "generation": 1},
            "spec": {"sessionId": name, "desiredState": "Connected"}, "status": {}}


async def no_key() -> str | None:
    return None


async def no_post(namespace: str, event: dict[str, Any]) -> None:
    """Events go nowhere here."""


class ConflictingKube:
    """An API server where someone else always wrote the account just before, and whose
    reads still show the version before (a read that lags behind the writes)."""

    def __init__(self) -> None:
        self.writes: list[str] = []  # the resourceVersion of each write

    async def patch_status(self, namespace: str, name: str, version: str, *_: Any) -> bool:
        self.writes.append(version)
        return False

    async def get_account(self, namespace: str, name: str) -> dict[str, Any]:
        return account(name)


class StatusServer:
    """Status writes guarded by resourceVersion, answered with the object as written, as
    the API server does; its watch events are delivered by the test, late or never."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.writes: list[str] = []  # the resourceVersion of each write

    def create(self, name: str) -> dict[str, Any]:
        self.objects[name] = account(name)
        return copy.deepcopy(self.objects[name])

    async def patch_status(self, namespace: str, name: str, version: str,
                           status: dict[str, Any]) -> dict[str, Any] | None:
        self.writes.append(version)
        current = self.objects[name]
        if current["metadata"]["resourceVersion"] != version:
            return None
        merged = {k: v for k, v in {**current["status"], **status}.items() if v is not None}
        current["status"] = merged
        current["metadata"]["resourceVersion"] = str(int(version) + 1)
        return copy.deepcopy(current)

    async def get_account(self, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.objects[name])


@pytest.fixture(params=[RefusingKube])
async def shell(request: pytest.FixtureRequest) -> Any:
    clock, kube, active = FakeClock(), request.param(), asyncio.Event()
    active.set()
    http = InstanceHttp(timeout=1)
    events = EventRecorder(no_post, clock=clock)
    observer = Observer(http=http, api_key=SecretValue(no_key, "no key"),
                        defaults=InstanceDefaults(), interval=30, failure_threshold=3,
                        pending_ttl=60, active=active, clock=clock, events=events)
    reconciler = Reconciler(observer=observer, kube=kube, policy=Policy(),  # type: ignore[arg-type]
                            resync_interval=300, warmup_timeout=0, workers=0, clock=clock,
                            events=events)
    yield clock, kube, reconciler
    await reconciler.close()
    await events.close()
    await http.aclose()


async def run_due(reconciler: Reconciler) -> int:
    """Run every pass that is due now, as a worker would; how many ran."""
    ran = 0
    while (uid := reconciler.queue.pop()) is not None:
        await reconciler.process(uid)
        reconciler.queue.done(uid)
        ran += 1
    return ran


async def test_a_failing_pass_backs_off_and_is_logged_once(
    shell: Any, caplog: pytest.LogCaptureFixture
) -> None:
    clock, kube, reconciler = shell
    reconciler.account_event(None, account("a1"))
    attempts_at = []
    with caplog.at_level(logging.WARNING, logger="wa_controller.reconciler"):
        for second in range(0, 600):  # ten minutes, one second at a time
            if await run_due(reconciler):
                attempts_at.append(second)
            clock.advance(1)
    assert attempts_at == [0, 1, 3, 7, 15, 31, 63, 127, 255, 511]
    assert kube.writes == 10
    failures = [r for r in caplog.records if "reconcile failed" in r.getMessage()]
    assert len(failures) == 1
    assert "admission webhook is down" in failures[0].getMessage()


@pytest.mark.parametrize("shell", [ConflictingKube], indirect=True)
async def test_a_version_whose_write_was_refused_is_not_written_again(shell: Any) -> None:
    """A conflict means a newer object is on its way through the watch: wait for it (or,
    should it never come, a while), never write the stale version again and again."""
    clock, kube, reconciler = shell
    reconciler.account_event(None, account("a1"))
    for _ in range(9):  # nine seconds without a newer version
        await run_due(reconciler)
        clock.advance(1)
    assert kube.writes == ["1"]
    reconciler.account_event("MODIFIED", account("a1", version="2"))
    await run_due(reconciler)
    assert kube.writes == ["1", "2"]
    for _ in range(12):  # the newer one's event never comes: written again in ten seconds
        clock.advance(1)
        await run_due(reconciler)
    assert kube.writes == ["1", "2", "2"]


@pytest.mark.parametrize("shell", [StatusServer], indirect=True)
async def test_the_next_write_builds_on_the_object_written_not_on_its_late_event(
    shell: Any
) -> None:
    """Under load the watch delivers an object seconds after the write that made it was
    answered: deciding again meanwhile must not write on the older one (a conflict), and
    an event older than what the write answered must not take the account back."""
    _, server, reconciler = shell
    first = server.create("a1")
    reconciler.account_event(None, first)
    await run_due(reconciler)  # Pending: no pod anywhere
    assert server.writes == ["1"]
    server.objects["a1"]["spec"]["desiredState"] = "Stopped"  # then someone stops it...
    server.objects["a1"]["metadata"]["resourceVersion"] = "3"
    reconciler.account_event("MODIFIED", first)  # ...while the watch is still at version 1
    await run_due(reconciler)
    assert server.writes == ["1"]  # nothing to write on version 2: Pending is right
    reconciler.account_event("MODIFIED", copy.deepcopy(server.objects["a1"]))
    await run_due(reconciler)
    assert server.writes == ["1", "3"]  # Stopped, written on the newest object
    assert server.objects["a1"]["status"]["phase"] == "Stopped"


@pytest.mark.parametrize("shell", [StatusServer], indirect=True)
async def test_a_lost_write_race_is_written_again_on_the_object_read_at_once(
    shell: Any
) -> None:
    """After a conflict the account is read: its newer version may come through the watch
    a minute later under load, and nothing could be written meanwhile."""
    _, server, reconciler = shell
    reconciler.account_event(None, server.create("a1"))
    server.objects["a1"]["metadata"]["resourceVersion"] = "7"  # someone wrote it since
    await run_due(reconciler)  # no watch event of version 7
    assert server.writes == ["1", "7"]
    assert server.objects["a1"]["status"]["phase"] == "Pending"


@pytest.mark.parametrize("shell", [StatusServer], indirect=True)
async def test_the_mirrors_condition_write_is_built_on_before_its_watch_event_comes(
    shell: Any
) -> None:
    """The mirror's Mirrored condition is a write of its own: its answer is the account's
    newest version, known to the reconciler before the watch brings it (seconds later
    under load); an older answer never takes the record back."""
    _, server, reconciler = shell
    reconciler.account_event(None, server.create("a1"))
    await run_due(reconciler)  # Pending, written on version 1 (now 2)
    ours = copy.deepcopy(server.objects["a1"])
    server.objects["a1"]["spec"]["desiredState"] = "Stopped"  # someone stops it: 3
    server.objects["a1"]["metadata"]["resourceVersion"] = "4"  # the mirror's condition: 4
    reconciler.written_by_others(copy.deepcopy(server.objects["a1"]))
    reconciler.written_by_others(account("a1", version="1"))  # a late, older answer
    reconciler.account_event("MODIFIED", ours)  # the watch, far behind, brings version 2
    await run_due(reconciler)
    assert server.writes == ["1", "4"]  # Stopped, written on the newest version at once
    assert server.objects["a1"]["status"]["phase"] == "Stopped"


class Carrier:
    """The mirror as the reconciler sees it: a condition to carry, and the objects that
    carried it."""

    def __init__(self) -> None:
        self.condition: Condition | None = Condition(
            type="Mirrored", status="True", reason="RowWritten", message="the row matches",
            last_transition_time=datetime(2026, 1, 1, tzinfo=UTC), observed_generation=1)
        self.shown: list[dict[str, Any]] = []

    def to_show(self, uid: str) -> Condition | None:
        return self.condition if uid == "uid-a1" else None

    def shown_by(self, body: dict[str, Any]) -> None:
        self.shown.append(body)


@pytest.mark.parametrize("shell", [StatusServer], indirect=True)
async def test_a_status_write_carries_the_mirrors_condition(shell: Any) -> None:
    """One write instead of two: the placement (here: Pending) carries the Mirrored
    condition beside the reconciler's own, and the mirror is told what was written; an
    account the mirror has nothing for is written without it, and a pass that writes
    nothing writes no condition either."""
    _, server, reconciler = shell
    carrier = Carrier()
    reconciler.carry(SimpleNamespace(to_show=carrier.to_show, shown=carrier.shown_by))
    reconciler.account_event(None, server.create("a1"))
    reconciler.account_event(None, server.create("a2"))
    await run_due(reconciler)
    assert server.writes == ["1", "1"]
    kinds = {name: sorted((c["type"], c["status"]) for c in obj["status"]["conditions"])
             for name, obj in server.objects.items()}
    assert kinds == {"a1": [("Assigned", "False"), ("Mirrored", "True"), ("Ready", "False")],
                     "a2": [("Assigned", "False"), ("Ready", "False")]}
    assert carrier.shown == [server.objects["a1"]]
    reconciler.account_event("MODIFIED", copy.deepcopy(server.objects["a1"]))
    await run_due(reconciler)
    assert server.writes == ["1", "1"]  # Pending is right: nothing written, nothing carried


async def test_many_events_while_queued_make_one_pass(shell: Any) -> None:
    _, kube, reconciler = shell
    for _ in range(20):
        reconciler.account_event("MODIFIED", account("a1"))
    reconciler.account_event("MODIFIED", account("a2"))
    assert await run_due(reconciler) == 2
    assert kube.writes == 2


async def test_a_deleted_account_is_forgotten_with_its_pending_work(shell: Any) -> None:
    clock, kube, reconciler = shell
    reconciler.account_event(None, account("a1"))
    await run_due(reconciler)  # fails: a retry is scheduled
    reconciler.account_event("DELETED", account("a1"))
    clock.advance(600)
    assert await run_due(reconciler) == 0
    assert kube.writes == 1


async def test_a_full_garbage_collection_follows_a_burst_never_a_quiet_spell(
    shell: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, reconciler = shell
    collections = []
    monkeypatch.setattr("controller.reconciler.gc.collect", lambda: collections.append(1))
    for i in range(1999):
        reconciler.account_event(None, account(f"a{i}"))
    await run_due(reconciler)
    reconciler._collect_garbage()
    assert collections == []  # not a burst yet
    reconciler.account_event(None, account("a1999"))
    await run_due(reconciler)
    reconciler._collect_garbage()
    reconciler._collect_garbage()  # nothing ran since
    assert collections == [1]
