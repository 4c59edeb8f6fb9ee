"""Builders and parsers for every stanza of GIP §4 (ours: the XML shapes).

Binary values travel as standard base64 (RFC 4648 §4, padded) in element text. Builders
return :class:`Node`; parsers take a Node and return typed values, raising ``GipError``
400 when a required part is missing or malformed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from bridge.signal import PreKeyBundle, PublicKey

from .errors import GipError, GipErrorCode
from .jid import Jid
from .stanza import Node

XMLNS_PING = "w:p"
XMLNS_KEYS = "encrypt"
XMLNS_DEVICES = "usync"
XMLNS_REACH = "reach"
XMLNS_BLOCKLIST = "blocklist"
XMLNS_ACCOUNT = "account"

MAX_ID_LENGTH = 64
MAX_RETRY_COUNT = 5
ENC_VERSION = "2"


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode()


def b64d(text: str | None, *, length: int | None = None, what: str = "value") -> bytes:
    if text is None:
        raise GipError(GipErrorCode.BAD_REQUEST, f"{what} is missing")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise GipError(GipErrorCode.BAD_REQUEST, f"{what} is not base64") from None
    if length is not None and len(data) != length:
        raise GipError(GipErrorCode.BAD_REQUEST, f"{what} must be {length} bytes")
    return data


def _int_bytes(value: int, length: int) -> str:
    return b64e(value.to_bytes(length, "big"))


def _bytes_int(text: str | None, length: int, what: str) -> int:
    return int.from_bytes(b64d(text, length=length, what=what), "big")


def check_id(stanza_id: str) -> str:
    if not stanza_id or len(stanza_id) > MAX_ID_LENGTH:
        raise GipError(GipErrorCode.BAD_REQUEST, "stanza id must be 1 to 64 characters")
    return stanza_id


def device_list_hash(device_ids: Iterable[int]) -> str:
    """First 8 bytes of SHA-256 over the sorted device ids, as hex (ours)."""
    joined = ",".join(str(i) for i in sorted(set(device_ids)))
    return hashlib.sha256(joined.encode()).digest()[:8].hex()


# --------------------------------------------------------------------------- iq


def iq(stanza_id: str, iq_type: str, xmlns: str, *children: Node, **attrs: str) -> Node:
    return Node("iq", {"id": check_id(stanza_id), "type": iq_type, "xmlns": xmlns, **attrs}, list(children))


def iq_result(stanza_id: str, *children: Node) -> Node:
    return Node("iq", {"id": stanza_id, "type": "result"}, list(children))


def iq_error(stanza_id: str, code: GipErrorCode, text: str = "", retry_after: int | None = None) -> Node:
    error = Node("error", {"code": code.value, "text": text})
    if retry_after is not None:
        error.attrs["retry_after"] = str(retry_after)
    return Node("iq", {"id": stanza_id, "type": "error"}, [error])


def raise_for_iq_error(node: Node) -> Node:
    """Return a result iq, or raise the GipError an error iq carries."""
    if node.get("type") == "error":
        error = node.child("error")
        code = GipErrorCode.from_wire(error.get("code", "500") if error else "500")
        retry = error.get("retry_after") if error else None
        raise GipError(
            code,
            (error.get("text") if error else "") or "",
            retry_after=int(retry) if retry and retry.isdigit() else None,
        )
    return node


def ping(stanza_id: str) -> Node:
    return iq(stanza_id, "get", XMLNS_PING, Node("ping"))


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True)
class PreKey:
    id: int
    public: bytes  # 32 bytes


@dataclass(frozen=True, slots=True)
class SignedPreKey:
    id: int
    public: bytes  # 32 bytes
    signature: bytes  # 64 bytes


def _key_node(tag: str, key: PreKey | SignedPreKey) -> Node:
    node = Node(tag, children=[Node("id", text=_int_bytes(key.id, 3)), Node("value", text=b64e(key.public))])
    if isinstance(key, SignedPreKey):
        node.children.append(Node("signature", text=b64e(key.signature)))
    return node


def _parse_prekey(node: Node) -> PreKey:
    return PreKey(
        _bytes_int(node.require_child("id").text, 3, "prekey id"),
        b64d(node.require_child("value").text, length=32, what="prekey"),
    )


def _parse_signed_prekey(node: Node) -> SignedPreKey:
    return SignedPreKey(
        _bytes_int(node.require_child("id").text, 3, "signed prekey id"),
        b64d(node.require_child("value").text, length=32, what="signed prekey"),
        b64d(node.require_child("signature").text, length=64, what="signature"),
    )


def upload_prekeys(stanza_id: str, keys: Sequence[PreKey]) -> Node:
    return iq(stanza_id, "set", XMLNS_KEYS, Node("list", children=[_key_node("key", k) for k in keys]))


def parse_upload_prekeys(node: Node) -> list[PreKey]:
    return [_parse_prekey(k) for k in node.require_child("list").all("key")]


def rotate_signed_prekey(stanza_id: str, key: SignedPreKey) -> Node:
    return iq(stanza_id, "set", XMLNS_KEYS, Node("rotate", children=[_key_node("skey", key)]))


def parse_rotate_signed_prekey(node: Node) -> SignedPreKey:
    return _parse_signed_prekey(node.require_child("rotate").require_child("skey"))


def count_prekeys(stanza_id: str) -> Node:
    return iq(stanza_id, "get", XMLNS_KEYS, Node("count"))


def count_node(value: int) -> Node:
    return Node("count", {"value": str(value)})


def parse_count(node: Node) -> int:
    return node.require_child("count").int_attr("value")


@dataclass(frozen=True, slots=True)
class Bundle:
    """One device's keys, as fetched (``pre_key`` absent when they ran out)."""

    jid: Jid
    registration_id: int
    identity: bytes  # 32 bytes
    signed_pre_key: SignedPreKey
    pre_key: PreKey | None

    def to_signal(self) -> PreKeyBundle:
        """The bundle as ``bridge.signal`` takes it to open a session."""
        return PreKeyBundle(
            registration_id=self.registration_id,
            device_id=self.jid.device,
            pre_key_id=self.pre_key.id if self.pre_key else None,
            pre_key=PublicKey(self.pre_key.public) if self.pre_key else None,
            signed_pre_key_id=self.signed_pre_key.id,
            signed_pre_key=PublicKey(self.signed_pre_key.public),
            signed_pre_key_signature=self.signed_pre_key.signature,
            identity_key=PublicKey(self.identity),
        )


