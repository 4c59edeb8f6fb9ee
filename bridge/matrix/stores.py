"""mautrix's own stores, kept in the bridge's database beside the bridge's tables.

The room state cache (``mx_*`` tables) and the crypto store (``crypto_*`` tables) belong
to mautrix and are migrated by mautrix's upgrade tables (``mx_version``,
``crypto_version``), as in every mautrix bridge: their schema follows the library version
we pin, not our alembic history, so that a mautrix upgrade brings its own migrations.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote, urlparse

from mautrix.appservice.state_store.asyncpg import PgASStateStore
from mautrix.crypto import PgCryptoStore
from mautrix.crypto import StateStore as CryptoStateStore
from mautrix.types import RoomID
from mautrix.util.async_db import Database

from bridge.db.database import no_reset


class BridgeStateStore(PgASStateStore, CryptoStateStore):
    """Room state the appservice and the Olm machine need: members, encryption, power levels.

    Persistent, so that after a restart the bridge still knows whom to share room keys with.
    """

    async def knows_encryption(self, room_id: RoomID) -> bool:
        return await self.db.fetchval("SELECT is_encrypted FROM mx_room_state WHERE room_id = $1", room_id) is not None

    async def set_unencrypted(self, room_id: RoomID) -> None:
        """Record that a room has no m.room.encryption (mautrix's setter only records one)."""
        await self.db.execute(
            "INSERT INTO mx_room_state (room_id, is_encrypted) VALUES ($1, false) "
            "ON CONFLICT (room_id) DO UPDATE SET is_encrypted = false",
            room_id,
        )


def mautrix_url(uri: str) -> str:
    """Our database URI as mautrix's async_db spells it (it reads the SQLite path raw)."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = unquote(uri[len("sqlite:///") :])
        if not path or path == ":memory:":
            raise ValueError("encryption needs an SQLite file, not :memory:")
        return "sqlite:" + path
    return uri


class MautrixDatabases:
    """One pool (Postgres) or connection (SQLite) for both of mautrix's stores."""

    def __init__(self, uri: str) -> None:
        url = mautrix_url(uri)
        args: dict[str, Any] = {"min_size": 1, "max_size": 4}
        if not url.startswith("sqlite:"):
            # As for the bridge's own pool: mautrix keeps no session state on a connection,
            # and asyncpg's reset query would cost a round trip per statement.
            args["reset"] = no_reset
            # mautrix exits the process on an asyncpg internal error; the bridge lets the
            # statement fail instead, and the work it was part of is tried again.
            args["meow_exit_on_ice"] = False
        self.state = Database.create(
            url, upgrade_table=PgASStateStore.upgrade_table, db_args=dict(args), log=logging.getLogger("mau.db")
        )
        self.crypto = Database.create(
            url, upgrade_table=PgCryptoStore.upgrade_table, db_args=dict(args), log=logging.getLogger("mau.crypto.db")
        )

    async def start(self) -> None:
        await self.state.start()
        self.crypto.override_pool(self.state)  # after start: Postgres copies the live pool
        await self.crypto.start()

    async def stop(self) -> None:
        await self.crypto.stop()
        await self.state.stop()
