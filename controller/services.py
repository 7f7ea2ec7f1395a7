"""The operator's long-lived parts, built once at startup and closed at cleanup."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from controller import metrics
from controller.clock import Clock, SystemClock
from controller.events import EventRecorder
from controller.http_server import (
    LISTENER_SETTINGS,
    HttpServer,
    ListenerError,
    Listeners,
    bind_listeners,
    health_app,
    metrics_app,
)
from controller.instances import InstanceHttp
from controller.kube import Kube
from controller.metrics import PhaseCensus
from controller.mirror import ApplicationStore, Mirror, MirrorStore, engine_for
from controller.observer import Observer
from controller.peering import PeeringGate
from controller.rebalance import AutoRebalancer
from controller.reconciler import Reconciler
from controller.relay import Destination, Relay, RelayLimits
from controller.secrets import SecretValue
from controller.settings import Settings
from controller.webhooks import WebhookLimits, WebhookReceiver

logger = logging.getLogger("wa_controller.services")


RELAY_SECRET_MAX_AGE = 10.0  # seconds a namespace's relay Secret is used before re-reading


def relay_destinations(read: Callable[[str], Awaitable[Mapping[str, str] | None]],
                       clock: Clock | None = None
                       ) -> Callable[[str], Awaitable[Destination | None]]:
    """Where each namespace's events go: `read(namespace)` gives its relay Secret's data,
    re-read every 10 s (a rotated secret or a new URL is in force within seconds; a deleted
    Secret stops the relay). One read per namespace at a time: the relays waiting for it
    share its answer (a burst of events would otherwise read it once per event). A read
    that fails keeps what was known, logged once per namespace until it reads again."""
    clock = clock or SystemClock()
    cache: dict[str, tuple[float, Destination | None]] = {}
    locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
    failing: set[str] = set()

    def fresh(namespace: str) -> tuple[float, Destination | None] | None:
        cached = cache.get(namespace)
        if cached is not None and clock.monotonic() - cached[0] < RELAY_SECRET_MAX_AGE:
            return cached
        return None

    async def destination(namespace: str) -> Destination | None:
        if (cached := fresh(namespace)) is not None:
            return cached[1]
        async with locks[namespace]:
            if (cached := fresh(namespace)) is not None:
                return cached[1]  # read by another caller meanwhile
            known = cache.get(namespace, (0.0, None))[1]
            try:
                data = await read(namespace) or {}
            except Exception as error:  # the API server is away: keep what we know
                if namespace not in failing:
                    failing.add(namespace)
                    logger.warning("the relay Secret of namespace %s cannot be read (%s); "
                                   "relaying with what was read before", namespace,
                                   f"{type(error).__name__}: {error}"[:200])
                cache[namespace] = (clock.monotonic(), known)
                return known
            failing.discard(namespace)
            url, secret = data.get("url"), data.get("hmac-secret")
            found = Destination(url, secret) if url and secret else None
            cache[namespace] = (clock.monotonic(), found)
            return found

    return destination


def mirror_store(settings: Settings) -> MirrorStore | ApplicationStore:
    """The table the mirror writes: its own, or the application's."""
    engine = engine_for(settings.database_url.get_secret_value())
    if settings.mirror_mode == "application":
        return ApplicationStore(
            engine, settings.mirror_table, key_column=settings.application_key_column,
            url_column=settings.application_url_column,
            status_column=settings.application_status_column or None,
            words=settings.status_words)
    return MirrorStore(engine, settings.mirror_table, settings.notify_channel or None,
                       owner=settings.owner, namespaces=settings.namespaces)


def listeners_of(settings: Settings) -> Listeners:
    """Bind the operator's ports as the settings say (raises `ListenerError`)."""
    return bind_listeners(settings.bind_address,
                          {name: getattr(settings, name) for name in LISTENER_SETTINGS})