@dataclass(frozen=True, slots=True)
class BundleError:
    jid: Jid
    code: GipErrorCode


def fetch_bundles(stanza_id: str, devices: Sequence[Jid]) -> Node:
    return iq(
        stanza_id,
        "get",
        XMLNS_KEYS,
        Node("key", children=[Node("user", {"jid": str(d)}) for d in devices]),
    )


def parse_fetch_bundles(node: Node) -> list[Jid]:
    return [Jid.parse(user.attr("jid")) for user in node.require_child("key").all("user")]


def bundle_node(bundle: Bundle) -> Node:
    children = [
        Node("registration", text=_int_bytes(bundle.registration_id, 4)),
        Node("type", text=b64e(b"\x05")),
        Node("identity", text=b64e(bundle.identity)),
        _key_node("skey", bundle.signed_pre_key),
    ]
    if bundle.pre_key is not None:
        children.append(_key_node("key", bundle.pre_key))
    return Node("user", {"jid": str(bundle.jid)}, children)


def bundle_error_node(jid: Jid, code: GipErrorCode) -> Node:
    return Node("user", {"jid": str(jid)}, [Node("error", {"code": code.value})])


def bundle_list(items: Iterable[Bundle | BundleError]) -> Node:
    return Node(
        "list",
        children=[bundle_node(i) if isinstance(i, Bundle) else bundle_error_node(i.jid, i.code) for i in items],
    )


