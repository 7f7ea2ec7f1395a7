"""The fast path, on its own port: instance webhooks and on-demand rediscovery.

`POST /webhooks` (and blazz's fixed `/api/whatsapp/webhooks/webjs`): an instance says
something happened. The sender is the instance pod at the connection's source address,
never what the request claims about itself; the pod's protocol adapter checks the
signature (or, for pods that opted in, trusts the address); a valid event re-probes that
pod at once, which wakes the accounts whose sessions changed there, and goes on to the
application through the relay.

`POST /rediscover/{namespace}/{name}` (`Authorization: Bearer <token>`): an application
whose send failed asks for one account to be re-checked across pods now.

Every refusal changes nothing, is counted in `wa_controller_webhooks_total{result}` and
logged once per source and reason per minute, so a flood cannot flood the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from aiohttp import web

from controller import metrics
from controller.fleet import PodView
from controller.instances import PROTOCOLS, InstanceAdapter, InstanceEvent, WebhookRejected
from controller.observer import Observer
from controller.reconciler import Reconciler
from controller.relay import Relay, RelayedEvent
from controller.secrets import SecretValue, same_secret

logger = logging.getLogger("wa_controller.webhooks")


class RateLimiter:
    """A token bucket per source: `rate` requests a second on average, bursts of `burst`."""

    def __init__(self, rate: float, burst: float, max_sources: int = 4096) -> None:
        self._rate, self._burst, self._max_sources = rate, burst, max_sources
        self._buckets: dict[str, tuple[float, float]] = {}  # source -> (tokens, at); LRU order

    def allow(self, source: str, now: float) -> bool:
        tokens, at = self._buckets.pop(source, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        allowed = tokens >= 1
        self._buckets[source] = (tokens - 1 if allowed else tokens, now)
        if len(self._buckets) > self._max_sources:
            del self._buckets[next(iter(self._buckets))]  # the source heard from longest ago
        return allowed


class ReplayGuard:
    """Remembers delivered events for `ttl` seconds: the time after which a signed timestamp
    has expired anyway. Bounded: past `max_entries` the oldest are forgotten first."""

    def __init__(self, ttl: float, max_entries: int = 100_000) -> None:
        self._ttl, self._max_entries = ttl, max_entries
        self._seen: dict[str, float] = {}  # key -> when first seen, in arrival order

    def first_time(self, key: str, now: float) -> bool:
        """True the first time `key` is offered within the ttl (and remember it)."""
        seen_at = self._seen.get(key)
        if seen_at is not None and now - seen_at <= self._ttl:
            return False
        self._seen.pop(key, None)
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at <= self._ttl and len(self._seen) < self._max_entries:
                break
            del self._seen[oldest]
        self._seen[key] = now
        return True


def pods_at(source: str, pods: Iterable[PodView]) -> list[PodView]:
    """The instance pods whose IP is the request's source address."""
    return [pod for pod in pods if pod.ip is not None and pod.ip == source]


def sender_of(candidates: list[PodView], worker_id: str | None) -> list[PodView]:
    """Of the pods at the source address (several share it with hostNetwork), the one the
    signed event names as its worker; all of them when it names none of them."""
    named = [pod for pod in candidates if worker_id and pod.name == worker_id]
    return named or candidates


@dataclass(frozen=True)
class WebhookLimits:
    max_body: int  # bytes
    max_age: float  # seconds a signed timestamp stays valid
    rate: float  # requests per second per source
    burst: int
    replay_window: float = 10.0  # seconds an unsigned body without an id counts as a replay


