"""How the command-line tools (`import`, `status`) reach the API server: in a pod its
service account, elsewhere `$KUBECONFIG` (as kubectl does), which namespace is meant
when none is given, and what the API server said when it refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


# What a call raises when the API server does not answer at all.
API_UNREACHABLE = (aiohttp.ClientError, TimeoutError)


class NoClusterError(RuntimeError):
    """Neither a service account nor a kubeconfig says how to reach the API server."""


def unreachable(error: BaseException) -> str:
    return f"the API server did not answer: {error or type(error).__name__}"


async def connect() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        files = _kubeconfig_files()
        try:
            await config.load_kube_config(config_file=files)
        except (config.ConfigException, OSError) as error:
            raise NoClusterError(f"the kubeconfig {files} cannot be used: {error}") from None
    return client.ApiClient()


def _kubeconfig_files() -> str:
    """$KUBECONFIG (read now: the library reads it once, at import), else kubectl's default;
    refused when no file of it exists (the library would only say the config is invalid)."""
    files = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    if not any(Path(f).exists() for f in files.split(os.pathsep) if f):
        raise NoClusterError(f"no Kubernetes configuration found: not in a pod, and no "
                             f"kubeconfig at {files} (set KUBECONFIG)")
    return files


def default_namespace() -> str:
    """The namespace kubectl would use: the pod's own, else the kubeconfig context's,
    else `default`."""
    if IN_CLUSTER_NAMESPACE.exists():
        return IN_CLUSTER_NAMESPACE.read_text().strip()
    try:
        _, current = config.list_kube_config_contexts(os.environ.get("KUBECONFIG"))
    except (config.ConfigException, OSError):
        return "default"
    return str(((current or {}).get("context") or {}).get("namespace") or "default")


def api_message(error: ApiException) -> str:
    """The API server's own sentence from a refusal."""
    return status_message(error.body, error.status, error.reason)


def status_message(body: str | bytes | None, status: int | None, reason: str | None = None
                   ) -> str:
    """The `message` of a Status the API server answered, else the HTTP status."""
    try:
        return str(json.loads(body or "")["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status} {reason or ''}".strip()