def parse_bundle(user: Node) -> Bundle | BundleError:
    jid = Jid.parse(user.attr("jid"))
    error = user.child("error")
    if error is not None:
        return BundleError(jid, GipErrorCode.from_wire(error.get("code", "404") or "404"))
    if b64d(user.require_child("type").text, length=1, what="key type") != b"\x05":
        raise GipError(GipErrorCode.BAD_REQUEST, "unknown key type")
    key = user.child("key")
    return Bundle(
        jid,
        _bytes_int(user.require_child("registration").text, 4, "registration id"),
        b64d(user.require_child("identity").text, length=32, what="identity"),
        _parse_signed_prekey(user.require_child("skey")),
        _parse_prekey(key) if key is not None else None,
    )


def parse_bundle_list(node: Node) -> list[Bundle | BundleError]:
    container = node.child("list") or node.child("keys") or node
    return [parse_bundle(user) for user in container.all("user")]


# --------------------------------------------------------------------------- devices


def get_devices(stanza_id: str, users: Sequence[Jid]) -> Node:
    return iq(stanza_id, "get", XMLNS_DEVICES, *[Node("user", {"jid": str(u.bare)}) for u in users])


def parse_get_devices(node: Node) -> list[Jid]:
    return [Jid.parse(u.attr("jid")).bare for u in node.all("user")]


@dataclass(frozen=True, slots=True)
class DeviceList:
    user: Jid
    device_ids: tuple[int, ...]
    hash: str

    def devices(self) -> list[Jid]:
        return [self.user.with_device(d) for d in self.device_ids]


def device_list_node(user: Jid, device_ids: Sequence[int]) -> Node:
    ids = sorted(device_ids)
    return Node(
        "user",
        {"jid": str(user.bare)},
        [
            Node(
                "devices",
                {"hash": device_list_hash(ids)},
                [Node("device", {"id": str(i)}) for i in ids],
            )
        ],
    )


def parse_device_lists(node: Node) -> list[DeviceList]:
    lists = []
    for user in node.all("user"):
        devices = user.require_child("devices")
        ids = tuple(sorted(d.int_attr("id") for d in devices.all("device")))
        lists.append(DeviceList(Jid.parse(user.attr("jid")).bare, ids, devices.attr("hash")))
    return lists


# --------------------------------------------------------------------------- reach


def lookup(stanza_id: str, uvid: str) -> Node:
    return iq(stanza_id, "get", XMLNS_REACH, Node("lookup", {"uvid": uvid}))


def reach_ping(stanza_id: str, jid: Jid) -> Node:
    return iq(stanza_id, "set", XMLNS_REACH, Node("ping", {"jid": str(jid.bare)}))


# --------------------------------------------------------------------------- messages


class EncType(Enum):
    PKMSG = "pkmsg"
    MSG = "msg"
    SKMSG = "skmsg"


@dataclass(frozen=True, slots=True)
class Enc:
    type: EncType
    ciphertext: bytes = field(repr=False)

    def node(self) -> Node:
        return Node("enc", {"v": ENC_VERSION, "type": self.type.value}, text=b64e(self.ciphertext))

    @classmethod
    def parse(cls, node: Node) -> Enc:
        if node.get("v") != ENC_VERSION:
            raise GipError(GipErrorCode.BAD_REQUEST, "unsupported enc version")
        try:
            enc_type = EncType(node.attr("type"))
        except ValueError:
            raise GipError(GipErrorCode.BAD_REQUEST, "unknown enc type") from None
        return cls(enc_type, b64d(node.text, what="ciphertext"))


