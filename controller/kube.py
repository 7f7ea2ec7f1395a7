"""The few Kubernetes API calls the controller makes itself (kopf makes the rest).

Every call goes through `_call`: an API server that throttles (429) or fails for a moment
(5xx) is waited for, as long as its `Retry-After` says or with jittered exponential
backoff, and retried a few times; throttling shows as a metric and one log line per
change, never as a stack trace per account, and never as a database failure.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any, TypeVar

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.client.rest import RESTResponse

from controller import api, metrics
from controller.workqueue import Backoff

logger = logging.getLogger("wa_controller.kube")
T = TypeVar("T")
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
USER_AGENT = f"wa-controller/{version('wa-controller')}"


def retry_delay(error: ApiException, attempt: int, *, base: float = 0.5, cap: float = 30.0,
                jitter: Callable[[], float] = random.random) -> float:
    """How long to wait before attempt `attempt + 1`: the server's `Retry-After` (seconds,
    capped) when it gives one, else exponential backoff with full jitter."""
    header = (error.headers or {}).get("Retry-After") if error.headers else None
    if header is not None:
        try:
            return min(cap, max(0.0, float(header)))
        except ValueError:
            pass  # an HTTP date: not worth parsing for a few seconds' wait
    return Backoff(base, cap).delay(attempt) * (0.5 + jitter() / 2)


class Kube:
    """An async API client: status patches guarded by resourceVersion, and Secret reads."""

    def __init__(self, api_client: client.ApiClient, *, attempts: int = 5) -> None:
        self._api_client = api_client
        # Its session trusts the environment: two thread hops per request (proxy variables,
        # ~/.netrc), ~10 % of the operator's CPU in a burst, for an API server reached
        # directly. kopf's own session does not trust it either.
        api_client.rest_client.pool_manager._trust_env = False
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._attempts = attempts
        self._throttled = False
        # When the API server last asked us to wait (429, Retry-After) until: every call
        # waits, not only the one refused (16 event posters would otherwise go on at once).
        self._not_before = 0.0

    async def _call(self, what: str, call: Callable[..., Awaitable[T]], *args: Any,
                    **kwargs: Any) -> T:
        """`call(*args, **kwargs)`, retried while the API server throttles or fails for a
        moment; any other answer (and the last retry's) is raised to the caller."""
        attempt = 0
        loop = asyncio.get_running_loop()
        while True:
            attempt += 1
            if (wait := self._not_before - loop.time()) > 0:
                await asyncio.sleep(wait)
            try:
                result = await call(*args, **kwargs)
            except ApiException as error:
                if error.status not in RETRIED_STATUSES:
                    raise
                delay = retry_delay(error, attempt)
                if error.status == 429:
                    # Even when this call gives up: the caller's own retry waits too.
                    self._not_before = max(self._not_before, loop.time() + delay)
                if attempt >= self._attempts:
                    raise
                reason = "throttled" if error.status == 429 else "server_error"
                metrics.API_RETRIES.labels(reason).inc()
                self._set_throttled(error.status == 429, what, error.status, delay)
                if error.status != 429:
                    await asyncio.sleep(delay)
                continue
            self._set_throttled(False, what, 200, 0.0)
            return result

    def _set_throttled(self, throttled: bool, what: str, status: int, delay: float) -> None:
        """One log line when the API server starts or stops throttling, not one per call."""
        metrics.API_THROTTLED.set(int(throttled))
        if throttled and not self._throttled:
            logger.warning("the API server is throttling requests (HTTP 429 on %s); "
                           "waiting %.1f s as it asks and retrying", what, delay)
        elif not throttled and self._throttled:
            logger.info("the API server accepts requests again")
        elif status >= 500:
            logger.debug("the API server answered %d on %s; retrying in %.1f s",
                         status, what, delay)
        self._throttled = throttled

    @classmethod
    async def connect(cls) -> Kube:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            # Read KUBECONFIG now: the library reads it once, at import.
            await config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
        configuration = client.Configuration.get_default_copy()
        # As many requests in flight as the reconciler's workers (32) and the mirror's
        # condition workers (16) make (the library's default, 5 per CPU, queued the writes
        # of a burst).
        configuration.connection_pool_maxsize = 48
        api_client = client.ApiClient(configuration)
        api_client.user_agent = USER_AGENT  # the API server's audit log names us
        return cls(api_client)

    @property
    def api_client(self) -> client.ApiClient:
        return self._api_client

    async def close(self) -> None:
        await self._api_client.close()

    async def patch_status(
        self, namespace: str, name: str, resource_version: str, status: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Merge-patch `status` if the object is still at `resource_version`.

        Returns the object as written (its watch event may come much later), or None on a
        conflict (someone wrote in between: decide again on the fresh object) or when the
        object is gone.
        """
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        try:
            written: dict[str, Any] = await self._call(
                "a status patch", self._custom.patch_namespaced_custom_object_status,
                api.GROUP, api.VERSION, namespace, api.PLURAL, name, body,
                _content_type="application/merge-patch+json",
            )
        except ApiException as error:
            if error.status in (404, 409):
                return None
            raise
        return written

    async def get_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One WAAccount as it is now (None when it is gone)."""
        try:
            found: dict[str, Any] = await self._call(
                "an account read", self._custom.get_namespaced_custom_object,
                api.GROUP, api.VERSION, namespace, api.PLURAL, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return found

    async def post_event(self, namespace: str, event: dict[str, Any]) -> None:
        """Create one core/v1 Event."""
        await self._call("an event", self._create_event, namespace, event)

    async def _create_event(self, namespace: str, event: dict[str, Any]) -> None:
        # The answer is read but not turned into a V1Event: parsing its timestamps with
        # dateutil was ~4 % of the operator's CPU in a burst, for an answer nobody reads.
        response = await self._core.create_namespaced_event(namespace, event,
                                                            _preload_content=False)
        async with response:
            data = await response.read()
            if not 200 <= response.status <= 299:
                raise ApiException(http_resp=RESTResponse(response, data))

    async def apply_condition(self, namespace: str, name: str, manager: str,
                              condition: dict[str, Any]) -> dict[str, Any] | None:
        """Server-side apply one condition as `manager`: the other conditions, owned by
        others, are left as they are, so no resourceVersion is needed. Returns the object
        as written (None when it is gone)."""
        body = {"apiVersion": api.API_VERSION, "kind": api.KIND,
                "metadata": {"name": name, "namespace": namespace},
                "status": {"conditions": [condition]}}
        try:
            written: dict[str, Any] = await self._call(
                "a condition apply", self._custom.patch_namespaced_custom_object_status,
                api.GROUP, api.VERSION, namespace, api.PLURAL, name, body,
                field_manager=manager, force=True,
                _content_type="application/apply-patch+yaml")
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return written

    async def remove_finalizer(self, namespace: str, name: str, finalizer: str) -> None:
        """Take `finalizer` off a WAAccount, guarded by resourceVersion (retried on races)."""
        args = (api.GROUP, api.VERSION, namespace, api.PLURAL, name)
        for _ in range(5):
            try:
                body = await self._call("a WAAccount read",
                                        self._custom.get_namespaced_custom_object, *args)
                metadata = body.get("metadata") or {}
                finalizers = metadata.get("finalizers") or []
                if finalizer not in finalizers:
                    return
                await self._call("a finalizer removal",
                                 self._custom.patch_namespaced_custom_object, *args, {"metadata": {
                    "resourceVersion": metadata["resourceVersion"],
                    "finalizers": [f for f in finalizers if f != finalizer]}},
                    _content_type="application/merge-patch+json")
                return
            except ApiException as error:
                if error.status == 404:
                    return
                if error.status != 409:
                    raise

    async def remove_annotation(self, namespace: str, name: str, key: str) -> None:
        """Take one annotation off a WAAccount (gone already: nothing to do)."""
        try:
            await self._call("an annotation removal",
                             self._custom.patch_namespaced_custom_object,
                             api.GROUP, api.VERSION, namespace, api.PLURAL, name,
                             {"metadata": {"annotations": {key: None}}},
                             _content_type="application/merge-patch+json")
        except ApiException as error:
            if error.status != 404:
                raise

    async def peering(self, name: str, namespace: str | None) -> dict[str, Any] | None:
        """kopf's peering object (namespaced, or cluster-wide when `namespace` is None)."""
        try:
            if namespace is None:
                return await self._call("a peering read", self._custom.get_cluster_custom_object,
                                        "kopf.dev", "v1", "clusterkopfpeerings", name)
            return await self._call("a peering read", self._custom.get_namespaced_custom_object,
                                    "kopf.dev", "v1", namespace, "kopfpeerings", name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def list_accounts(self, namespaces: list[str]) -> list[dict[str, Any]]:
        """Every WAAccount in the namespaces (all namespaces when empty), as plain dicts."""
        args = (api.GROUP, api.VERSION)
        if not namespaces:
            answers = [await self._call("a WAAccount list",
                                        self._custom.list_cluster_custom_object, *args,
                                        api.PLURAL)]
        else:
            answers = [await self._call("a WAAccount list",
                                        self._custom.list_namespaced_custom_object, *args, ns,
                                        api.PLURAL)
                       for ns in namespaces]
        return [item for answer in answers for item in answer["items"]]

    async def account_uids(self, namespaces: list[str]) -> set[str]:
        """The uid of every WAAccount in the namespaces (all when empty), read 500 at a time:
        never all 10,000 objects in memory at once for what is a set of strings."""
        uids: set[str] = set()
        for namespace in namespaces or [None]:
            token = None
            while True:
                page = await (self._call(
                    "a WAAccount list", self._custom.list_cluster_custom_object,
                    api.GROUP, api.VERSION, api.PLURAL, limit=500, _continue=token)
                    if namespace is None else self._call(
                        "a WAAccount list", self._custom.list_namespaced_custom_object,
                        api.GROUP, api.VERSION, namespace, api.PLURAL, limit=500,
                        _continue=token))
                uids.update(str(item["metadata"]["uid"]) for item in page["items"])
                token = page["metadata"].get("continue")
                if not token:
                    break
        return uids

    async def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's values, decoded, or None when the Secret is absent."""
        try:
            secret = await self._call("a Secret read", self._core.read_namespaced_secret,
                                      name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return {key: base64.b64decode(raw).decode() for key, raw in (secret.data or {}).items()}

    async def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """One value of a Secret, or None when the Secret or the key is absent."""
        return ((await self.secret_data(namespace, name)) or {}).get(key)

    async def missing_namespaces(self, namespaces: list[str]) -> set[str]:
        """Which of `namespaces` do not exist (listed by name: `list` is all RBAC grants)."""
        missing = set()
        for namespace in namespaces:
            answer = await self._call("a namespace list", self._core.list_namespace,
                                      field_selector=f"metadata.name={namespace}")
            if not answer.items:
                missing.add(namespace)
        return missing
