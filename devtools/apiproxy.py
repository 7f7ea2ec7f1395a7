"""A fault-injecting proxy between an operator and kube-apiserver, for tests.

It serves plain HTTP on loopback and forwards every request (watches streamed) to the
real API server over TLS. Faults are set on the object while it runs: `status_delay`
holds WAAccount status PATCHes for that many seconds before forwarding them (a slow
etcd, a busy API server); `throttle_every` answers every Nth request that is not a watch
with 429 and `Retry-After: retry_after` (an API server under priority-and-fairness), and
`retry_gaps` says how long each throttled request took to come back (the same method, path
with query, body type and user agent: one caller's retry). Only test tooling:
it is not part of the installed package.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from devtools.control_plane import ControlPlane, free_port

_HOP_BY_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "te", "trailer",
               "upgrade", "proxy-authorization", "proxy-authenticate", "content-length"}


class ApiProxy:
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.port = free_port()
        self.status_delay = 0.0
        self.held = 0  # status PATCHes that began waiting
        self.throttle_every = 0  # 0: never
        self.retry_after = 1
        self.throttled = 0  # 429s answered
        # Seconds from a 429 to the same kind of request again, by kind.
        self.retry_gaps: list[tuple[tuple[str, str, str, str], float]] = []
        self._requests = 0
        self._refused: dict[tuple[str, str, str, str], float] = {}  # kind -> when refused
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="api proxy", daemon=True)
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig that reaches the API server through this proxy."""
        path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: proxied, cluster: {{server: "{self.url}"}}}}]
users: [{{name: admin, user: {{token: "{self.plane.token}"}}}}]
contexts: [{{name: proxied, context: {{cluster: proxied, user: admin}}}}]
current-context: proxied
""")
        return path

    def __enter__(self) -> ApiProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the API proxy did not start")
        return self

    def __exit__(self, *_: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        tls = ssl.create_default_context(cafile=str(self.plane.ca_file))
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=tls, limit=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as upstream:
            app = web.Application(client_max_size=64 << 20)
            async def forward(request: web.Request) -> web.StreamResponse:
                return await self._forward(request, upstream)

            app.router.add_route("*", "/{path:.*}", forward)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

    async def _forward(self, request: web.Request, upstream: aiohttp.ClientSession
                       ) -> web.StreamResponse:
        if request.query.get("watch") not in ("true", "1"):
            # One caller's request: the same method, path and body type (a status merge
            # patch and a condition apply share a path, not a caller).
            key = (request.method, request.path_qs, request.content_type,
                   request.headers.get("User-Agent", ""))
            now = time.monotonic()
            refused_at = self._refused.pop(key, None)
            if refused_at is not None:
                self.retry_gaps.append((key, now - refused_at))
            self._requests += 1
            if self.throttle_every and self._requests % self.throttle_every == 0:
                self.throttled += 1
                self._refused[key] = now
                return web.json_response(
                    {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                     "reason": "TooManyRequests", "code": 429,
                     "message": "too many requests, please try again later"},
                    status=429, headers={"Retry-After": str(self.retry_after)})
        if request.method == "PATCH" and "/waaccounts/" in request.path \
                and request.path.endswith("/status"):
            self.held += 1
            await asyncio.sleep(self.status_delay)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        body = await request.read()
        async with upstream.request(request.method, f"{self.plane.server}{request.path_qs}",
                                    headers=headers, data=body or None) as answer:
            response = web.StreamResponse(status=answer.status, headers={
                k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP})
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
