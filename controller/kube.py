"""The few Kubernetes API calls the controller makes itself (kopf makes the rest)."""

from __future__ import annotations

import base64
import os
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from controller import api


class Kube:
    """An async API client: status patches guarded by resourceVersion, and Secret reads."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._api_client = api_client
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)

    @classmethod
    async def connect(cls) -> Kube:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            # Read KUBECONFIG now: the library reads it once, at import.
            await config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
        return cls(client.ApiClient())

    async def close(self) -> None:
        await self._api_client.close()

    async def patch_status(
        self, namespace: str, name: str, resource_version: str, status: dict[str, Any]
    ) -> bool:
        """Merge-patch `status` if the object is still at `resource_version`.

        Returns False on a conflict (someone wrote in between: decide again on the
        fresh object) or when the object is gone.
        """
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        try:
            await self._custom.patch_namespaced_custom_object_status(
                api.GROUP, api.VERSION, namespace, api.PLURAL, name, body,
                _content_type="application/merge-patch+json",
            )
        except ApiException as error:
            if error.status in (404, 409):
                return False
            raise
        return True

    async def remove_finalizer(self, namespace: str, name: str, finalizer: str) -> None:
        """Take `finalizer` off a WAAccount, guarded by resourceVersion (retried on races)."""
        args = (api.GROUP, api.VERSION, namespace, api.PLURAL, name)
        for _ in range(5):
            try:
                body = await self._custom.get_namespaced_custom_object(*args)
                metadata = body.get("metadata") or {}
                finalizers = metadata.get("finalizers") or []
                if finalizer not in finalizers:
                    return
                await self._custom.patch_namespaced_custom_object(*args, {"metadata": {
                    "resourceVersion": metadata["resourceVersion"],
                    "finalizers": [f for f in finalizers if f != finalizer]}},
                    _content_type="application/merge-patch+json")
                return
            except ApiException as error:
                if error.status == 404:
                    return
                if error.status != 409:
                    raise

    async def peering(self, name: str, namespace: str | None) -> dict[str, Any] | None:
        """kopf's peering object (namespaced, or cluster-wide when `namespace` is None)."""
        try:
            if namespace is None:
                return await self._custom.get_cluster_custom_object(
                    "kopf.dev", "v1", "clusterkopfpeerings", name)
            return await self._custom.get_namespaced_custom_object(
                "kopf.dev", "v1", namespace, "kopfpeerings", name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def list_accounts(self, namespaces: list[str]) -> list[dict[str, Any]]:
        """Every WAAccount in the namespaces (all namespaces when empty), as plain dicts."""
        args = (api.GROUP, api.VERSION)
        if not namespaces:
            answers = [await self._custom.list_cluster_custom_object(*args, api.PLURAL)]
        else:
            answers = [await self._custom.list_namespaced_custom_object(*args, ns, api.PLURAL)
                       for ns in namespaces]
        return [item for answer in answers for item in answer["items"]]

    async def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """One value of a Secret, or None when the Secret or the key is absent."""
        try:
            secret = await self._core.read_namespaced_secret(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        raw = (secret.data or {}).get(key)
        return base64.b64decode(raw).decode() if raw is not None else None
