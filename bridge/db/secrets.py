"""Bridge-wide secrets (sealed) and Partner media blobs."""

from __future__ import annotations

import secrets
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


class MediaStore:
    """Encrypted media blobs our users send, for the gatekeeper to fetch (GIP §7).

    The blobs are already end-to-end encrypted (media keys travel inside Signal messages),
    so they are stored as they are.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(self, owner: str, blob: bytes) -> str:
        ref = secrets.token_urlsafe(24)
        await self._db.execute(
            "INSERT INTO partner_media (ref, owner, blob, created_at) VALUES ($1, $2, $3, $4)",
            ref,
            owner,
            blob,
            int(time.time() * 1000),
        )
        return ref

    async def get(self, ref: str) -> bytes | None:
        value = await self._db.fetchval("SELECT blob FROM partner_media WHERE ref = $1", ref)
        return bytes(value) if value is not None else None

    async def expire(self, before_ms: int) -> int:
        return await self._db.execute("DELETE FROM partner_media WHERE created_at < $1", before_ms)