class WebhookReceiver:
    def __init__(
        self, *, observer: Observer, reconciler: Reconciler, hmac_secret: SecretValue,
        rediscover_token: SecretValue, limits: WebhookLimits,
        relay: Relay | None = None, clock: Callable[[], float] = time.time,
    ) -> None:
        self._observer = observer
        self._reconciler = reconciler
        self._hmac_secret = hmac_secret
        self._rediscover_token = rediscover_token
        self._limits = limits
        self._clock = clock
        self._throttle = RateLimiter(limits.rate, limits.burst)
        self._replays = ReplayGuard(limits.max_age * 2)
        self._body_replays = ReplayGuard(limits.replay_window)
        self._relay = relay
        self._logged: dict[tuple[str, str], float] = {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self._limits.max_body)
        app.router.add_post("/webhooks", self._webhook)
        # blazz posts to ${LARAVEL_URL} plus this fixed path: accept it as it is.
        app.router.add_post("/api/whatsapp/webhooks/webjs", self._webhook)
        app.router.add_post("/rediscover/{namespace}/{name}", self._rediscover)
        return app

    async def _webhook(self, request: web.Request) -> web.Response:
        source = request.remote or ""
        refusal = self._admit(request, source)
        if refusal is not None:
            return refusal
        candidates = pods_at(source, self._observer.views())
        protocols = {pod.protocol for pod in candidates}
        if len(protocols) != 1:
            detail = (f"{source} is not an instance pod" if not candidates
                      else f"pods at {source} speak different protocols")
            return self._refuse(source, "unknown_sender", detail, 403)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(source, "too_large", "body over the size limit", 413)
        # Pods that opted in are trusted by their address (WAHA without a webhook key).
        unsigned_ok = all(pod.trusts_source_address for pod in candidates)
        secrets = await self._hmac_secret.accepted()  # the new one, then the previous
        if not secrets and not unsigned_ok:
            return self._refuse(source, "no_secret", "the webhook secret is not configured", 503)
        protocol = protocols.pop()
        try:
            event = self._verified(PROTOCOLS[protocol], request.headers, body,
                                   secrets or [""], unsigned_ok)
        except WebhookRejected as rejected:
            if rejected.reason == "bad_signature":
                await self._hmac_secret.refresh()  # maybe rotated just now: re-read it
            status = 400 if rejected.reason == "malformed" else 401
            return self._refuse(source, rejected.reason, str(rejected), status)
        if not self._reconciler.serving:
            return self._refuse(source, "standby", "this replica serves no accounts now", 503)
        replays = self._body_replays if event.replay_by_body else self._replays
        if not replays.first_time(event.replay_key, self._clock()):
            metrics.WEBHOOKS.labels("replayed").inc()
            return web.json_response({"result": "replayed"})
        senders = sender_of(candidates, event.worker_id)
        for pod in senders:
            self._observer.refresh(pod.namespace, pod.name)
        metrics.WEBHOOKS.labels("accepted").inc()
        if self._relay is not None:
            sender = senders[0]
            self._relay.offer(RelayedEvent(
                namespace=sender.namespace, session=event.session or "", protocol=protocol,
                name=event.name, body=body, pod=sender.name, instance_url=sender.url or "",
                content_type=request.headers.get("Content-Type", "application/json"),
                queued_at=time.monotonic()))
        logger.debug("webhook %s for session %s from %s", event.name, event.session,
                     ", ".join(f"{p.namespace}/{p.name}" for p in senders))
        return web.json_response({"result": "accepted", "pods": [p.name for p in senders]},
                                 status=202)

    def _verified(self, protocol: type[InstanceAdapter], headers: Mapping[str, str],
                  body: bytes, secrets: list[str], unsigned_ok: bool) -> InstanceEvent:
        """The event, verified with the first secret that signed it (during a rotation's
        overlap, the previous secret is tried after the current one)."""
        for index, secret in enumerate(secrets):
            try:
                return protocol.read_webhook(headers, body, secret, self._clock(),
                                             self._limits.max_age, unsigned_ok=unsigned_ok)
            except WebhookRejected as rejected:
                if rejected.reason != "bad_signature" or index == len(secrets) - 1:
                    raise
        raise AssertionError("unreachable: at least one secret is tried")

    async def _rediscover(self, request: web.Request) -> web.Response:
        source = request.remote or ""
        refusal = self._admit(request, source)
        if refusal is not None:
            return refusal
        token = await self._rediscover_token.get()
        if token is None:
            return self._refuse(source, "no_secret", "the rediscover token is not configured", 503)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not same_secret(given.strip(), token):
            await self._rediscover_token.refresh()  # maybe rotated just now: re-read it
            return self._refuse(source, "bad_token", "Authorization: Bearer <token> required", 401)
        if not self._reconciler.serving:
            return self._refuse(source, "standby", "this replica serves no accounts now", 503)
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        holders = await self._reconciler.rediscover(namespace, name, trigger="http")
        if holders is None:
            return web.json_response(
                {"result": "not_found", "detail": f"no WAAccount {namespace}/{name} served here"},
                status=404)
        return web.json_response({"result": "rediscovered", "namespace": namespace,
                                  "name": name, "observedOn": holders})

    def _admit(self, request: web.Request, source: str) -> web.Response | None:
        """Refuse before reading anything: too many requests, or a body declared too big."""
        if not self._throttle.allow(source, time.monotonic()):
            response = self._refuse(source, "throttled", "too many requests", 429)
            response.headers["Retry-After"] = "1"
            return response
        if (request.content_length or 0) > self._limits.max_body:
            return self._refuse(source, "too_large",
                                f"body over {self._limits.max_body} bytes", 413)
        return None

    def _refuse(self, source: str, reason: str, detail: str, status: int) -> web.Response:
        metrics.WEBHOOKS.labels(reason).inc()
        now = time.monotonic()
        if len(self._logged) > 4096:
            self._logged.clear()
        if now - self._logged.get((source, reason), -60.0) >= 60.0:
            self._logged[(source, reason)] = now
            logger.warning("refused a request from %s (%s): %s", source, reason, detail)
        return web.json_response({"result": reason, "detail": detail}, status=status)
