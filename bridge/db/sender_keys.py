"""Who holds each login's current sender key of a group (``bridge.gip.group_client``'s
``SenderKeyBook``), written in the transaction that stores the key it speaks of."""

from __future__ import annotations

from collections.abc import Sequence

from bridge.gip.jid import Jid

from .database import Database


class SenderKeyHolders:
    def __init__(self, db: Database, mxid: str) -> None:
        self._db = db
        self._mxid = mxid

    async def holders(self, group: Jid) -> set[Jid]:
        rows = await self._db.fetch(
            "SELECT device FROM sender_key_holders WHERE mxid = $1 AND group_jid = $2", self._mxid, str(group)
        )
        return {Jid.parse(row["device"]) for row in rows}

    async def add_holders(self, group: Jid, devices: Sequence[Jid]) -> None:
        for device in devices:
            await self._db.execute(
                "INSERT INTO sender_key_holders (mxid, group_jid, device) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                self._mxid,
                str(group),
                str(device),
            )

    async def forget(self, group: Jid) -> None:
        await self._db.execute(
            "DELETE FROM sender_key_holders WHERE mxid = $1 AND group_jid = $2", self._mxid, str(group)
        )
