"""Every kopf handler, in one place. Each one is thin: it hands the event to domain code.

All are `async def`: kopf runs plain functions in threads, away from the event loop
the domain code lives on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import kopf

from controller import api
from controller.http_server import Listeners
from controller.services import Services
from controller.settings import Settings

# Connections kopf keeps to the API server at most: its watch streams, and the events and
# patches it posts (a few dozen in flight are as fast as hundreds, and far lighter).
KOPF_CONNECTIONS = 32


class NoDiffBase(kopf.DiffBaseStorage):
    """No handler here reacts to changes, only to events: kopf need not deep-copy every
    body it is sent to compare it with the last one (a tenth of its time per event)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


def bounded_session(info: kopf.ConnectionInfo) -> kopf.AiohttpSession:
    """kopf's session to the API server, as kopf builds it but with a connection limit.

    kopf posts the events of each object from a worker of its own: without a limit, a burst
    of placements opened a TLS connection per account at once (hundreds), slowing the API
    server and everyone's writes. Past the limit, requests wait for a free connection.
    """
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=KOPF_CONNECTIONS, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),  # the credentials: a token, or basic auth
        proxy=info.proxy_url, trust_env=info.trust_env)
    return kopf.AiohttpSession(server=info.server, default_namespace=info.default_namespace,
                               expiration=info.expiration, priority=info.priority,
                               aiohttp_session=session)


def build_registry(config: Settings, listeners: Listeners | None = None
                   ) -> kopf.OperatorRegistry:
    """The handlers for one configuration (kopf reads selectors at registration), with
    the listeners `wa-controller run` bound before starting kopf (else bound at startup)."""
    registry = kopf.OperatorRegistry()
    waaccounts = (api.GROUP, api.VERSION, api.PLURAL)
    instance_labels = config.selector_labels

    @kopf.on.startup(registry=registry)
    async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        settings.persistence.finalizer = api.LEGACY_FINALIZER  # kopf adds none: no daemons
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix=api.GROUP)
        settings.persistence.diffbase_storage = NoDiffBase()
        # kopf keeps a task per object only while its events are processed: let them go.
        settings.queueing.idle_timeout = 1.0
        settings.posting.level = logging.INFO
        settings.watching.server_timeout = 300
        # Listed 500 at a time: 10,000 accounts in one answer were ~100 MB at the start.
        settings.watching.chunk_size = 500
        settings.watching.client_timeout = 330
        memo.services = await Services.start(config, listeners)

    @kopf.on.login(registry=registry)
    async def login(**kwargs: Any) -> kopf.AiohttpSession | None:
        # In a pod: its service account; outside: $KUBECONFIG (read at login, not import).
        info = await asyncio.to_thread(lambda: kopf.login_with_service_account(**kwargs)
                                       or kopf.login_with_kubeconfig(**kwargs))
        return None if info is None else bounded_session(info)

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

    @kopf.on.event("namespaces", registry=registry)
    async def namespace_changed(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        memo.services.namespaces.event(event.get("type"), event["object"]["metadata"]["name"])

    # Accounts are records fed by their watch events and served by the work queue: no
    # daemon and so no finalizer per account.
    @kopf.on.event(*waaccounts, registry=registry)
    async def account_changed(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        memo.services.reconciler.account_event(event.get("type"), event["object"])
        memo.services.mirror.observe(event.get("type"), event["object"])
        memo.services.census.observe(event.get("type"), event["object"])

    return registry