@dataclass
class Services:
    settings: Settings
    kube: Kube
    http: InstanceHttp
    observer: Observer
    reconciler: Reconciler
    mirror: Mirror
    servers: list[HttpServer]
    census: PhaseCensus
    gate: PeeringGate
    relay: Relay
    namespaces: ServedNamespaces
    events: EventRecorder
    rebalancer: AutoRebalancer | None

    @classmethod
    async def start(cls, settings: Settings, listeners: Listeners | None = None) -> Services:
        """Every part, in the order that lets nothing act before all can: the listeners
        are bound (by `wa-controller run` before kopf starts, else here), served, and only
        then does the mirror write."""
        if listeners is None:
            try:
                listeners = listeners_of(settings)
            except ListenerError as error:
                raise kopf.PermanentError(str(error)) from None
        kube = await Kube.connect()
        namespaces = ServedNamespaces(settings.namespaces)
        await namespaces.check(kube)
        # Nothing below fails on the way, so a retried startup never finds its sockets taken.
        http = InstanceHttp(timeout=settings.probe_timeout, max_body=settings.max_inventory_bytes)

        def secret(name: str, key: str, overlap: float = 0.0) -> SecretValue:
            async def read() -> str | None:
                return await kube.secret_value(settings.operator_namespace, name, key)
            return SecretValue(read, f"Secret {settings.operator_namespace}/{name} key {key}",
                               refresh_interval=settings.secret_refresh_interval,
                               overlap=overlap)

        gate = PeeringGate(
            None if settings.peering is None else functools.partial(
                kube.peering, settings.peering,
                settings.namespaces[0] if settings.namespaces else None),
            settings.priority or 0,
        )
        events = EventRecorder(kube.post_event)
        observer = Observer(
            http=http,
            api_key=secret(settings.api_key_secret, settings.api_key_secret_key),
            defaults=settings.instance_defaults,
            interval=settings.probe_interval,
            failure_threshold=settings.probe_failure_threshold,
            pending_ttl=settings.start_grace,
            timeouts=settings.call_timeouts,
            active=gate.active,
            starts_in_flight=settings.starts_in_flight,
            events=events,
        )
        reconciler = Reconciler(
            observer=observer, kube=kube, policy=settings.policy,
            resync_interval=settings.resync_interval,
            warmup_timeout=settings.probe_timeout * 2,
            rediscover_window=settings.rediscover_window,
            workers=settings.reconcile_workers,
            gate=gate,
            namespaces=settings.namespaces,
            sweep_interval=settings.probe_interval,
            stop_unmanaged=settings.stop_unmanaged_sessions,
            moves_in_flight=settings.moves_in_flight,
            starts_per_pod=settings.starts_per_pod,
            starts_in_flight=settings.starts_in_flight,
            start_spacing=settings.start_spacing,
            events=events,
        )
        observer.subscribe(reconciler.fleet_changed)

        def resume() -> None:
            observer.poke_all()
            reconciler.resume()

        gate.start(resume)

        async def apply_condition(namespace: str, name: str, manager: str,
                                  condition: dict[str, Any]) -> bool:
            written = await kube.apply_condition(namespace, name, manager, condition)
            if written is not None:
                reconciler.written_by_others(written)
            return written is not None

        mirror = Mirror(
            mirror_store(settings),
            list_accounts=lambda: kube.list_accounts(settings.namespaces),
            list_uids=lambda: kube.account_uids(settings.namespaces),
            apply_condition=apply_condition,
            migrate=settings.database_migrate,
            retry_max=settings.mirror_retry_max,
            resync_interval=settings.mirror_resync_interval,
            on_deleted=reconciler.sessions_deleted,
            events=events,
        )
        reconciler.carry(mirror)  # its Mirrored condition rides on status writes made anyway
        servers = []
        metrics_socket = listeners.take("metrics_port")
        if metrics_socket is not None:
            servers.append(HttpServer(metrics_app(), metrics_socket))
        relay = Relay(relay_destinations(
            functools.partial(kube.secret_data, name=settings.relay_secret)), RelayLimits(
            max_events=settings.relay_queue_max, max_bytes=settings.relay_queue_bytes,
            attempts=settings.relay_attempts, timeout=settings.relay_timeout))
        webhook_socket = listeners.take("webhook_port")
        if webhook_socket is not None:
            receiver = WebhookReceiver(
                observer=observer, reconciler=reconciler,
                hmac_secret=secret(settings.webhook_secret, settings.webhook_hmac_key,
                                   overlap=settings.webhook_secret_overlap),
                rediscover_token=secret(settings.webhook_secret, settings.rediscover_token_key),
                limits=WebhookLimits(
                    max_body=settings.webhook_max_body, max_age=settings.webhook_max_age,
                    rate=settings.webhook_rate, burst=settings.webhook_burst,
                    replay_window=settings.webhook_replay_window),
                relay=relay,
            )
            servers.append(HttpServer(receiver.app(), webhook_socket))
        health_socket = listeners.take("liveness_port")
        if health_socket is not None:
            servers.append(HttpServer(health_app(), health_socket))  # served once all is up
        for server in servers:
            await server.start()
        mirror.start()
        rebalancer = None
        if settings.auto_rebalance:
            rebalancer = AutoRebalancer(
                kube.api_client, namespaces=observer.namespaces,
                instance_selector=settings.instance_selector,
                threshold=settings.rebalance_threshold, interval=settings.rebalance_interval,
                default_capacity=settings.default_capacity,
                default_group=settings.default_storage_group, active=gate.active)
            rebalancer.start()
        return cls(settings, kube, http, observer, reconciler, mirror, servers, PhaseCensus(),
                   gate, relay, namespaces, events, rebalancer)

    async def close(self) -> None:
        for server in self.servers:
            await server.close()
        await self.gate.close()
        if self.rebalancer is not None:
            await self.rebalancer.close()
        await self.relay.close()
        await self.reconciler.close()
        await self.mirror.close()
        await self.observer.close()
        await self.events.close()
        await self.http.aclose()
        await self.kube.close()


class ServedNamespaces:
    """Says which served namespaces do not exist (a typo is otherwise silent): a warning per
    change and `wa_controller_namespace_missing`. Checked at start, then kept by the
    namespace watch. Their accounts are served once they appear: kopf watches them all
    along."""

    def __init__(self, namespaces: list[str]) -> None:
        self._served = frozenset(namespaces)
        self._missing: set[str] = set()

    async def check(self, kube: Kube) -> None:
        try:
            missing = await kube.missing_namespaces(sorted(self._served))
        except Exception as error:  # the watch will tell
            logger.warning("cannot check the served namespaces exist: %s", error)
            return
        for namespace in self._served:
            metrics.MISSING_NAMESPACES.labels(namespace).set(0)
        self._set(missing)

    def event(self, event_type: str | None, name: str) -> None:
        if name in self._served:
            self._set(self._missing | {name} if event_type == "DELETED"
                      else self._missing - {name})

    def _set(self, missing: set[str]) -> None:
        for namespace in sorted(missing - self._missing):
            logger.warning("served namespace %r does not exist; its WAAccounts are served "
                           "once it is created", namespace)
            metrics.MISSING_NAMESPACES.labels(namespace).set(1)
        for namespace in sorted(self._missing - missing):
            logger.info("served namespace %r exists now", namespace)
            metrics.MISSING_NAMESPACES.labels(namespace).set(0)
        self._missing = missing
