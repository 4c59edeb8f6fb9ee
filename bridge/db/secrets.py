"""Bridge-wide secrets, sealed: the Partner's JWT signing key."""

from __future__ import annotations

import time

from bridge.gip.tokens import SigningKey

from .database import Database
from .sealed import Sealer

SIGNING_KEY = "partner_signing_key"


class SecretStore:
    def __init__(self, db: Database, sealer: Sealer) -> None:
        self._db = db
        self._sealer = sealer

    async def signing_key(self) -> SigningKey:
        """The Partner's RS256 key (made on first use); its ``kid`` is stored with it."""
        async with self._db.transaction():
            value = await self._db.fetchval("SELECT value FROM bridge_secrets WHERE name = $1", SIGNING_KEY)
            if value is not None:
                kid, pem = self._sealer.open(value, "bridge_secrets", SIGNING_KEY).split(b"\n", 1)
                return SigningKey.from_pem(kid.decode(), pem)
            key = SigningKey.generate()
            sealed = self._sealer.seal(key.kid.encode() + b"\n" + key.private_pem(), "bridge_secrets", SIGNING_KEY)
            await self._db.execute(
                "INSERT INTO bridge_secrets (name, value, created_at) VALUES ($1, $2, $3)",
                SIGNING_KEY,
                sealed,
                int(time.time() * 1000),
            )
            return key
