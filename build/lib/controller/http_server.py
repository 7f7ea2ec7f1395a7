"""The operator's own HTTP endpoints, each on its own port: `/metrics`, and the webhooks."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest


class HttpServer:
    """One aiohttp application on one port, started and stopped with the operator."""

    def __init__(self, app: web.Application, port: int,
                 host: str = "0.0.0.0") -> None:  # noqa: S104 - reached in-cluster
        self._app, self._port, self._host = app, port, host
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def metrics_app() -> web.Application:
    async def scrape(_: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app
