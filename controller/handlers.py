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


def build_registry(config: Settings) -> kopf.OperatorRegistry:
    """The handlers for one configuration (kopf reads selectors at registration)."""
    registry = kopf.OperatorRegistry()
    waaccounts = (api.GROUP, api.VERSION, api.PLURAL)
    instance_labels = config.selector_labels

    @kopf.on.startup(registry=registry)
    async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        settings.persistence.finalizer = api.LEGACY_FINALIZER  # kopf adds none: no daemons
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix=api.GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=api.GROUP, key="last-handled-configuration"
        )
        # kopf keeps a task per object only while its events are processed: let them go.
        settings.queueing.idle_timeout = 1.0
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

    # Accounts are records fed by their watch events and served by the work queue: no
    # daemon and so no finalizer per account.
    @kopf.on.event(*waaccounts, registry=registry)
    async def account_changed(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        memo.services.reconciler.account_event(event.get("type"), event["object"])
        memo.services.mirror.observe(event.get("type"), event["object"])
        memo.services.census.observe(event.get("type"), event["object"])

    return registry
