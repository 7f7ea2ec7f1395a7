"""The controller's own API calls against the real API server."""

from __future__ import annotations

import concurrent.futures

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from controller.kube import Kube
from devtools.apiproxy import ApiProxy
from devtools.harness import Accounts

pytestmark = pytest.mark.integration


async def test_account_uids_reads_every_page(namespace: str, accounts: Accounts) -> None:
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: accounts.create(f"u{i:04d}"), range(1203)))  # 3 pages
    kube = await Kube.connect()
    try:
        uids = await kube.account_uids([namespace])
    finally:
        await kube.close()
    assert uids == {item["metadata"]["uid"] for item in accounts.all().values()}
    assert len(uids) == 1203


async def test_a_caller_retrying_after_the_last_429_still_waits_as_asked(
    namespace: str, accounts: Accounts, proxy: ApiProxy
) -> None:
    """The client gives up after its attempts; the caller's own retry (a work queue's
    backoff, often shorter) must still wait as long as the last 429 asked."""
    accounts.create("throttled")
    proxy.throttle_every, proxy.retry_after = 1, 1  # every request refused
    kube = await Kube.connect()
    kube._attempts = 2
    try:
        for _ in range(2):
            with pytest.raises(ApiException) as refused:
                await kube.get_account(namespace, "throttled")
            assert refused.value.status == 429
    finally:
        await kube.close()
    gaps = [gap for kind, gap in proxy.retry_gaps if kind[1].endswith("/throttled")]
    assert len(gaps) == 3, gaps  # the retry inside each call, and the caller's retry
    assert [gap for gap in gaps if gap < proxy.retry_after - 0.1] == [], \
        "a request went out before the Retry-After of the one before it had passed"
