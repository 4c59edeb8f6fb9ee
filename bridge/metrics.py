"""Prometheus metrics: what the bridge carries, how fast, and what goes wrong.

These are the interop KPIs BEREC asks of gatekeepers (latency, failures, refusals), seen
from the Partner's side, so that a provider can show the quality it gets. Names follow
mautrix-python's and the legacy WhatsApp bridge's where one fits (``bridge_connected``,
``bridge_logged_in``, ``remote_event_age``), prefixed ``dma_`` otherwise.

Each bridge has a registry of its own (a test process runs several); the series are
recorded by the parts that see the events, through the small methods below, and the
depths of the queues and the states of the logins are read when Prometheus scrapes.
Off by default: ``metrics.enabled`` serves ``/metrics`` on a port of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

TO_GATEKEEPER = "matrix_to_gatekeeper"
TO_MATRIX = "gatekeeper_to_matrix"
# From a message's arrival at one edge to its acknowledgement at the other.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

Refresh = Callable[["Metrics"], Awaitable[None]]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter(
            "dma_messages",
            "Messages bridged, by direction, kind (text, media, reaction, revoke) and outcome (bridged, failed).",
            ["direction", "kind", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "dma_hop_latency_seconds",
            "From a message's arrival at one edge to its acknowledgement by the other side: stored by the gatekeeper "
            "(matrix_to_gatekeeper) or posted by the homeserver (gatekeeper_to_matrix).",
            ["direction"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decryption_failures = Counter(
            "dma_decryption_failures",
            "Messages that did not decrypt on arrival, by leg (matrix: Megolm; gatekeeper: Signal).",
            ["leg"],
            registry=r,
        )
        self.refusals = Counter(
            "dma_gatekeeper_refusals",
            "The gatekeeper's refusals of our messages, by GIP code (403 not reachable, 409 stale devices, 429 rate "
            "limited, ...).",
            ["code"],
            registry=r,
        )
        self.retry_receipts = Counter(
            "dma_retry_receipts",
            "Signal retry receipts: sent (we asked a peer to send again) and received (a peer asked us).",
            ["direction"],
            registry=r,
        )
        self.pushes = Counter("dma_push_wakeups", "Pushes from the gatekeeper (messages wait for a user).", registry=r)
        self.connections = Gauge(
            "bridge_connected", "Users' chat connections to the gatekeeper, by state.", ["state"], registry=r
        )
        self.logins = Gauge("bridge_logged_in", "Logins, by state (enlisted, revoked, ...).", ["state"], registry=r)
        self.outbox_depth = Gauge("dma_outbox_depth", "Messages stored for the gatekeeper, not yet sent.", registry=r)
        self.inbox_depth = Gauge("dma_inbox_depth", "Messages stored for Matrix, not yet posted.", registry=r)
        self._refresh: Refresh | None = None

    # ------------------------------------------------------------------ recorded where they happen

    def bridged(self, direction: str, kind: str, seconds: float | None = None) -> None:
        self.messages.labels(direction, kind, "bridged").inc()
        if seconds is not None:
            self.latency.labels(direction).observe(max(0.0, seconds))

    def failed(self, direction: str, kind: str) -> None:
        self.messages.labels(direction, kind, "failed").inc()

    def refused(self, code: str) -> None:
        self.refusals.labels(code).inc()

    def undecryptable(self, leg: str) -> None:
        self.decryption_failures.labels(leg).inc()

    def retry_receipt(self, direction: str) -> None:
        self.retry_receipts.labels(direction).inc()

    def pushed(self) -> None:
        self.pushes.inc()

    # ------------------------------------------------------------------ read at scrape time

    def refresh_with(self, refresh: Refresh) -> None:
        """``refresh`` sets the gauges that are read rather than counted (queue depths,
        states) just before each scrape."""
        self._refresh = refresh

    async def exposition(self) -> bytes:
        if self._refresh is not None:
            await self._refresh(self)
        return generate_latest(self.registry)

    def routes(self) -> list[web.RouteDef]:
        async def scrape(request: web.Request) -> web.Response:
            body = await self.exposition()
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        return [web.get("/metrics", scrape)]


class MetricsServer:
    """``/metrics`` on its own host and port (``metrics.listen``), apart from the
    appservice's, so that it can be firewalled on its own."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self._app = web.Application()
        self._app.add_routes(metrics.routes())
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