MESSAGE_TYPES = ("text", "media", "reaction", "revoke")


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """Partner → G: one ``<enc>`` per recipient device."""

    id: str
    to: Jid
    type: str
    t: int
    phash: str
    participants: tuple[tuple[Jid, Enc], ...]

    def node(self) -> Node:
        return Node(
            "message",
            {
                "id": check_id(self.id),
                "to": str(self.to.bare),
                "type": self.type,
                "t": str(self.t),
                "phash": self.phash,
            },
            [
                Node(
                    "participants",
                    children=[Node("to", {"jid": str(j)}, [e.node()]) for j, e in self.participants],
                )
            ],
        )

    @classmethod
    def parse(cls, node: Node) -> OutgoingMessage:
        message_type = node.attr("type")
        if message_type not in MESSAGE_TYPES:
            raise GipError(GipErrorCode.BAD_REQUEST, "unknown message type")
        participants = tuple(
            (Jid.parse(to.attr("jid")), Enc.parse(to.require_child("enc")))
            for to in node.require_child("participants").all("to")
        )
        if not participants:
            raise GipError(GipErrorCode.BAD_REQUEST, "message has no participants")
        return cls(
            check_id(node.attr("id")),
            Jid.parse(node.attr("to")).bare,
            message_type,
            node.int_attr("t"),
            node.get("phash", "") or "",
            participants,
        )


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """G → Partner: the sender's device in ``from``, one ``<enc>`` for our device."""

    id: str
    sender: Jid
    type: str
    t: int
    enc: Enc
    offline: bool = False
    # (ours) The sender's user-visible identifier, so that the Partner can name them:
    # whoever writes to someone reveals their number or username to them.
    sender_uvid: str | None = None

    def node(self) -> Node:
        attrs = {"id": self.id, "from": str(self.sender), "type": self.type, "t": str(self.t)}
        if self.offline:
            attrs["offline"] = "1"
        if self.sender_uvid:
            attrs["uvid"] = self.sender_uvid
        return Node("message", attrs, [self.enc.node()])

    @classmethod
    def parse(cls, node: Node) -> IncomingMessage:
        return cls(
            check_id(node.attr("id")),
            Jid.parse(node.attr("from")),
            node.attr("type"),
            node.int_attr("t"),
            Enc.parse(node.require_child("enc")),
            node.get("offline") == "1",
            node.get("uvid"),
        )


def ack(
    stanza_id: str,
    ack_class: str,
    *,
    t: int | None = None,
    error: GipErrorCode | None = None,
    retry_after: int | None = None,
) -> Node:
    attrs = {"id": stanza_id, "class": ack_class}
    if t is not None:
        attrs["t"] = str(t)
    if error is not None:
        attrs["error"] = error.value
    if retry_after is not None:
        attrs["retry_after"] = str(retry_after)
    return Node("ack", attrs)


# --------------------------------------------------------------------------- receipts


class ReceiptType(Enum):
    DELIVERED = "delivered"
    READ = "read"
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class Receipt:
    """A receipt; ``peer`` is ``to`` when sent by the Partner and ``from`` when received."""

    id: str
    peer: Jid
    type: ReceiptType
    message_ids: tuple[str, ...] = ()  # read receipts: every id covered (aggregated)
    retry_count: int = 0
    retry_t: int = 0
    registration_id: int | None = None
    keys: Bundle | None = None
    # In a group (``peer`` is the group): the message's author when the Partner sends
    # it, the reader's device when G forwards it (§9).
    participant: Jid | None = None

    def node(self, *, direction: str) -> Node:
        attrs = {"id": self.id, direction: str(self.peer)}
        if self.participant is not None:
            attrs["participant"] = str(self.participant)
        children: list[Node] = []
        if self.type is ReceiptType.READ:
            attrs["type"] = "read"
            children.append(Node("list", children=[Node("item", {"id": i}) for i in self.message_ids]))
        elif self.type is ReceiptType.RETRY:
            attrs["type"] = "retry"
            children.append(Node("retry", {"count": str(self.retry_count), "id": self.id, "t": str(self.retry_t)}))
            if self.registration_id is not None:
                children.append(Node("registration", text=_int_bytes(self.registration_id, 4)))
            if self.keys is not None:
                children.append(Node("keys", children=[bundle_node(self.keys)]))
        return Node("receipt", attrs, children)

    @classmethod
    def parse(cls, node: Node, *, direction: str) -> Receipt:
        stanza_id = check_id(node.attr("id"))
        peer = Jid.parse(node.attr(direction))
        participant = Jid.parse(node.attrs["participant"]) if node.get("participant") else None
        kind = node.get("type")
        if kind is None:
            return cls(stanza_id, peer, ReceiptType.DELIVERED, participant=participant)
        if kind == "read":
            items = node.child("list")
            ids = tuple(check_id(i.attr("id")) for i in items.all("item")) if items else (stanza_id,)
            return cls(stanza_id, peer, ReceiptType.READ, ids or (stanza_id,), participant=participant)
        if kind == "retry":
            retry = node.require_child("retry")
            count = retry.int_attr("count")
            if not 1 <= count <= MAX_RETRY_COUNT:
                raise GipError(GipErrorCode.BAD_REQUEST, "retry count out of range")
            registration = node.child("registration")
            keys = node.child("keys")
            bundle = None
            if keys is not None:
                parsed = parse_bundle(keys.require_child("user"))
                bundle = parsed if isinstance(parsed, Bundle) else None
            return cls(
                stanza_id,
                peer,
                ReceiptType.RETRY,
                retry_count=count,
                retry_t=int(retry.get("t", "0") or 0) if (retry.get("t") or "0").isdigit() else 0,
                registration_id=_bytes_int(registration.text, 4, "registration") if registration else None,
                keys=bundle,
                participant=participant,
            )
        raise GipError(GipErrorCode.BAD_REQUEST, "unknown receipt type")


