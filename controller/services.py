"""The operator's long-lived parts, built once at startup and closed at cleanup."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from controller.http_server import HttpServer, metrics_app
from controller.instances import InstanceHttp
from controller.kube import Kube
from controller.metrics import PhaseCensus
from controller.mirror import Mirror, MirrorStore, engine_for
from controller.observer import Observer
from controller.peering import PeeringGate
from controller.reconciler import Reconciler
from controller.relay import Destination, Relay, RelayLimits
from controller.secrets import SecretValue
from controller.settings import Settings
from controller.webhooks import WebhookLimits, WebhookReceiver


def relay_destinations(kube: Kube, settings: Settings
                       ) -> Callable[[str], Awaitable[Destination | None]]:
    """Where each namespace's events go: its relay Secret, re-read every 10 s (a rotated
    secret or a new URL is in force within seconds; a deleted Secret stops the relay)."""
    cache: dict[str, tuple[float, Destination | None]] = {}

    async def destination(namespace: str) -> Destination | None:
        now = time.monotonic()
        cached = cache.get(namespace)
        if cached is not None and now - cached[0] < 10.0:
            return cached[1]
        url = await kube.secret_value(namespace, settings.relay_secret, "url")
        secret = await kube.secret_value(namespace, settings.relay_secret, "hmac-secret")
        found = Destination(url, secret) if url and secret else None
        cache[namespace] = (now, found)
        return found

    return destination


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

    @classmethod
    async def start(cls, settings: Settings) -> Services:
        kube = await Kube.connect()
        http = InstanceHttp(timeout=settings.probe_timeout, max_body=settings.max_inventory_bytes)

        def secret(name: str, key: str) -> SecretValue:
            async def read() -> str | None:
                return await kube.secret_value(settings.operator_namespace, name, key)
            return SecretValue(read, f"Secret {settings.operator_namespace}/{name} key {key}")

        gate = PeeringGate(
            None if settings.peering is None else functools.partial(
                kube.peering, settings.peering,
                settings.namespaces[0] if settings.namespaces else None),
            settings.priority or 0,
        )
        observer = Observer(
            http=http,
            api_key=secret(settings.api_key_secret, settings.api_key_secret_key),
            defaults=settings.instance_defaults,
            interval=settings.probe_interval,
            failure_threshold=settings.probe_failure_threshold,
            pending_ttl=settings.start_grace,
            timeouts=settings.call_timeouts,
            active=gate.active,
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
        )
        observer.subscribe(reconciler.fleet_changed)

        def resume() -> None:
            observer.poke_all()
            reconciler.resume()

        gate.start(resume)
        mirror = Mirror(
            MirrorStore(engine_for(settings.database_url.get_secret_value()),
                        settings.mirror_table, settings.notify_channel or None),
            list_accounts=lambda: kube.list_accounts(settings.namespaces),
            patch_status=kube.patch_status,
            migrate=settings.database_migrate,
            retry_max=settings.mirror_retry_max,
            on_deleted=reconciler.sessions_deleted,
        )
        mirror.start()
        servers = []
        if settings.metrics_port is not None:
            servers.append(HttpServer(metrics_app(), settings.metrics_port))
        relay = Relay(relay_destinations(kube, settings), RelayLimits(
            max_events=settings.relay_queue_max, max_bytes=settings.relay_queue_bytes,
            attempts=settings.relay_attempts, timeout=settings.relay_timeout))
        if settings.webhook_port is not None:
            receiver = WebhookReceiver(
                observer=observer, reconciler=reconciler,
                hmac_secret=secret(settings.webhook_secret, settings.webhook_hmac_key),
                rediscover_token=secret(settings.webhook_secret, settings.rediscover_token_key),
                limits=WebhookLimits(
                    max_body=settings.webhook_max_body, max_age=settings.webhook_max_age,
                    rate=settings.webhook_rate, burst=settings.webhook_burst,
                    replay_window=settings.webhook_replay_window),
                relay=relay,
            )
            servers.append(HttpServer(receiver.app(), settings.webhook_port))
        for server in servers:
            await server.start()
        return cls(settings, kube, http, observer, reconciler, mirror, servers, PhaseCensus(),
                   gate, relay)

    async def close(self) -> None:
        for server in self.servers:
            await server.close()
        await self.gate.close()
        await self.relay.close()
        await self.reconciler.close()
        await self.mirror.close()
        await self.observer.close()
        await self.http.aclose()
        await self.kube.close()
