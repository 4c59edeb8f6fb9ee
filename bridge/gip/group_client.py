"""The Partner client's group half (interop profile §9), mixed into :class:`GipClient`.

One sender key per group: made on the first message, handed pairwise to every participant
device that lacks it (the devices that have it are kept in a :class:`SenderKeyBook`, stored
by the caller, so that a restart does not hand it out again), and replaced before the next
message when someone leaves or is removed. Bodies go once, as ``skmsg``.

Locks, always in this order: the group, then the participants' users (sorted). A group
send holds them all from the first pairwise encrypt to the commit, so that no 1:1 message
to one of them advances the same session in between.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from bridge.locks import KeyedLock
from bridge.signal import (
    DuplicateMessageError,
    GroupCipher,
    IdentityChange,
    MessageType,
    SenderKeyDistributionMessage,
    SenderKeyRecord,
    SignalError,
    StagedSignalStore,
)

from . import groups as gp
from . import stanzas as st
from .content import Content, SenderKeyDistribution, decode_content, encode_content
from .errors import GipError, GipErrorCode
from .jid import Jid
from .outgoing import PreparedMessage, RetryStore, SentMessage

if TYPE_CHECKING:
    from bridge.signal import SessionCipher, SignalStore

    from .client import Event, IdentityChangedEvent, Persist

log = logging.getLogger(__name__)
MAX_409_RESENDS = 3


class SenderKeyBook(Protocol):
    """Which participant devices hold our current sender key of a group."""

    async def holders(self, group: Jid) -> set[Jid]: ...

    async def add_holders(self, group: Jid, devices: Sequence[Jid]) -> None: ...

    async def forget(self, group: Jid) -> None:
        """Our key was replaced: nobody holds the new one."""
        ...


class MemorySenderKeyBook:
    def __init__(self) -> None:
        self._holders: dict[Jid, set[Jid]] = {}

    async def holders(self, group: Jid) -> set[Jid]:
        return set(self._holders.get(group, set()))

    async def add_holders(self, group: Jid, devices: Sequence[Jid]) -> None:
        self._holders.setdefault(group, set()).update(devices)

    async def forget(self, group: Jid) -> None:
        self._holders.pop(group, None)


@dataclass(frozen=True, slots=True)
class GroupEvent:
    """A change of a group we are in (created, members, admins, subject)."""

    notice: gp.GroupNotice


@dataclass(frozen=True, slots=True)
class GroupMessageEvent:
    id: str
    group: Jid
    sender: Jid  # the author's device
    type: str
    t: int
    content: Content = field(repr=False)
    identity_changed: bool
    offline: bool
    sender_uvid: str | None = None


@dataclass(frozen=True, slots=True)
class GroupUndecryptableEvent:
    id: str
    group: Jid
    sender: Jid
    error: str
    retry_count: int


class GroupClient:
    """Group calls and group traffic; ``GipClient`` provides what is declared here."""

    if TYPE_CHECKING:
        store: SignalStore
        retries: RetryStore
        sender_keys: SenderKeyBook
        on_event: Callable[[Event], Awaitable[None]]
        _peer_locks: KeyedLock
        _atomic: Callable[[], AbstractAsyncContextManager[Any]]
        _groups: dict[Jid, gp.GroupInfo]
        _group_devices: dict[tuple[Jid, str], list[Jid]]

        @property
        def jid(self) -> Jid: ...

        def new_id(self) -> str: ...

        def _clock(self) -> float: ...

        async def request(self, node: Any) -> Any: ...

        async def _send(self, node: Any) -> None: ...

        async def _await(self, key: tuple[str, str], node: Any, timeout: float = ...) -> Any: ...

        async def get_devices(self, user: Jid, *, refresh: bool = False) -> st.DeviceList: ...

        async def fetch_bundles(self, devices: list[Jid]) -> list[st.Bundle | st.BundleError]: ...

        async def _open_sessions(
            self, stage: StagedSignalStore, devices: list[Jid], changes: list[IdentityChangedEvent]
        ) -> list[Jid]: ...

        async def _encrypt(self, stage: StagedSignalStore, device: Jid, plaintext: bytes) -> st.Enc: ...

        def _cipher(self, store: Any, device: Jid) -> SessionCipher: ...

        async def _handle_durably(self, run: Callable[[], Awaitable[None]], what: str) -> None: ...

        async def _current_bundle(self) -> st.Bundle: ...

    # ------------------------------------------------------------------ the group iqs

    async def create_group(self, subject: str, participants: Sequence[Jid]) -> gp.GroupResult:
        result = gp.GroupResult.parse(await self.request(gp.create(self.new_id(), subject, participants)))
        self._groups[result.group.jid] = result.group
        return result

    async def group_info(self, group: Jid, *, refresh: bool = False) -> gp.GroupInfo:
        if refresh or group not in self._groups:
            result = await self.request(gp.query(self.new_id(), group))
            self._groups[group] = gp.GroupInfo.parse(result.require_child("group"))
        return self._groups[group]

    async def my_groups(self) -> list[gp.GroupInfo]:
        found = gp.parse_group_list(await self.request(gp.list_mine(self.new_id())))
        for info in found:
            self._groups[info.jid] = info
        return found

    async def change_group(self, action: gp.GroupAction, group: Jid, participants: Sequence[Jid]) -> gp.GroupResult:
        """Add, remove, promote or demote. Raises GipError 403 (not an admin), 404, 406."""
        result = gp.GroupResult.parse(await self.request(gp.change(self.new_id(), action, group, participants)))
        if action is gp.GroupAction.REMOVE:
            await self._rotate(group)
        self._groups[group] = result.group
        return result

    async def set_group_subject(self, group: Jid, subject: str) -> gp.GroupInfo:
        info = gp.GroupResult.parse(await self.request(gp.set_subject(self.new_id(), group, subject))).group
        self._groups[group] = info
        return info

    async def leave_group(self, group: Jid) -> None:
        await self.request(gp.leave(self.new_id(), group))
        self._groups.pop(group, None)

    # ------------------------------------------------------------------ sending

    async def _participant_devices(self, info: gp.GroupInfo, *, refresh: bool = False) -> list[Jid]:
        """Every device of every participant, ours included (the group hash covers all);
        kept per group view until a device list changes (see ``_on_notification``)."""
        key = (info.jid, info.phash)
        cached = self._group_devices.get(key)
        if cached is not None and not refresh:
            return cached
        devices: list[Jid] = []
        for user in info.members:
            if user == self.jid.bare:
                devices.append(self.jid)
                continue
            devices.extend((await self.get_devices(user, refresh=refresh)).devices())
        self._group_devices[key] = devices
        return devices

    async def _holding(self, users: Iterable[Jid]) -> contextlib.AsyncExitStack:
        stack = contextlib.AsyncExitStack()
        for user in sorted(set(users)):
            await stack.enter_async_context(self._peer_locks(user))
        return stack

    async def encrypt_group_message(
        self,
        group: Jid,
        content: Content,
        message_type: str = "text",
        message_id: str | None = None,
        *,
        persist: Persist | None = None,
    ) -> PreparedMessage:
        """The body under our sender key, and the key for every device that lacks it;
        committed with ``persist(prepared)`` before this returns, nothing sent."""
        stanza_id = message_id or self.new_id()
        async with self._peer_locks(group):
            info = await self.group_info(group)
            if self.jid.bare not in info.members:
                raise GipError(GipErrorCode.FORBIDDEN, "not a participant of this group")
            devices = await self._participant_devices(info)
            prepared = await self._seal(
                stanza_id, group, message_type, int(self._clock()), content, devices, {}, persist
            )
        await self.retries.remember_sent(
            SentMessage(stanza_id, group, message_type, content.SerializeToString(), prepared.devices)
        )
        return prepared

    async def _seal(
        self,
        stanza_id: str,
        group: Jid,
        message_type: str,
        t: int,
        content: Content,
        devices: list[Jid],
        done: dict[Jid, st.Enc],
        persist: Persist | None,
        body: st.Enc | None = None,
    ) -> PreparedMessage:
        """Hand our key to the devices without it (and not in ``done``); encrypt the body
        unless it is given (a resend keeps its ciphertext). The group's lock is held."""
        stage = StagedSignalStore(self.store)
        cipher = GroupCipher(stage, str(group))
        own = self.jid.signal_address()
        holders = await self.sender_keys.holders(group)
        me = self.jid
        needing = [d for d in devices if d != me and d not in holders and d not in done]
        changes: list[IdentityChangedEvent] = []
        async with await self._holding(d.bare for d in needing):
            failed = set(await self._open_sessions(stage, needing, changes))
            handover = b""
            ours = await stage.load_sender_key(own, str(group))
            if needing or ours is None or not ours.states:
                # Our key (made on first use, or after a rotation), for whoever lacks it.
                distribution = await cipher.create_distribution_message(own)
                handover = encode_content(_key_content(group, distribution))
            participants = dict(done)
            for device in needing:
                if device in failed:
                    log.warning("the gatekeeper has no keys for a participant device; it cannot read the group")
                    continue
                participants[device] = await self._encrypt(stage, device, handover)
            if body is None:
                sealed = await cipher.encrypt(own, encode_content(content))
                body = st.Enc(st.EncType.SKMSG, sealed.serialized)
            ordered = tuple(sorted(participants.items(), key=lambda item: item[0]))
            prepared = PreparedMessage(stanza_id, group, message_type, t, gp.group_hash(devices), ordered, body)
            async with self._atomic():
                await stage.commit()
                await self.sender_keys.add_holders(group, [d for d in needing if d not in failed])
                for change in changes:
                    await self.on_event(change)
                if persist is not None:
                    await persist(prepared)
        return prepared

    async def send_group_prepared(
        self, prepared: PreparedMessage, content: Content, *, persist: Persist | None = None
    ) -> PreparedMessage:
        """Send (again); a 409 refetches the group and its devices, hands the key to the new
        ones and sends the same id with the same body."""
        for _ in range(MAX_409_RESENDS):
            ack = await self._await(("ack", prepared.id), prepared.stanza().node())
            error = ack.get("error")
            if error is None:
                return prepared
            code = GipErrorCode.from_wire(error)
            if code is not GipErrorCode.CONFLICT:
                retry = ack.get("retry_after")
                raise GipError(code, "message refused", retry_after=int(retry) if retry and retry.isdigit() else None)
            async with self._peer_locks(prepared.to):
                info = await self.group_info(prepared.to, refresh=True)
                devices = await self._participant_devices(info, refresh=True)
                prepared = await self._seal(
                    prepared.id,
                    prepared.to,
                    prepared.type,
                    prepared.t,
                    content,
                    devices,
                    {d: e for d, e in prepared.participants if d in devices},
                    persist,
                    prepared.body,
                )
        raise GipError(GipErrorCode.CONFLICT, "the group kept changing")

    async def send_group_message(
        self, group: Jid, content: Content, message_type: str = "text", message_id: str | None = None
    ) -> str:
        prepared = await self.encrypt_group_message(group, content, message_type, message_id)
        await self.send_group_prepared(prepared, content)
        return prepared.id

    async def send_group_receipt(self, group: Jid, author: Jid, message_ids: list[str], *, read: bool) -> None:
        kind = st.ReceiptType.READ if read else st.ReceiptType.DELIVERED
        ids = tuple(message_ids) if read else ()
        receipt = st.Receipt(message_ids[0], group, kind, ids, participant=author)
        await self._send(receipt.node(direction="to"))

    async def _rotate(self, group: Jid) -> None:
        """Someone left: our next message goes under a new key, handed to everyone."""
        async with self._peer_locks(group), self._atomic():
            await self.store.store_sender_key(self.jid.signal_address(), str(group), SenderKeyRecord())  # type: ignore[attr-defined]
            await self.sender_keys.forget(group)

    # ------------------------------------------------------------------ receiving

    async def _on_group_message(self, message: gp.IncomingGroupMessage) -> None:
        author = message.sender
        async with self._peer_locks(message.group), self._peer_locks(author.bare):
            stage = StagedSignalStore(self.store)
            identity_changed = False
            try:
                content: Content | None = None
                if message.enc is not None:
                    kind = MessageType.PREKEY if message.enc.type is st.EncType.PKMSG else MessageType.WHISPER
                    result = await self._cipher(stage, author).decrypt(kind, message.enc.ciphertext)
                    identity_changed = result.identity_change is IdentityChange.REPLACED_EXISTING
                    pairwise = decode_content(result.plaintext)
                    if pairwise.HasField("sender_key_distribution"):
                        await _take_key(stage, message.group, author, pairwise.sender_key_distribution)
                    if pairwise.WhichOneof("body") is not None:
                        content = pairwise  # a retry's answer carries the body pairwise
                if content is None and message.body is not None:
                    plaintext = await GroupCipher(stage, str(message.group)).decrypt(
                        author.signal_address(), message.body.ciphertext
                    )
                    content = decode_content(plaintext)
                if content is None:
                    raise GipError(GipErrorCode.BAD_REQUEST, "a group message without a body")
            except DuplicateMessageError:
                await self._group_receipt(message)
                return
            except (SignalError, GipError) as exc:
                await self._group_undecryptable(message, type(exc).__name__)
                return
            event = GroupMessageEvent(
                message.id,
                message.group,
                author,
                message.type,
                message.t,
                content,
                identity_changed,
                message.offline,
                message.sender_uvid,
            )

            async def store() -> None:
                async with self._atomic():
                    await stage.commit()
                    await self.on_event(event)

            await self._handle_durably(store, "a group message")
        await self._group_receipt(message)

    async def _group_receipt(self, message: gp.IncomingGroupMessage) -> None:
        await self.send_group_receipt(message.group, message.sender.bare, [message.id], read=False)

    async def _group_undecryptable(self, message: gp.IncomingGroupMessage, error: str) -> None:
        count = await self.retries.count_failure(message.sender, message.id)
        event = GroupUndecryptableEvent(message.id, message.group, message.sender, error, count)
        await self._handle_durably(lambda: self.on_event(event), "an undecryptable group message's notice")
        if count <= st.MAX_RETRY_COUNT:
            keys = await self._current_bundle() if count >= 2 else None
            receipt = st.Receipt(
                message.id,
                message.group,
                st.ReceiptType.RETRY,
                retry_count=count,
                retry_t=int(self._clock()),
                registration_id=await self.store.get_local_registration_id(),
                keys=keys,
                participant=message.sender,
            )
            await self._send(receipt.node(direction="to"))
        else:
            await self._group_receipt(message)

    async def _resend_group_for_retry(self, receipt: st.Receipt) -> None:
        """A participant device could not read our group message: it gets the body and our
        current key pairwise, and only a device of a participant it went to."""
        sent = await self.retries.sent(receipt.id)
        device = receipt.participant
        if sent is None or device is None or sent.to != receipt.peer or receipt.retry_count > st.MAX_RETRY_COUNT:
            return
        async with self._peer_locks(sent.to):
            info = await self.group_info(sent.to)
            if device.bare not in info.members:
                log.warning("refused a group retry receipt from a device that is not a participant")
                return
            content = Content()
            content.ParseFromString(sent.content)
            async with self._peer_locks(device.bare):
                stage = StagedSignalStore(self.store)
                distribution = await GroupCipher(stage, str(sent.to)).create_distribution_message(
                    self.jid.signal_address()
                )
                content.sender_key_distribution.CopyFrom(_key_content(sent.to, distribution).sender_key_distribution)
                cipher = self._cipher(stage, device)
                bundle = receipt.keys
                if bundle is None and receipt.retry_count >= 2:
                    fetched = (await self.fetch_bundles([device]))[0]
                    bundle = fetched if isinstance(fetched, st.Bundle) else None
                if bundle is not None and bundle.jid == device:
                    await cipher.process_bundle(bundle.to_signal())
                elif not await cipher.has_session():
                    return
                enc = await self._encrypt(stage, device, encode_content(content))
                devices = await self._participant_devices(info)
                async with self._atomic():
                    await stage.commit()
                    await self.sender_keys.add_holders(sent.to, [device])
        message = gp.OutgoingGroupMessage(
            receipt.id, sent.to, sent.type, int(self._clock()), gp.group_hash(devices), ((device, enc),), None
        )
        await self._await(("ack", receipt.id), message.node())

    async def _on_group_notice(self, notice: gp.GroupNotice) -> None:
        """A change of a group: a departure replaces our key first (durably, with the event)."""
        gone = notice.action is gp.GroupAction.REMOVE or notice.action is gp.GroupAction.LEAVE
        me_gone = (notice.action is gp.GroupAction.LEAVE and notice.actor == self.jid.bare) or (
            notice.action is gp.GroupAction.REMOVE and self.jid.bare in notice.participants
        )
        event = GroupEvent(notice)

        async def store() -> None:
            async with self._peer_locks(notice.group), self._atomic():
                if gone and not me_gone:
                    await self.store.store_sender_key(  # type: ignore[attr-defined]
                        self.jid.signal_address(), str(notice.group), SenderKeyRecord()
                    )
                    await self.sender_keys.forget(notice.group)
                await self.on_event(event)

        await self._handle_durably(store, "a group change")
        if me_gone:
            self._groups.pop(notice.group, None)
        elif notice.info is not None:
            self._groups[notice.group] = notice.info
        else:
            self._groups.pop(notice.group, None)  # refetched on the next send


def _key_content(group: Jid, distribution: SenderKeyDistributionMessage) -> Content:
    return Content(sender_key_distribution=SenderKeyDistribution(group_id=str(group), axolotl=distribution.serialized))


async def _take_key(stage: StagedSignalStore, group: Jid, author: Jid, handed: SenderKeyDistribution) -> None:
    if handed.group_id != str(group):
        raise GipError(GipErrorCode.BAD_REQUEST, "a sender key for another group")
    message = SenderKeyDistributionMessage.deserialize(handed.axolotl)
    await GroupCipher(stage, str(group)).process_distribution_message(author.signal_address(), message)
