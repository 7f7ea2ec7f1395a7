"""The operator's long-lived parts, built once at startup and closed at cleanup."""

from __future__ import annotations

from dataclasses import dataclass

from controller.instances import InstanceHttp
from controller.kube import Kube
from controller.metrics_server import MetricsServer
from controller.mirror import Mirror, MirrorStore, engine_for
from controller.observer import ApiKey, Observer
from controller.reconciler import Reconciler
from controller.settings import Settings


@dataclass
class Services:
    settings: Settings
    kube: Kube
    http: InstanceHttp
    observer: Observer
    reconciler: Reconciler
    mirror: Mirror
    metrics: MetricsServer | None

    @classmethod
    async def start(cls, settings: Settings) -> Services:
        kube = await Kube.connect()
        http = InstanceHttp(timeout=settings.probe_timeout)

        async def read_api_key() -> str | None:
            return await kube.secret_value(
                settings.operator_namespace, settings.api_key_secret, settings.api_key_secret_key
            )

        observer = Observer(
            http=http,
            api_key=ApiKey(read_api_key),
            defaults=settings.instance_defaults,
            interval=settings.probe_interval,
            failure_threshold=settings.probe_failure_threshold,
            pending_ttl=settings.start_grace,
        )
        reconciler = Reconciler(
            observer=observer, kube=kube, policy=settings.policy,
            resync_interval=settings.resync_interval,
            warmup_timeout=settings.probe_timeout * 2,
        )
        mirror = Mirror(
            MirrorStore(engine_for(settings.database_url.get_secret_value()),
                        settings.mirror_table, settings.notify_channel or None),
            list_accounts=lambda: kube.list_accounts(settings.namespaces),
            patch_status=kube.patch_status,
            migrate=settings.database_migrate,
            retry_max=settings.mirror_retry_max,
        )
        mirror.start()
        metrics = None
        if settings.metrics_port is not None:
            metrics = MetricsServer(settings.metrics_port)
            await metrics.start()
        return cls(settings, kube, http, observer, reconciler, mirror, metrics)

    async def close(self) -> None:
        if self.metrics is not None:
            await self.metrics.close()
        await self.mirror.close()
        await self.observer.close()
        await self.http.aclose()
        await self.kube.close()
