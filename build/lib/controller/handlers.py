"""Every kopf handler, in one place. Each one is thin: it hands the event to domain code.

All are `async def`: kopf runs plain functions in threads, away from the event loop
the domain code lives on.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from controller import api
from controller.services import Services
from controller.settings import Settings

PREFIX = "wa-controller.io"


def build_registry(config: Settings) -> kopf.OperatorRegistry:
    """The handlers for one configuration (kopf reads selectors at registration)."""
    registry = kopf.OperatorRegistry()
    waaccounts = (api.GROUP, api.VERSION, api.PLURAL)
    instance_labels = config.selector_labels

    @kopf.on.startup(registry=registry)
    async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        settings.persistence.finalizer = f"{PREFIX}/finalizer"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=PREFIX, key="last-handled-configuration"
        )
        settings.posting.level = logging.INFO
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        memo.services = await Services.start(config)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # In a pod: its service account; outside: $KUBECONFIG (read at login, not import).
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.cleanup(registry=registry)
    async def stop(memo: kopf.Memo, **_: Any) -> None:
        if "services" in memo:
            await memo.services.close()

    # Indexing the instance pods makes kopf hold every other handler until the
    # pods are all listed: no account decides before the fleet is known.
    @kopf.index("pods", labels=instance_labels, registry=registry)
    async def instance_pods(name: str, **_: Any) -> str:
        return name

    @kopf.on.event("pods", labels=instance_labels, registry=registry)
    async def instance_pod_changed(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        memo.services.observer.pod_event(event.get("type"), event["object"])

    @kopf.on.event(*waaccounts, registry=registry)
    async def account_changed(event: kopf.RawEvent, uid: str, namespace: str, name: str,
                              annotations: kopf.Annotations, memo: kopf.Memo, **_: Any) -> None:
        reconciler = memo.services.reconciler
        reconciler.poke(uid)
        reconciler.rediscover_marked(namespace, name, uid, annotations,
                                     deleted=event.get("type") == "DELETED")
        memo.services.mirror.observe(event.get("type"), event["object"])
        memo.services.census.observe(event.get("type"), event["object"])

    @kopf.daemon(*waaccounts, registry=registry, cancellation_timeout=10)
    async def account_loop(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        await memo.services.reconciler.run_account(body)

    return registry
