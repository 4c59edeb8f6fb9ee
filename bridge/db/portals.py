"""Portals (a Matrix room per gatekeeper chat), puppets, the message map, reactions, receipts."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from .database import Database, Row


@dataclass(frozen=True)
class Portal:
    receiver: str  # the Matrix user whose chat it is
    peer: str  # the gatekeeper user's IID
    room_id: str | None
    encrypted: bool
    created_at: int


@dataclass(frozen=True)
class Puppet:
    iid: str
    uvid: str
    mxid: str
    displayname: str


@dataclass(frozen=True)
class MessageRef:
    receiver: str
    peer: str
    gk_id: str
    from_me: bool
    room_id: str
    event_id: str
    timestamp: int


def _portal(row: Row) -> Portal:
    return Portal(row["receiver"], row["peer"], row["room_id"], bool(row["encrypted"]), row["created_at"])


def _message(row: Row) -> MessageRef:
    return MessageRef(
        row["receiver"],
        row["peer"],
        row["gk_id"],
        bool(row["from_me"]),
        row["room_id"],
        row["event_id"],
        row["timestamp"],
    )


class PortalStore:
    """Portals, with a cache of the ones seen (every write goes through here)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._by_key: dict[tuple[str, str], Portal] = {}
        self._by_room: dict[str, Portal] = {}

    def _remember(self, portal: Portal) -> Portal:
        self._by_key[(portal.receiver, portal.peer)] = portal
        if portal.room_id:
            self._by_room[portal.room_id] = portal
        return portal

    async def get(self, receiver: str, peer: str) -> Portal | None:
        cached = self._by_key.get((receiver, peer))
        if cached is not None:
            return cached
        row = await self._db.fetchrow("SELECT * FROM portals WHERE receiver = $1 AND peer = $2", receiver, peer)
        return self._remember(_portal(row)) if row else None

    async def by_room(self, room_id: str) -> Portal | None:
        cached = self._by_room.get(room_id)
        if cached is not None:
            return cached
        row = await self._db.fetchrow("SELECT * FROM portals WHERE room_id = $1", room_id)
        return self._remember(_portal(row)) if row else None

    def forget_receiver(self, receiver: str) -> None:
        """After a login is erased (its portals went with it, by cascade)."""
        for key, portal in list(self._by_key.items()):
            if key[0] == receiver:
                del self._by_key[key]
                self._by_room.pop(portal.room_id or "", None)

    async def of_receiver(self, receiver: str) -> list[Portal]:
        rows = await self._db.fetch("SELECT * FROM portals WHERE receiver = $1 ORDER BY created_at", receiver)
        return [_portal(r) for r in rows]

    async def insert(self, receiver: str, peer: str, room_id: str, encrypted: bool) -> Portal:
        now = int(time.time() * 1000)
        await self._db.execute(
            "INSERT INTO portals (receiver, peer, room_id, encrypted, created_at) VALUES ($1, $2, $3, $4, $5)",
            receiver,
            peer,
            room_id,
            encrypted,
            now,
        )
        return self._remember(Portal(receiver, peer, room_id, encrypted, now))

    async def set_encrypted(self, portal: Portal) -> Portal:
        await self._db.execute(
            "UPDATE portals SET encrypted = $3 WHERE receiver = $1 AND peer = $2", portal.receiver, portal.peer, True
        )
        return self._remember(dataclasses.replace(portal, encrypted=True))

    async def delete(self, receiver: str, peer: str) -> None:
        portal = self._by_key.pop((receiver, peer), None)
        if portal is not None:
            self._by_room.pop(portal.room_id or "", None)
        await self._db.execute("DELETE FROM portals WHERE receiver = $1 AND peer = $2", receiver, peer)


