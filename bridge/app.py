"""Putting the bridge together: database, secrets, core, gatekeeper connections, Matrix."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from bridge.config import BridgeConfig
from bridge.core.bridge import BridgeCore
from bridge.db.database import Database, create_database
from bridge.db.sealed import Sealer, SealError
from bridge.db.secrets import MediaStore, SecretStore
from bridge.db.upgrade import upgrade
from bridge.gatekeeper.connections import ConnectionManager
from bridge.gatekeeper.partner_server import PartnerServer
from bridge.gatekeeper.tokens import TokenIssuer
from bridge.gip.tokens import JwksFetcher
from bridge.matrix.connector import MatrixConnector, StartupError

log = logging.getLogger(__name__)


class BridgeApp:
    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.db: Database | None = None
        self.http: aiohttp.ClientSession | None = None
        self.matrix: MatrixConnector | None = None
        self.core: BridgeCore | None = None
        self.connections: ConnectionManager | None = None
        self._retry: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = self.config
        try:
            await upgrade(config.database_uri)
        except Exception as exc:
            raise StartupError(f"database.uri: cannot open or migrate the database: {exc}") from exc
        self.db = db = create_database(config.database_uri, config.max_connections)
        await db.start()
        sealer = Sealer(config.at_rest_key)
        try:
            signing_key = await SecretStore(db, sealer).signing_key()
        except SealError as exc:
            raise StartupError(f"encryption_at_rest.key: {exc}") from exc
        self.http = http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        tokens = TokenIssuer(signing_key, integrator_id=config.integrator_id, audience=config.gatekeeper_name)

        async def fetch_gatekeeper_jwks() -> bytes:
            async with http.get(config.gatekeeper_jwks_url) as response:
                response.raise_for_status()
                return await response.read()

        async def on_push(uvid: str) -> None:
            if self.connections is not None:
                await self.connections.on_push(uvid)

        partner = PartnerServer(
            signing_key=signing_key,
            gatekeeper_jwks=JwksFetcher(fetch_gatekeeper_jwks),
            gatekeeper_name=config.gatekeeper_name,
            integrator_id=config.integrator_id,
            media=MediaStore(db),
            on_push=on_push,
        )
        self.matrix = MatrixConnector(config, partner.routes())
        self.core = BridgeCore(config, db, sealer, self.matrix)
        self.matrix.core = self.core
        self.connections = ConnectionManager(
            db=db, sealer=sealer, tokens=tokens, base_url=config.gatekeeper_url, sink=self.core, http=http
        )
        self.core.connections = self.connections
        await self.matrix.start()
        await self.connections.start()
        self.core.spawn(self.core.post_pending(), "post pending messages")
        self._retry = asyncio.get_running_loop().create_task(self.core.retry_pending(), name="retry pending work")
        log.info("bridge running: %s on %s:%s", config.appservice_id, config.hostname, config.port)

    async def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        if self.connections is not None:
            await self.connections.close()
        if self.matrix is not None:
            await self.matrix.stop()
        if self.core is not None:
            await self.core.settle()
        if self.http is not None:
            await self.http.close()
        if self.db is not None:
            await self.db.close()
