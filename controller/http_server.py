"""The operator's own HTTP endpoints, each on its own port: `/healthz`, `/metrics`, and the
webhooks. Their sockets are bound before the operator acts (`bind_listeners`), so a port
that is taken or an address that is not this host's is a clear exit at start, never a
half-started process that already writes."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

LISTENER_SETTINGS = ("liveness_port", "metrics_port", "webhook_port")


class ListenerError(Exception):
    """A listener could not be bound: the message names the setting."""


@dataclass
class Listeners:
    """Bound (not yet served) sockets, by the setting that names their port."""

    sockets: dict[str, socket.socket]

    def take(self, setting: str) -> socket.socket | None:
        return self.sockets.pop(setting, None)

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()


def bind_listeners(address: str, ports: dict[str, int | None]) -> Listeners:
    """Bind every configured port on `address` now (`ports`: setting name -> port)."""
    bound = Listeners({})
    for setting, port in ports.items():
        if port is None:
            continue
        try:
            sock = socket.create_server(
                (address, port), family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                backlog=128, dualstack_ipv6=address == "::" and socket.has_dualstack_ipv6())
        except OSError as error:
            bound.close()
            why = os.strerror(error.errno) if error.errno else str(error)
            raise ListenerError(f"{setting}: cannot listen on {address} port {port}: {why}"
                                ) from None
        bound.sockets[setting] = sock
    return bound


class HttpServer:
    """One aiohttp application on one bound socket, served with the operator."""

    def __init__(self, app: web.Application, sock: socket.socket) -> None:
        self._app, self._sock = app, sock
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._sock.close()


def metrics_app() -> web.Application:
    async def scrape(_: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app


def health_app() -> web.Application:
    """`/healthz` (liveness and readiness): served once every other part is up, and
    answered on the event loop, so an answer says the loop is not stuck."""
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/healthz", health)
    return app
