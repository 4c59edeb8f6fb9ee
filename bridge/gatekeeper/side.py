"""The gatekeeper side as the core sees it (``bridge.core.gatekeeper_api.GatekeeperAPI``).

It turns the core's contents into Partner-client calls on the user's live connection.
A rate limit (429 with ``retry_after``) pauses every send of that user until it has
passed, exactly: the portals of one user share one limit at the gatekeeper, so a second
portal must not spend the next allowance on a refusal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from bridge.core.gatekeeper_api import GroupMember, GroupView, Persist
from bridge.db.logins import Login
from bridge.db.stores import Stores
from bridge.gip import stanzas as st
from bridge.gip.client import GipClient
from bridge.gip.content import Content, Media
from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.groups import GroupAction, GroupInfo, is_group
from bridge.gip.jid import Jid
from bridge.gip.media import MediaType
from bridge.gip.outgoing import PreparedMessage
from bridge.signal import ProtocolAddress, PublicKey

from .connections import ConnectionManager
from .enlistment import enlist
from .media_download import download
from .media_store import PartnerMediaStore
from .tokens import TokenIssuer


class GatekeeperSide:
    def __init__(
        self,
        manager: ConnectionManager,
        stores: Stores,
        *,
        tokens: TokenIssuer,
        base_url: str,
        http: aiohttp.ClientSession,
        media: PartnerMediaStore,
        integrator_id: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.manager = manager
        self.media = media
        self._integrator = integrator_id
        self._stores = stores
        self._tokens = tokens
        self._base_url = base_url
        self._http = http
        self._clock = clock
        self._paused_until: dict[str, float] = {}

    def _client(self, mxid: str) -> GipClient:
        client = self.manager.client_for(mxid)
        if client is None:
            raise GipError(GipErrorCode.CLOSED, "not connected to the gatekeeper")
        return client

    def _check_pause(self, mxid: str) -> None:
        until = self._paused_until.get(mxid)
        if until is None:
            return
        remaining = until - self._clock()
        if remaining <= 0:
            del self._paused_until[mxid]
            return
        raise GipError(GipErrorCode.RATE_LIMITED, "paused by a rate limit", retry_after=max(1, round(remaining)))

    def connected(self, mxid: str) -> bool:
        return self.manager.client_for(mxid) is not None

    async def prepare(
        self, mxid: str, peer: str, message_id: str, message_type: str, content: Content, persist: Persist
    ) -> bytes:
        client = self._client(mxid)

        async def store(prepared: PreparedMessage) -> None:
            await persist(prepared.serialize())

        to = Jid.parse(peer)
        if is_group(to):
            prepared = await client.encrypt_group_message(to, content, message_type, message_id, persist=store)
        else:
            prepared = await client.encrypt_message(to, content, message_type, message_id, persist=store)
        return prepared.serialize()

    async def send(self, mxid: str, prepared: bytes, content: Content, persist: Persist) -> None:
        self._check_pause(mxid)
        client = self._client(mxid)

        async def store(message: PreparedMessage) -> None:
            await persist(message.serialize())

        try:
            await client.send_prepared(PreparedMessage.deserialize(prepared), content, persist=store)
        except GipError as exc:
            if exc.code is GipErrorCode.RATE_LIMITED:
                wait = float(exc.retry_after or 5)
                self._paused_until[mxid] = self._clock() + wait
            raise

    async def upload_media(self, mxid: str, kind: str, source: Path) -> Media:
        ref, info = await self.media.encrypt_into(mxid, MediaType.of_kind(kind), source)
        return Media(
            # The path a native client asks the gatekeeper for; it fetches GET /media/{ref} from us.
            direct_path=f"/interop/download/{self._integrator}/{ref}/",
            media_key=info.media_key,
            file_sha256=info.file_sha256,
            file_enc_sha256=info.file_enc_sha256,
            file_length=info.file_length,
        )

    async def download_media(self, mxid: str, kind: str, media: Media, destination: Path) -> int:
        return await download(self._http, self._base_url, kind, media, destination)

    async def send_read(self, mxid: str, peer: str, message_ids: list[str]) -> None:
        await self._client(mxid).send_read(Jid.parse(peer), message_ids)

    async def send_typing(self, mxid: str, peer: str, composing: bool) -> None:
        state = st.ChatState.COMPOSING if composing else st.ChatState.PAUSED
        await self._client(mxid).send_typing(Jid.parse(peer), state)

    async def group_view(self, mxid: str, group: str) -> GroupView:
        return _view(await self._client(mxid).group_info(Jid.parse(group), refresh=True))

    async def create_group(self, mxid: str, subject: str, peers: list[str]) -> tuple[GroupView, list[str]]:
        result = await self._client(mxid).create_group(subject, [Jid.parse(p) for p in peers])
        return _view(result.group), [str(j) for j in result.refused]

    async def change_group(self, mxid: str, group: str, action: str, peers: list[str]) -> tuple[GroupView, list[str]]:
        result = await self._client(mxid).change_group(
            GroupAction(action), Jid.parse(group), [Jid.parse(p) for p in peers]
        )
        return _view(result.group), [str(j) for j in result.refused]

    async def set_group_subject(self, mxid: str, group: str, subject: str) -> GroupView:
        return _view(await self._client(mxid).set_group_subject(Jid.parse(group), subject))

    async def send_group_read(self, mxid: str, group: str, author: str, message_ids: list[str]) -> None:
        await self._client(mxid).send_group_receipt(Jid.parse(group), Jid.parse(author), message_ids, read=True)

    async def leave_group(self, mxid: str, group: str) -> None:
        await self._client(mxid).leave_group(Jid.parse(group))

    async def enlist(self, login: Login) -> str:
        return await enlist(self._stores, login, base_url=self._base_url, tokens=self._tokens, http=self._http)

    def connect(self, login: Login) -> None:
        self.manager.connect(login)

    async def disconnect(self, mxid: str) -> None:
        await self.manager.disconnect(mxid)

    async def lookup(self, mxid: str, uvid: str) -> str:
        return str(await self._client(mxid).lookup(uvid))

    async def set_blocked(self, mxid: str, peer: str, blocked: bool) -> None:
        await self._client(mxid).set_blocked(Jid.parse(peer), blocked)

    async def opt_out(self, mxid: str) -> None:
        await self._client(mxid).opt_out()

    async def peer_identity(self, mxid: str, peer: str) -> PublicKey | None:
        login = await self._stores.logins.get(mxid)
        if login is None:
            return None
        return await self.manager.device(login).store.get_identity(ProtocolAddress(str(Jid.parse(peer).bare), 0))

    def forget(self, mxid: str) -> None:
        self._paused_until.pop(mxid, None)
        self.manager.forget(mxid)


def _view(info: GroupInfo) -> GroupView:
    members = tuple(GroupMember(str(p.jid), p.uvid, p.admin) for p in info.participants)
    return GroupView(str(info.jid), info.subject, members)