class PuppetStore:
    """Puppets, cached: there are few, and they change only through :meth:`put`."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: dict[str, Puppet] = {}

    async def get(self, iid: str) -> Puppet | None:
        cached = self._cache.get(iid)
        if cached is not None:
            return cached
        row = await self._db.fetchrow("SELECT * FROM puppets WHERE iid = $1", iid)
        if row is None:
            return None
        puppet = self._cache[iid] = Puppet(row["iid"], row["uvid"], row["mxid"], row["displayname"])
        return puppet

    async def by_mxid(self, mxid: str) -> Puppet | None:
        row = await self._db.fetchrow("SELECT * FROM puppets WHERE mxid = $1", mxid)
        return Puppet(row["iid"], row["uvid"], row["mxid"], row["displayname"]) if row else None

    async def put(self, puppet: Puppet) -> None:
        self._cache[puppet.iid] = puppet
        await self._db.execute(
            "INSERT INTO puppets (iid, uvid, mxid, displayname) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (iid) DO UPDATE SET uvid = excluded.uvid, displayname = excluded.displayname",
            puppet.iid,
            puppet.uvid,
            puppet.mxid,
            puppet.displayname,
        )


class MessageStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(self, ref: MessageRef) -> None:
        await self._db.execute(
            "INSERT INTO messages (receiver, peer, gk_id, from_me, room_id, event_id, timestamp)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            ref.receiver,
            ref.peer,
            ref.gk_id,
            ref.from_me,
            ref.room_id,
            ref.event_id,
            ref.timestamp,
        )

    async def by_gk_id(self, receiver: str, peer: str, gk_id: str) -> MessageRef | None:
        row = await self._db.fetchrow(
            "SELECT * FROM messages WHERE receiver = $1 AND peer = $2 AND gk_id = $3", receiver, peer, gk_id
        )
        return _message(row) if row else None

    async def by_event(self, room_id: str, event_id: str) -> MessageRef | None:
        row = await self._db.fetchrow("SELECT * FROM messages WHERE room_id = $1 AND event_id = $2", room_id, event_id)
        return _message(row) if row else None

    async def unread_from_peer(self, receiver: str, peer: str, room_id: str, up_to: int) -> list[MessageRef]:
        """The peer's messages up to ``up_to`` that have no read receipt from us yet."""
        rows = await self._db.fetch(
            "SELECT m.* FROM messages m LEFT JOIN receipts r ON r.receiver = m.receiver AND r.peer = m.peer"
            " AND r.gk_id = m.gk_id AND r.kind = 'read'"
            " WHERE m.receiver = $1 AND m.peer = $2 AND m.room_id = $3 AND m.from_me = $4 AND m.timestamp <= $5"
            " AND r.gk_id IS NULL ORDER BY m.timestamp",
            receiver,
            peer,
            room_id,
            False,
            up_to,
        )
        return [_message(r) for r in rows]

    async def record_receipts(self, receiver: str, peer: str, gk_ids: list[str], kind: str) -> None:
        now = int(time.time() * 1000)
        await self._db.executemany(
            "INSERT INTO receipts (receiver, peer, gk_id, kind, timestamp) VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT DO NOTHING",
            [(receiver, peer, gk_id, kind, now) for gk_id in gk_ids],
        )

    async def record_receipt(self, receiver: str, peer: str, gk_id: str, kind: str) -> bool:
        """Remember a receipt; False if it was already known."""
        return (
            await self._db.execute(
                "INSERT INTO receipts (receiver, peer, gk_id, kind, timestamp) VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT DO NOTHING",
                receiver,
                peer,
                gk_id,
                kind,
                int(time.time() * 1000),
            )
            == 1
        )

    async def put_reaction(
        self, room_id: str, event_id: str, receiver: str, peer: str, target: str, from_me: bool, emoji: str
    ) -> None:
        await self._db.execute(
            "INSERT INTO reactions (room_id, event_id, receiver, peer, target_gk_id, from_me, emoji)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            room_id,
            event_id,
            receiver,
            peer,
            target,
            from_me,
            emoji,
        )

    async def reaction(self, room_id: str, event_id: str) -> Row | None:
        return await self._db.fetchrow(
            "SELECT * FROM reactions WHERE room_id = $1 AND event_id = $2", room_id, event_id
        )

    async def reaction_by_target(self, receiver: str, peer: str, target: str, from_me: bool) -> Row | None:
        return await self._db.fetchrow(
            "SELECT * FROM reactions WHERE receiver = $1 AND peer = $2 AND target_gk_id = $3 AND from_me = $4",
            receiver,
            peer,
            target,
            from_me,
        )

    async def delete_reaction(self, room_id: str, event_id: str) -> None:
        await self._db.execute("DELETE FROM reactions WHERE room_id = $1 AND event_id = $2", room_id, event_id)
