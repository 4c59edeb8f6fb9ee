"""Portals (a Matrix room per gatekeeper chat), puppets, the message map, reactions, receipts."""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from dataclasses import dataclass

from .database import Database, Row
from .later import LaterWrites


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

    async def of_peer(self, peer: str) -> list[Portal]:
        """Every local member's row of a group's portal (they share one room)."""
        rows = await self._db.fetch("SELECT * FROM portals WHERE peer = $1 ORDER BY created_at", peer)
        return [self._remember(_portal(r)) for r in rows]

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
    """Puppets, cached: they change only through :meth:`put`."""

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
        """Insert or update every field; cached only once written. A Matrix ID held by
        another peer passes to this one (a phone number that moved to a new account)."""
        moved = await self._db.fetchval(
            "SELECT iid FROM puppets WHERE mxid = $1 AND iid <> $2", puppet.mxid, puppet.iid
        )
        if moved is not None:
            await self._db.execute("DELETE FROM puppets WHERE iid = $1", moved)
            self._db.after_commit(lambda: self._cache.pop(moved, None))
        await self._db.execute(
            "INSERT INTO puppets (iid, uvid, mxid, displayname) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (iid) DO UPDATE SET uvid = excluded.uvid, mxid = excluded.mxid,"
            " displayname = excluded.displayname",
            puppet.iid,
            puppet.uvid,
            puppet.mxid,
            puppet.displayname,
        )
        self._db.after_commit(lambda: self._cache.__setitem__(puppet.iid, puppet))


_PUT_MESSAGE = (
    "INSERT INTO messages (receiver, peer, gk_id, from_me, room_id, event_id, timestamp)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"
)
RECENT_MESSAGES = 10_000


class MessageStore:
    """The message map (gatekeeper id ⇄ Matrix event), with the recent entries in memory:
    replies, reactions and receipts mostly point at recent messages."""

    def __init__(self, db: Database, later: LaterWrites | None = None) -> None:
        self._db = db
        self._later = later
        self._by_gk: OrderedDict[tuple[str, str, str], MessageRef] = OrderedDict()
        self._by_event: OrderedDict[tuple[str, str], MessageRef] = OrderedDict()

    def _remember(self, ref: MessageRef) -> MessageRef:
        self._by_gk[(ref.receiver, ref.peer, ref.gk_id)] = ref
        self._by_event[(ref.room_id, ref.event_id)] = ref
        while len(self._by_gk) > RECENT_MESSAGES:
            self._by_gk.popitem(last=False)
        while len(self._by_event) > RECENT_MESSAGES:
            self._by_event.popitem(last=False)
        return ref

    @staticmethod
    def _values(ref: MessageRef) -> tuple[object, ...]:
        return (ref.receiver, ref.peer, ref.gk_id, ref.from_me, ref.room_id, ref.event_id, ref.timestamp)

    async def put(self, ref: MessageRef) -> None:
        await self._db.execute(_PUT_MESSAGE, *self._values(ref))
        self._db.after_commit(lambda: self._remember(ref))

    async def put_later(self, ref: MessageRef) -> None:
        """Map a message now (for this process: at once; in the database: a moment later,
        with the end of the item it comes from, see ``later``)."""
        self._remember(ref)
        if self._later is None:
            await self.put(ref)
        else:
            await self._later.add(_PUT_MESSAGE, *self._values(ref))

    async def by_gk_id(self, receiver: str, peer: str, gk_id: str) -> MessageRef | None:
        cached = self._by_gk.get((receiver, peer, gk_id))
        if cached is not None:
            return cached
        row = await self._db.fetchrow(
            "SELECT * FROM messages WHERE receiver = $1 AND peer = $2 AND gk_id = $3", receiver, peer, gk_id
        )
        return self._remember(_message(row)) if row else None

    async def posted(self, peer: str, gk_id: str) -> MessageRef | None:
        """A group message as any local member's copy mapped it: posted once for all."""
        row = await self._db.fetchrow("SELECT * FROM messages WHERE peer = $1 AND gk_id = $2 LIMIT 1", peer, gk_id)
        return _message(row) if row else None

    async def by_event(self, room_id: str, event_id: str) -> MessageRef | None:
        cached = self._by_event.get((room_id, event_id))
        if cached is not None:
            return cached
        row = await self._db.fetchrow("SELECT * FROM messages WHERE room_id = $1 AND event_id = $2", room_id, event_id)
        return self._remember(_message(row)) if row else None

    def forget_receiver(self, receiver: str) -> None:
        """After a login is erased (its messages went with it, by cascade)."""
        for key, ref in list(self._by_gk.items()):
            if key[0] == receiver:
                del self._by_gk[key]
                self._by_event.pop((ref.room_id, ref.event_id), None)

    async def unread_from_peer(
        self, receiver: str, peer: str, room_id: str, up_to: int, since: int = 0
    ) -> list[MessageRef]:
        """The peer's messages from ``since`` up to ``up_to`` that have no read receipt from
        us yet (receipts older than the retention are gone, so older messages are not asked
        about)."""
        rows = await self._db.fetch(
            "SELECT m.* FROM messages m LEFT JOIN receipts r ON r.receiver = m.receiver AND r.peer = m.peer"
            " AND r.gk_id = m.gk_id AND r.kind = 'read'"
            " WHERE m.receiver = $1 AND m.peer = $2 AND m.room_id = $3 AND m.from_me = $4 AND m.timestamp <= $5"
            " AND m.timestamp >= $6 AND r.gk_id IS NULL ORDER BY m.timestamp",
            receiver,
            peer,
            room_id,
            False,
            up_to,
            since,
        )
        return [_message(r) for r in rows]

    async def prune_receipts(self, before_ms: int) -> int:
        return await self._db.execute("DELETE FROM receipts WHERE timestamp < $1", before_ms)

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
