"""The work-queue shell end to end: no finalizer on accounts (deleting one never waits for
the operator, and the previous version's finalizer is removed), and a burst of 1,000
accounts on 3 pods converges with exactly one start per account, started in waves."""

from __future__ import annotations

import concurrent.futures

import pytest

from controller import api
from devtools.harness import Accounts, Fleet, all_connected, running_operator, wait_for
from devtools.harness import operator_settings as settings

pytestmark = pytest.mark.integration


def finalizers(accounts: Accounts) -> dict[str, list[str]]:
    return {n: a["metadata"].get("finalizers") or [] for n, a in accounts.all().items()}


def test_accounts_deleted_while_the_operator_is_stopped_go_at_once(
    namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    fleet.add("wa-0", auto_pair=0.2)
    with running_operator(settings(namespace)):
        for i in range(5):
            accounts.create(f"d{i}")
        wait_for("5 accounts Connected", lambda: all_connected(accounts, 5))
    assert finalizers(accounts) == {f"d{i}": [] for i in range(5)}
    for i in range(5):  # the operator is gone: nothing may hold the deletions up
        accounts.custom.delete_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.PLURAL, f"d{i}")
    wait_for("the accounts gone", lambda: accounts.all() == {}, timeout=5)


def test_the_previous_versions_finalizer_is_removed_at_start(
    namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    fleet.add("wa-0", auto_pair=0.2)
    for i in range(3):  # as the daemon-per-account version left them
        accounts.custom.create_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.PLURAL, {
                "apiVersion": api.API_VERSION, "kind": api.KIND,
                "metadata": {"name": f"old{i}", "finalizers": [api.LEGACY_FINALIZER]},
                "spec": {"sessionId": f"old{i}"}})
    # One was deleted while no operator ran: it waits for its finalizer.
    accounts.custom.delete_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.PLURAL, "old2")
    assert "old2" in accounts.all()
    with running_operator(settings(namespace)):
        wait_for("the finalizer gone and old2 deleted",
                 lambda: finalizers(accounts) == {"old0": [], "old1": []})
        wait_for("old0 and old1 Connected", lambda: all_connected(accounts, 2))
    for name in ("old0", "old1"):
        accounts.custom.delete_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.PLURAL, name)
    wait_for("the accounts gone", lambda: accounts.all() == {}, timeout=5)


def test_a_burst_of_1000_accounts_on_3_pods_starts_each_session_exactly_once(
    namespace: str, fleet: Fleet, accounts: Accounts
) -> None:
    sims = [fleet.add(f"wa-{i}", capacity=400, auto_pair=0.2, create_delay=0.2)
            for i in range(3)]
    with running_operator(settings(namespace, probe_interval=2.0, starts_per_pod=3)):
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: accounts.create(f"b{i:04d}"), range(1000)))
        wait_for("1,000 accounts Connected", lambda: all_connected(accounts, 1000),
                 timeout=240, every=2.0)
    starts = [sim.starts() for sim in sims]
    assert sum(s["creates"] for s in starts) == 1000, [s["createdAgain"] for s in starts]
    assert sum(s["doubleCreates"] for s in starts) == 0
    assert sorted(len(sim.sessions()) for sim in sims) == [333, 333, 334]
    # In waves: every pod launched as many browsers at once as allowed, never more.
    assert [s["peakConcurrentCreates"] for s in starts] == [3, 3, 3]
