"""Putting the bridge together: database, stores, core, gatekeeper side, Matrix side.

Start-up goes edge by edge so that nothing arrives before there is a place for it: the
Matrix listener first (it only stores), then the crypto, then the core loads its stored
work, then stored Matrix events flow into the loops, and only then do the gatekeeper
connections open. Shutdown goes the other way: no new transactions, no new gatekeeper
events, each loop finishes the item it is on, and what is left stays stored.
"""

from __future__ import annotations

import logging
import time

import aiohttp

from bridge.config import BridgeConfig, PermissionLevel
from bridge.core.bridge import BridgeCore
from bridge.db.database import Database, create_database
from bridge.db.retries import prune_retry_counts
from bridge.db.sealed import Sealer, SealError
from bridge.db.stores import Stores
from bridge.db.upgrade import upgrade
from bridge.gatekeeper.connections import ConnectionManager
from bridge.gatekeeper.media_store import PartnerMediaStore
from bridge.gatekeeper.partner_server import PartnerServer
from bridge.gatekeeper.side import GatekeeperSide
from bridge.gatekeeper.tokens import TokenIssuer
from bridge.gip.tokens import JwksFetcher
from bridge.matrix.connector import MatrixConnector, StartupError
from bridge.matrix.crypto_intake import prune_seen
from bridge.metrics import MetricsServer
from bridge.tasks import BackgroundTasks

log = logging.getLogger(__name__)
RETENTION_INTERVAL = 3600.0


class BridgeApp:
    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.db: Database | None = None
        self.stores: Stores | None = None
        self.http: aiohttp.ClientSession | None = None
        self.matrix: MatrixConnector | None = None
        self.core: BridgeCore | None = None
        self.connections: ConnectionManager | None = None
        self.media: PartnerMediaStore | None = None
        self.metrics_server: MetricsServer | None = None
        self.jobs = BackgroundTasks()

    async def start(self) -> None:
        config = self.config
        try:
            await upgrade(config.database_uri)
        except Exception as exc:
            raise StartupError(f"database.uri: cannot open or migrate the database: {exc}") from exc
        self.db = db = create_database(config.database_uri, config.max_connections)
        await db.start()
        self.stores = stores = Stores.create(db, Sealer(config.at_rest_key))
        try:
            signing_key = await stores.secrets.signing_key()
        except SealError as exc:
            raise StartupError(f"encryption_at_rest.key: {exc}") from exc
        self.http = http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        tokens = TokenIssuer(signing_key, integrator_id=config.integrator_id, audience=config.gatekeeper_name)

        async def fetch_gatekeeper_jwks() -> bytes:
            async with http.get(config.gatekeeper_jwks_url) as response:
                response.raise_for_status()
                return await response.read()

        async def on_push(uvid: str) -> None:
            if self.core is not None:
                self.core.metrics.pushed()
            if self.connections is not None:
                await self.connections.on_push(uvid)

        try:
            self.media = media = PartnerMediaStore(
                config.media.directory,
                stores.partner_media,
                config.media.keep_days,
                quota_bytes=config.media.quota_bytes,
            )
        except OSError as exc:
            raise StartupError(f"bridge.media.directory: cannot use {config.media.directory}: {exc}") from exc
        partner = PartnerServer(
            signing_key=signing_key,
            gatekeeper_jwks=JwksFetcher(fetch_gatekeeper_jwks),
            gatekeeper_name=config.gatekeeper_name,
            integrator_id=config.integrator_id,
            media=media,
            on_push=on_push,
        )
        self.matrix = MatrixConnector(config, partner.routes(), stores)
        self.core = core = BridgeCore(config, stores, self.matrix)
        self.matrix.core = core
        self.connections = ConnectionManager(
            stores=stores,
            tokens=tokens,
            base_url=config.gatekeeper_url,
            sink=core,
            limits=config.connections,
            gatekeeper_static=config.gatekeeper_static_key,
            allowed=lambda mxid: config.permission(mxid) is not PermissionLevel.NONE,
        )
        core.gatekeeper = GatekeeperSide(
            self.connections,
            stores,
            tokens=tokens,
            base_url=config.gatekeeper_url,
            http=http,
            media=media,
            integrator_id=config.integrator_id,
        )
        await self.matrix.start()
        await core.start()
        await self.matrix.open_rooms()
        await core.tell_revoked()
        await self.connections.start()
        if config.metrics.enabled:
            self.metrics_server = MetricsServer(core.metrics, config.metrics.host, config.metrics.port)
            try:
                await self.metrics_server.start()
            except OSError as exc:
                raise StartupError(f"metrics.listen: cannot listen on it: {exc}") from exc
        self.jobs.every(RETENTION_INTERVAL, self.retention, "retention", first=60)
        log.info("bridge running: %s on %s:%s", config.appservice_id, config.hostname, config.port)
        if config.gatekeeper_static_key is None:
            log.warning(
                "gatekeeper.static_key is empty: the chat channel trusts any server at %s (allowed only on loopback)",
                config.gatekeeper_url,
            )

    async def retention(self) -> None:
        assert self.core is not None
        assert self.db is not None
        await self.core.prune()
        now = int(time.time() * 1000)
        await prune_retry_counts(self.db, now - self.config.retention.days * 86_400_000)
        await prune_seen(self.db, now - 7 * 86_400_000)
        if self.media is not None:
            await self.media.collect()

    async def close_after_failed_start(self) -> None:
        """Close whatever a start that failed midway had opened, each part on its own."""
        for step in (self._stop_matrix, self._close_http, self._close_db):
            try:
                await step()
            except Exception as exc:
                log.info("closing after a failed start: %s", type(exc).__name__)

    async def _stop_matrix(self) -> None:
        self.jobs.cancel()
        if self.matrix is not None:
            await self.matrix.stop()

    async def _close_http(self) -> None:
        if self.http is not None:
            await self.http.close()

    async def _close_db(self) -> None:
        if self.db is not None:
            await self.db.close()

    async def stop(self) -> None:
        self.jobs.cancel()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        if self.matrix is not None:
            await self.matrix.stop_listening()
        if self.connections is not None:
            await self.connections.close()
        if self.core is not None:
            await self.core.stop()
        if self.matrix is not None:
            await self.matrix.stop()
        if self.http is not None:
            await self.http.close()
        if self.db is not None:
            await self.db.close()
