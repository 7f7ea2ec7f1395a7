"""The operator end to end: real API server, simulated instances on 127.0.0.x, KopfRunner."""

from __future__ import annotations

from collections import Counter

import pytest

from controller.settings import Settings
from tests.harness import Accounts, Fleet, running_operator, wait_for

pytestmark = pytest.mark.integration


def settings(namespace: str, **overrides: object) -> Settings:
    values = {
        "namespaces": [namespace], "operator_namespace": namespace, "probe_interval": 1.0,
        "probe_timeout": 1.0, "probe_failure_threshold": 2, "start_grace": 5.0,
        "liveness_port": None, **overrides,
    }
    return Settings(**values)


def placement(accounts: Accounts) -> Counter[str]:
    return Counter(
        (a.get("status") or {}).get("instance", {}).get("pod") for a in accounts.all().values()
    )


def placed_count(accounts: Accounts) -> int:
    return sum(n for pod, n in placement(accounts).items() if pod)


def held(fleet: Fleet) -> int:
    return sum(len(s.sessions()) for s in fleet.simulators.values())


def test_a_burst_of_accounts_spreads_evenly(namespace: str, fleet: Fleet, accounts: Accounts
                                           ) -> None:
    for name in ("wa-0", "wa-1", "wa-2"):
        fleet.add(name)
    with running_operator(settings(namespace)):
        for i in range(30):
            accounts.create(f"acc-{i:02d}")

        wait_for("30 accounts placed", lambda: placed_count(accounts) == 30)
        assert placement(accounts) == {"wa-0": 10, "wa-1": 10, "wa-2": 10}
        wait_for("the simulators to hold 30 sessions", lambda: held(fleet) == 30)
        assert {n: len(s.sessions()) for n, s in fleet.simulators.items()} == {
            "wa-0": 10, "wa-1": 10, "wa-2": 10}
