"""Groups in the sandbox gatekeeper (interop profile §9): the ``groups`` iqs with their
rules (limits, admin rights, reachability), notifications to every participant, the
fan-out of Sender Keys messages with their pairwise key hand-overs, receipts and typing
with ``participant``, and natives taking part with sender keys of their own.

Natives rotate their sender key when someone leaves or is removed, hand it to every
participant device that lacks it, and answer a retry receipt with the body and their key
pairwise, as the profile asks of every sender.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from google.protobuf.json_format import MessageToDict

from bridge.gip import groups as gp
from bridge.gip import stanzas as st
from bridge.gip.content import Content, SenderKeyDistribution, decode_content, encode_content
from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.jid import Jid
from bridge.gip.stanza import Node
from bridge.signal import GroupCipher, SenderKeyDistributionMessage, SenderKeyRecord, SignalError

from .group_store import GroupStore
from .natives import NativeDevice
from .store import User

if TYPE_CHECKING:
    from .gatekeeper import Gatekeeper

Followups = list[Callable[[], Awaitable[None]]]


class SandboxGroups:
    def __init__(self, gk: Gatekeeper) -> None:
        self.gk = gk
        self.store = GroupStore(gk.store)

    # ------------------------------------------------------------------ addresses

    def user_jid(self, user: User) -> Jid:
        from .gatekeeper import native_jid

        return native_jid(user) if user.kind == "native" else Jid.parse(user.iid)

    def devices_of(self, iid: str) -> list[Jid]:
        user = self.gk.store.user(iid)
        if user is None:
            return []
        base = self.user_jid(user)
        return [base.with_device(d) for d in self.gk.device_list(iid)]

    def info(self, jid: str) -> gp.GroupInfo:
        row = self.store.group(jid)
        if row is None:
            raise GipError(GipErrorCode.NOT_FOUND, "no such group")
        members = self.store.participants(jid)
        devices = [d for iid, _ in members for d in self.devices_of(iid)]
        participants = tuple(
            gp.Participant(self.user_jid(user), admin, user.uvid)
            for iid, admin in members
            if (user := self.gk.store.user(iid)) is not None
        )
        creator = self.gk.store.user(row.creator)
        creator_jid = self.user_jid(creator) if creator is not None else Jid.parse(row.creator)
        return gp.GroupInfo(Jid.parse(jid), row.subject, creator_jid, row.t, gp.group_hash(devices), participants)

    def shares_group(self, a: str, b: str) -> bool:
        return bool(set(self.store.groups_of(a)) & set(self.store.groups_of(b)))

    # ------------------------------------------------------------------ rules

    def _may_add(self, adder: User, iid: str) -> bool:
        """§9 reachability: one answer (403) for not opted in, restricted, and blocked."""
        other = self.gk.store.user(iid)
        if other is None or other.iid == adder.iid:
            return False
        if other.kind == "native":
            return self.gk.reachable(adder, other) and not self.gk.store.is_blocked(other.iid, adder.iid)
        return not self.gk.store.is_blocked(other.iid, adder.iid) and not other.suspended

    def _limit(self) -> int:
        return self.gk.config.policies.group_max_participants

    def _member(self, group: str, user: User) -> None:
        if self.store.group(group) is None or not self.store.is_member(group, user.iid):
            raise GipError(GipErrorCode.NOT_FOUND, "not a participant of this group")

    def _admin(self, group: str, user: User) -> None:
        if self.gk.config.policies.group_admin_only and not self.store.is_admin(group, user.iid):
            raise GipError(GipErrorCode.FORBIDDEN, "only admins may do this")

    # ------------------------------------------------------------------ changes (iqs and control)

    async def handle_iq(self, user: User, node: Node) -> list[Node]:
        request = gp.parse_request(node)
        if request.action is None and request.group is None:
            return [self.info(g).node() for g in self.store.groups_of(user.iid)]
        if request.action is None:
            assert request.group is not None
            self._member(str(request.group), user)
            return [self.info(str(request.group)).node()]
        result = await self.change(user, request)
        return result.nodes() if result is not None else []

    async def change(self, user: User, request: gp.GroupRequest) -> gp.GroupResult | None:
        now = int(self.gk.clock.now())
        action = request.action
        iids = [str(j.bare) for j in request.participants]
        if action is gp.GroupAction.CREATE:
            if len(set(iids)) + 1 > self._limit():
                raise GipError(GipErrorCode.NOT_ACCEPTABLE, "over the participant limit")
            group = self.store.create(request.subject, user.iid, now)
            self.store.add(group, user.iid, admin=True)
            refused = [j for j in request.participants if not self._may_add(user, str(j.bare))]
            added = [i for i in dict.fromkeys(iids) if Jid.parse(i) not in refused]
            for iid in added:
                self.store.add(group, iid)
            info = self.info(group)
            await self._announce(group, user, gp.GroupAction.CREATE, (), info, also=[])
            return gp.GroupResult(info, tuple(refused))
        assert request.group is not None
        group = str(request.group)
        self._member(group, user)
        if action is gp.GroupAction.SUBJECT:
            self.store.set_subject(group, request.subject)
            info = self.info(group)
            await self._announce(group, user, action, (), info, subject=request.subject)
            return gp.GroupResult(info)
        if action is gp.GroupAction.LEAVE:
            await self._leave(group, user)
            return None
        self._admin(group, user)
        members = {iid for iid, _ in self.store.participants(group)}
        if action is gp.GroupAction.ADD:
            new = [i for i in dict.fromkeys(iids) if i not in members]
            if len(members) + len(new) > self._limit():
                raise GipError(GipErrorCode.NOT_ACCEPTABLE, "over the participant limit")
            refused = tuple(Jid.parse(i) for i in new if not self._may_add(user, i))
            added = [i for i in new if Jid.parse(i) not in refused]
            for iid in added:
                self.store.add(group, iid)
            info = self.info(group)
            if added:
                await self._announce(group, user, action, tuple(Jid.parse(i) for i in added), info)
            return gp.GroupResult(info, refused)
        targets = [i for i in dict.fromkeys(iids) if i in members]
        if action is gp.GroupAction.REMOVE:
            for iid in targets:
                self.store.remove(group, iid)
            self._keep_an_admin(group)
            info = self.info(group)
            await self._announce(group, user, action, tuple(Jid.parse(i) for i in targets), info, also=targets)
            await self._natives_rotate(group)
            return gp.GroupResult(info)
        for iid in targets:
            self.store.set_admin(group, iid, action is gp.GroupAction.PROMOTE)
        self._keep_an_admin(group)
        info = self.info(group)
        await self._announce(group, user, action, tuple(Jid.parse(i) for i in targets), info)
        return gp.GroupResult(info)

    async def _leave(self, group: str, user: User) -> None:
        self.store.remove(group, user.iid)
        if not self.store.participants(group):
            self.store.delete(group)
            return
        self._keep_an_admin(group)
        await self._announce(group, user, gp.GroupAction.LEAVE, (), self.info(group), also=[user.iid])
        await self._natives_rotate(group)

    def _keep_an_admin(self, group: str) -> None:
        """The last admin gone: the longest-standing member becomes one."""
        members = self.store.participants(group)
        if members and not any(admin for _, admin in members):
            self.store.set_admin(group, members[0][0], True)

    async def _announce(
        self,
        group: str,
        actor: User,
        action: gp.GroupAction,
        participants: tuple[Jid, ...],
        info: gp.GroupInfo,
        *,
        subject: str = "",
        also: list[str] | None = None,
    ) -> None:
        """Every participant hears of it (the actor too, on its other connection); those
        who just left or were removed hear it as their last word from the group."""
        recipients = [iid for iid, _ in self.store.participants(group)] + list(also or [])
        for iid in dict.fromkeys(recipients):
            user = self.gk.store.user(iid)
            if user is None or (iid == actor.iid and action is gp.GroupAction.CREATE):
                continue
            notice = gp.GroupNotice(
                self.gk.new_stanza_id(),
                Jid.parse(group),
                self.user_jid(actor),
                int(self.gk.clock.now()),
                action,
                participants,
                subject,
                info,
            )
            if user.kind == "partner":
                await self.gk.deliver(iid, "notification", notice.id, str(group), notice.node())
            else:
                self.gk.store.log_native(
                    iid,
                    "-",
                    {
                        "event": "group",
                        "group": group,
                        "action": action.value,
                        "actor": actor.iid,
                        "participants": [str(p) for p in participants],
                        "subject": subject,
                    },
                    self.gk.clock.now(),
                )

    # ------------------------------------------------------------------ messages from Partners

    async def accept_message(self, sender: User, message: gp.OutgoingGroupMessage) -> tuple[Node, Followups]:
        now = self.gk.clock.now()
        group = str(message.to)
        if self.store.group(group) is None or not self.store.is_member(group, sender.iid):
            return st.ack(message.id, "message", error=GipErrorCode.FORBIDDEN), []
        info = self.info(group)
        if message.phash != info.phash:
            return st.ack(message.id, "message", error=GipErrorCode.CONFLICT), []
        devices = {d for iid, _ in self.store.participants(group) for d in self.devices_of(iid)}
        if any(d not in devices for d, _ in message.participants):
            return st.ack(message.id, "message", error=GipErrorCode.CONFLICT), []
        sender_device = Jid.parse(sender.iid)
        followups: Followups = []
        pairwise = dict(message.participants)
        for device in sorted(devices):
            if device.bare == sender_device.bare:
                continue
            enc = pairwise.get(device)
            if message.body is None and enc is None:
                continue  # a retry's answer goes to the one device that asked
            if not self.gk.store.mark_seen(sender.iid, f"{message.id}/{device}", now):
                continue
            incoming = gp.IncomingGroupMessage(
                message.id,
                message.to,
                sender_device,
                message.type,
                int(now),
                enc,
                message.body,
                sender_uvid=sender.uvid,
            )
            await self._hand_to(device, incoming, sender, followups)
        return st.ack(message.id, "message", t=int(now)), followups

    async def _hand_to(self, device: Jid, message: gp.IncomingGroupMessage, sender: User, followups: Followups) -> None:
        recipient = self.gk.store.user(str(device.bare))
        if recipient is None:
            return
        if recipient.kind == "partner":
            await self.gk.deliver(recipient.iid, "message", message.id, sender.iid, message.node())
            return
        if await self._native_receive(recipient, device, message, followups) and device.device == 0:
            author = message.sender
            followups.append(lambda: self._receipt_to_author(message, author, device, st.ReceiptType.DELIVERED))
            if recipient.read_receipts:
                followups.append(lambda: self._receipt_to_author(message, author, device, st.ReceiptType.READ))

    async def _receipt_to_author(
        self, message: gp.IncomingGroupMessage, author: Jid, reader: Jid, kind: st.ReceiptType
    ) -> None:
        ids = (message.id,) if kind is st.ReceiptType.READ else ()
        receipt = st.Receipt(message.id, message.group, kind, ids, participant=reader)
        await self.gk.deliver(
            str(author.bare), f"receipt:{kind.value}", message.id, str(reader.bare), receipt.node(direction="from")
        )

    async def _native_receive(
        self, native: User, device: Jid, message: gp.IncomingGroupMessage, followups: Followups
    ) -> bool:
        nd = NativeDevice(self.gk.store, device, self.gk.clock.now_ms)
        author = message.sender
        try:
            content: Content | None = None
            if message.enc is not None:
                plaintext, _ = await nd.decrypt(author, message.enc)
                pairwise = decode_content(plaintext)
                if pairwise.HasField("sender_key_distribution"):
                    handed = pairwise.sender_key_distribution
                    distribution = SenderKeyDistributionMessage.deserialize(handed.axolotl)
                    await GroupCipher(nd.signal, handed.group_id).process_distribution_message(
                        author.signal_address(), distribution
                    )
                if pairwise.WhichOneof("body") is not None:
                    content = pairwise
            if content is None and message.body is not None:
                plaintext = await GroupCipher(nd.signal, str(message.group)).decrypt(
                    author.signal_address(), message.body.ciphertext
                )
                content = decode_content(plaintext)
            if content is None:
                return True  # a key hand-over alone
        except (SignalError, GipError) as exc:
            self.gk.store.log_native(
                native.iid,
                str(device),
                {
                    "event": "undecryptable",
                    "group": str(message.group),
                    "from": str(author),
                    "id": message.id,
                    "error": type(exc).__name__,
                },
                self.gk.clock.now(),
            )
            key = f"{message.group}/{author}/{message.id}"
            count = int.from_bytes(self.gk.store.signal_get(str(device), "retry", key) or b"\x00", "big") + 1
            self.gk.store.signal_put(str(device), "retry", key, bytes((min(count, 255),)))
            if count <= st.MAX_RETRY_COUNT:
                followups.append(lambda: self._native_asks_again(nd, message, count))
            return False
        self.gk.store.log_native(
            native.iid,
            str(device),
            {
                "event": "message",
                "group": str(message.group),
                "from": str(author),
                "id": message.id,
                "type": message.type,
                "content": MessageToDict(content),
            },
            self.gk.clock.now(),
        )
        return True

    async def _native_asks_again(self, nd: NativeDevice, message: gp.IncomingGroupMessage, count: int) -> None:
        keys = await nd.fresh_bundle() if count >= 2 else None
        receipt = st.Receipt(
            message.id,
            message.group,
            st.ReceiptType.RETRY,
            retry_count=count,
            retry_t=int(self.gk.clock.now()),
            registration_id=await nd.signal.get_local_registration_id(),
            keys=keys,
            participant=nd.jid,
        )
        author = message.sender
        # The author's answer (the same id, for this device) must be let through once more.
        self.gk.store.unmark_seen(str(author.bare), f"{message.id}/{nd.jid}")
        await self.gk.deliver(
            str(author.bare), "receipt:retry", message.id, str(nd.jid.bare), receipt.node(direction="from")
        )

    # ------------------------------------------------------------------ receipts and typing from Partners

    async def partner_receipt(self, partner: User, receipt: st.Receipt) -> None:
        """``<receipt to=G participant=AUTHOR>``: forwarded to the author, naming the reader."""
        group = str(receipt.peer)
        if receipt.participant is None or not self.store.is_member(group, partner.iid):
            return
        author = self.gk.store.user(str(receipt.participant.bare))
        if author is None:
            return
        reader = Jid.parse(partner.iid)
        if author.kind == "partner":
            if receipt.type is st.ReceiptType.RETRY:
                self.gk.store.unmark_seen(author.iid, f"{receipt.id}/{reader}")
            forwarded = st.Receipt(
                receipt.id,
                receipt.peer,
                receipt.type,
                receipt.message_ids,
                receipt.retry_count,
                receipt.retry_t,
                receipt.registration_id,
                receipt.keys,
                participant=reader,
            )
            await self.gk.deliver(
                author.iid, f"receipt:{receipt.type.value}", receipt.id, partner.iid, forwarded.node(direction="from")
            )
            return
        event: dict[str, Any] = {"event": "receipt", "group": group, "type": receipt.type.value, "from": partner.iid}
        event["id"] = receipt.id
        if receipt.type is st.ReceiptType.READ:
            event["ids"] = list(receipt.message_ids)
        self.gk.store.log_native(author.iid, str(receipt.participant), event, self.gk.clock.now())
        if receipt.type is st.ReceiptType.RETRY:
            await self._native_answers_retry(author, receipt.participant, reader, receipt)

    async def chatstate(self, partner: User, group: str, state: st.ChatState) -> None:
        if not self.store.is_member(group, partner.iid):
            return
        for iid, _ in self.store.participants(group):
            if iid == partner.iid:
                continue
            user = self.gk.store.user(iid)
            if user is None:
                continue
            if user.kind == "partner":
                connection = self.gk.connection(iid)
                if connection is not None and connection.ready:
                    node = st.chatstate(Jid.parse(group), state, direction="from", participant=Jid.parse(partner.iid))
                    await connection.send_raw(self.gk.encode(node))
            else:
                event = {"event": "chatstate", "group": group, "from": partner.iid, "state": state.value}
                self.gk.store.log_native(iid, "-", event, self.gk.clock.now())

    # ------------------------------------------------------------------ natives sending

    async def native_send(
        self,
        native_iid: str,
        group: str,
        content: Content,
        message_type: str,
        device: int = 0,
        message_id: str | None = None,
    ) -> str:
        native = self.gk.store.user(native_iid)
        if native is None or native.kind != "native" or not self.store.is_member(group, native_iid):
            raise GipError(GipErrorCode.FORBIDDEN, "not a participant of this group")
        sender = self.user_jid(native).with_device(device)
        nd = NativeDevice(self.gk.store, sender, self.gk.clock.now_ms)
        stanza_id = message_id or self.gk.new_stanza_id()
        cipher = GroupCipher(nd.signal, group)
        distribution = await cipher.create_distribution_message(sender.signal_address())
        holders = self._holders(sender, group)
        devices = [d for iid, _ in self.store.participants(group) for d in self.devices_of(iid) if d != sender]
        handover = Content(
            sender_key_distribution=SenderKeyDistribution(group_id=group, axolotl=distribution.serialized)
        )
        pairwise: dict[Jid, st.Enc] = {}
        for target in devices:
            if str(target) in holders:
                continue
            bundle = None
            if not await nd.has_session(target):
                fetched = self.gk.bundle_for(target)
                if isinstance(fetched, st.BundleError):
                    continue
                bundle = fetched
            pairwise[target] = await nd.encrypt(target, encode_content(handover), bundle)
            holders.add(str(target))
        body = await cipher.encrypt(sender.signal_address(), encode_content(content))
        self._set_holders(sender, group, holders)
        self.gk.store.signal_put(
            str(sender), "sent", f"{group}/{stanza_id}", message_type.encode() + b"\n" + content.SerializeToString()
        )
        self.gk.store.log_native(
            native.iid,
            str(sender),
            {"event": "sent", "group": group, "id": stanza_id, "content": MessageToDict(content)},
            self.gk.clock.now(),
        )
        skmsg = st.Enc(st.EncType.SKMSG, body.serialized)
        followups: Followups = []
        now = int(self.gk.clock.now())
        for target in devices:
            incoming = gp.IncomingGroupMessage(
                stanza_id,
                Jid.parse(group),
                sender,
                message_type,
                now,
                pairwise.get(target),
                skmsg,
                sender_uvid=native.uvid,
            )
            await self._hand_to(target, incoming, native, followups)
        for followup in followups:
            await followup()
        return stanza_id

    def _holders(self, device: Jid, group: str) -> set[str]:
        raw = self.gk.store.signal_get(str(device), "skholders", group)
        return set(json.loads(raw)) if raw else set()

    def _set_holders(self, device: Jid, group: str, holders: set[str]) -> None:
        self.gk.store.signal_put(str(device), "skholders", group, json.dumps(sorted(holders)).encode())

    async def _natives_rotate(self, group: str) -> None:
        """Someone left: every native sender replaces its key before its next message."""
        for iid, _ in self.store.participants(group):
            user = self.gk.store.user(iid)
            if user is None or user.kind != "native":
                continue
            for device in self.devices_of(iid):
                nd = NativeDevice(self.gk.store, device, self.gk.clock.now_ms)
                await nd.signal.store_sender_key(device.signal_address(), group, SenderKeyRecord())
                self.gk.store.signal_delete(str(device), "skholders", group)

    async def _native_answers_retry(self, native: User, device: Jid, reader: Jid, receipt: st.Receipt) -> None:
        """The body and our current key, pairwise, for the device that asked."""
        group = str(receipt.peer)
        sent = self.gk.store.signal_get(str(device), "sent", f"{group}/{receipt.id}")
        if (
            sent is None
            or receipt.retry_count > st.MAX_RETRY_COUNT
            or not self.store.is_member(group, str(reader.bare))
        ):
            return
        message_type, raw = sent.split(b"\n", 1)
        content = Content()
        content.ParseFromString(raw)
        nd = NativeDevice(self.gk.store, device, self.gk.clock.now_ms)
        distribution = await GroupCipher(nd.signal, group).create_distribution_message(device.signal_address())
        content.sender_key_distribution.CopyFrom(SenderKeyDistribution(group_id=group, axolotl=distribution.serialized))
        bundle = receipt.keys
        if bundle is None and receipt.retry_count >= 2:
            fetched = self.gk.bundle_for(reader)
            bundle = fetched if isinstance(fetched, st.Bundle) else None
        enc = await nd.encrypt(reader, encode_content(content), bundle)
        self.gk.store.log_native(
            native.iid,
            str(device),
            {"event": "resent", "group": group, "id": receipt.id, "count": receipt.retry_count},
            self.gk.clock.now(),
        )
        incoming = gp.IncomingGroupMessage(
            receipt.id,
            receipt.peer,
            device,
            message_type.decode(),
            int(self.gk.clock.now()),
            enc,
            None,
            sender_uvid=native.uvid,
        )
        await self.gk.deliver(str(reader.bare), "message", receipt.id, native.iid, incoming.node())
