"""The reconciler's work queue shell with an injected clock: a pass that keeps failing
backs off exponentially and is logged once per change of reason, not on every retry."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from controller.decisions import Policy
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


def account(name: str) -> dict[str, Any]:
    return {"apiVersion": "wa-controller.io/v1alpha1", "kind": "WAAccount",
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}",
                         "resourceVersion": "1", "generation": 1},
            "spec": {"sessionId": name, "desiredState": "Connected"}, "status": {}}


async def no_key() -> str | None:
    return None


@pytest.fixture
async def shell() -> Any:
    clock, kube, active = FakeClock(), RefusingKube(), asyncio.Event()
    active.set()
    http = InstanceHttp(timeout=1)
    observer = Observer(http=http, api_key=SecretValue(no_key, "no key"),
                        defaults=InstanceDefaults(), interval=30, failure_threshold=3,
                        pending_ttl=60, active=active, clock=clock)
    reconciler = Reconciler(observer=observer, kube=kube, policy=Policy(),  # type: ignore[arg-type]
                            resync_interval=300, warmup_timeout=0, workers=0, clock=clock)
    yield clock, kube, reconciler
    await reconciler.close()
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
