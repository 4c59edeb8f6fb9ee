"""Logins: the Matrix users who enlisted, with their gatekeeper identity and keys."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum

from bridge.signal import IdentityKeyPair, next_prekey_id

from .database import Database, Row
from .sealed import Sealer


class LoginState(Enum):
    ENLISTING = "enlisting"  # consent given, keys made, enlistment not yet confirmed
    ENLISTED = "enlisted"
    LOGGED_OUT = "logged_out"  # un-enlisted by the gatekeeper; keys kept until logout


@dataclass(frozen=True)
class Login:
    mxid: str
    uvid: str
    iid: str | None
    state: LoginState
    consented_at: int
    eea_attested: bool
    country: str
    noise_private: bytes = field(repr=False)
    registration_id: int
    identity: IdentityKeyPair = field(repr=False)
    signed_pre_key_id: int
    next_pre_key_id: int
    management_room: str | None
    created_at: int


class LoginStore:
    """Logins, with the loaded ones cached (unsealing costs). One instance per process
    (``Stores``): every write goes through it and drops the entry it changes."""

    def __init__(self, db: Database, sealer: Sealer) -> None:
        self._db = db
        self._sealer = sealer
        self._cache: dict[str, Login] = {}

    def _login(self, row: Row) -> Login:
        mxid = row["mxid"]
        return Login(
            mxid=mxid,
            uvid=row["uvid"],
            iid=row["iid"],
            state=LoginState(row["state"]),
            consented_at=row["consented_at"],
            eea_attested=bool(row["eea_attested"]),
            country=row["country"],
            noise_private=self._sealer.open(row["noise_private"], "logins.noise", mxid),
            registration_id=row["registration_id"],
            identity=IdentityKeyPair.deserialize(self._sealer.open(row["identity_key_pair"], "logins.identity", mxid)),
            signed_pre_key_id=row["signed_pre_key_id"],
            next_pre_key_id=row["next_pre_key_id"],
            management_room=row["management_room"],
            created_at=row["created_at"],
        )

    async def insert(self, login: Login) -> None:
        self._cache.pop(login.mxid, None)
        await self._db.execute(
            "INSERT INTO logins (mxid, uvid, iid, state, consented_at, eea_attested, country,"
            " noise_private, registration_id, identity_key_pair, signed_pre_key_id, next_pre_key_id,"
            " management_room, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            login.mxid,
            login.uvid,
            login.iid,
            login.state.value,
            login.consented_at,
            login.eea_attested,
            login.country,
            self._sealer.seal(login.noise_private, "logins.noise", login.mxid),
            login.registration_id,
            self._sealer.seal(login.identity.serialize(), "logins.identity", login.mxid),
            login.signed_pre_key_id,
            login.next_pre_key_id,
            login.management_room,
            login.created_at,
        )

    async def get(self, mxid: str) -> Login | None:
        cached = self._cache.get(mxid)
        if cached is not None:
            return cached
        row = await self._db.fetchrow("SELECT * FROM logins WHERE mxid = $1", mxid)
        if row is None:
            return None
        login = self._cache[mxid] = self._login(row)
        return login

    async def by_iid(self, iid: str) -> Login | None:
        mxid = await self._db.fetchval("SELECT mxid FROM logins WHERE iid = $1", iid)
        return await self.get(mxid) if mxid is not None else None

    async def by_uvid(self, uvid: str) -> Login | None:
        mxid = await self._db.fetchval("SELECT mxid FROM logins WHERE uvid = $1", uvid)
        return await self.get(mxid) if mxid is not None else None

    async def all(self, state: LoginState | None = None) -> list[Login]:
        if state is None:
            rows = await self._db.fetch("SELECT * FROM logins ORDER BY created_at")
        else:
            rows = await self._db.fetch("SELECT * FROM logins WHERE state = $1 ORDER BY created_at", state.value)
        return [self._login(r) for r in rows]

    async def count_by_state(self) -> dict[str, int]:
        rows = await self._db.fetch("SELECT state, COUNT(*) AS n FROM logins GROUP BY state")
        return {row["state"]: int(row["n"]) for row in rows}

    async def set_enlisted(self, mxid: str, iid: str) -> None:
        self._cache.pop(mxid, None)
        await self._db.execute(
            "UPDATE logins SET iid = $1, state = $2 WHERE mxid = $3", iid, LoginState.ENLISTED.value, mxid
        )

    async def set_state(self, mxid: str, state: LoginState) -> None:
        self._cache.pop(mxid, None)
        await self._db.execute("UPDATE logins SET state = $1 WHERE mxid = $2", state.value, mxid)

    async def set_management_room(self, mxid: str, room_id: str) -> None:
        self._cache.pop(mxid, None)
        await self._db.execute("UPDATE logins SET management_room = $1 WHERE mxid = $2", room_id, mxid)

    async def set_signed_pre_key_id(self, mxid: str, key_id: int) -> None:
        self._cache.pop(mxid, None)
        await self._db.execute("UPDATE logins SET signed_pre_key_id = $1 WHERE mxid = $2", key_id, mxid)

    async def reserve_pre_key_ids(self, mxid: str, count: int) -> int:
        """Reserve ``count`` one-time prekey ids; returns the first (they wrap at 24 bits)."""
        self._cache.pop(mxid, None)
        async with self._db.transaction():
            start = await self._db.fetchval("SELECT next_pre_key_id FROM logins WHERE mxid = $1", mxid)
            if start is None:
                raise LookupError(f"no login for {mxid}")
            await self._db.execute(
                "UPDATE logins SET next_pre_key_id = $1 WHERE mxid = $2", next_prekey_id(start, count), mxid
            )
        return int(start)

    async def delete(self, mxid: str) -> None:
        """Erase the login; keys, sessions, portals and queues go with it (ON DELETE CASCADE)."""
        self._cache.pop(mxid, None)
        await self._db.execute("DELETE FROM logins WHERE mxid = $1", mxid)

    @staticmethod
    def with_state(login: Login, state: LoginState) -> Login:
        return replace(login, state=state)