# --------------------------------------------------------------------------- typing


class ChatState(Enum):
    COMPOSING = "composing"
    PAUSED = "paused"


def chatstate(peer: Jid, state: ChatState, *, direction: str, participant: Jid | None = None) -> Node:
    """Typing; in a group, G names who types in ``participant``."""
    attrs = {direction: str(peer)}
    if participant is not None:
        attrs["participant"] = str(participant)
    return Node("chatstate", attrs, [Node(state.value)])


def chatstate_participant(node: Node) -> Jid | None:
    return Jid.parse(node.attrs["participant"]) if node.get("participant") else None


def parse_chatstate(node: Node, *, direction: str) -> tuple[Jid, ChatState]:
    peer = Jid.parse(node.attr(direction))
    for state in ChatState:
        if node.child(state.value) is not None:
            return peer, state
    raise GipError(GipErrorCode.BAD_REQUEST, "unknown chat state")


# --------------------------------------------------------------------------- notifications


def notification(stanza_id: str, kind: str, sender: Jid | None, *children: Node) -> Node:
    attrs = {"id": stanza_id, "type": kind}
    if sender is not None:
        attrs["from"] = str(sender)
    return Node("notification", attrs, list(children))


def offline_marker(count: int) -> Node:
    return Node("ib", children=[Node("offline", {"count": str(count)})])


# --------------------------------------------------------------------------- blocklist, account


def get_blocklist(stanza_id: str) -> Node:
    return iq(stanza_id, "get", XMLNS_BLOCKLIST)


def set_block(stanza_id: str, jid: Jid, *, block: bool) -> Node:
    return iq(
        stanza_id,
        "set",
        XMLNS_BLOCKLIST,
        Node("item", {"action": "block" if block else "unblock", "jid": str(jid.bare)}),
    )


def blocklist_node(jids: Iterable[Jid]) -> Node:
    return Node("list", children=[Node("item", {"jid": str(j)}) for j in jids])


def parse_blocklist(node: Node) -> list[Jid]:
    return [Jid.parse(item.attr("jid")) for item in node.require_child("list").all("item")]


def delete_account(stanza_id: str) -> Node:
    return iq(stanza_id, "set", XMLNS_ACCOUNT, Node("delete"))


# --------------------------------------------------------------------------- connection


def client_gone() -> Node:
    """(ours) In proxy mode, the Partner's end user closed their client (RO 7.6.2.3)."""
    return Node("presence", {"type": "unavailable"})


def success(t: int, offline: int) -> Node:
    return Node("success", {"t": str(t), "offline": str(offline)})


def failure(code: GipErrorCode, retry_after: int | None = None) -> Node:
    attrs = {"reason": code.value}
    if retry_after is not None:
        attrs["retry_after"] = str(retry_after)
    return Node("failure", attrs)


def stream_error(code: GipErrorCode) -> Node:
    return Node("stream:error", {"code": code.value})
