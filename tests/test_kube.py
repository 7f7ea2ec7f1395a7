"""The controller's own API calls against the real API server."""

from __future__ import annotations

import concurrent.futures

import pytest
from kubernetes import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from controller.kube import Kube, retry_delay
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


async def test_an_event_is_posted_and_a_refused_one_raises_the_api_servers_answer(
    namespace: str, core: k8s.CoreV1Api
) -> None:
    """Events are posted without parsing the answer: a refusal must still be an error
    (the recorder logs it), never a silent success."""
    involved = {"apiVersion": "v1", "kind": "Pod", "name": "wa-0", "namespace": namespace}
    event = {"metadata": {"generateName": "wa-0.", "namespace": namespace},
             "involvedObject": involved, "type": "Normal", "reason": "Placed",
             "message": "placed on wa-0", "source": {"component": "wa-controller"},
             "firstTimestamp": "2026-12-02T00:00:00Z", "lastTimestamp": "2026-12-02T00:00:00Z",
             "count": 1}
    elsewhere = {**event, "involvedObject": {**involved, "namespace": "another"}}
    kube = await Kube.connect()
    try:
        await kube.post_event(namespace, event)
        with pytest.raises(ApiException) as refused:
            await kube.post_event(namespace, elsewhere)  # the object is in another namespace
    finally:
        await kube.close()
    assert refused.value.status == 422
    assert b"does not match" in refused.value.body
    posted = core.list_namespaced_event(namespace).items
    assert [(e.reason, e.message, e.involved_object.name) for e in posted] == [
        ("Placed", "placed on wa-0", "wa-0")]


@pytest.mark.parametrize(("headers", "attempt", "jitter", "expected"), [
    (None, 1, 1.0, 0.5),  # no Retry-After: base, doubled per attempt, full jitter at most
    (None, 3, 1.0, 2.0),
    (None, 3, 0.0, 1.0),  # at least half
    (None, 10, 1.0, 30.0),  # capped
    ({"Retry-After": "7"}, 1, 0.0, 7.0),  # the server's word, without jitter
    ({"Retry-After": "600"}, 1, 0.0, 30.0),  # capped
    ({"Retry-After": "Wed, 02 Dec 2026 10:00:00 GMT"}, 2, 1.0, 1.0),  # a date: backoff
])
def test_the_wait_before_a_retry_is_the_servers_or_a_jittered_capped_backoff(
    headers: dict[str, str] | None, attempt: int, jitter: float, expected: float
) -> None:
    error = ApiException(status=429)
    error.headers = headers
    assert retry_delay(error, attempt, jitter=lambda: jitter) == expected
