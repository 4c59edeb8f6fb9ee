"""GIP groups (interop profile §9): the ``groups`` iqs, group notifications, and group
messages with their Sender Keys body, shared by the Partner client and the sandbox.

Groups live on the gatekeeper; a group is ``<digits>@group``. Every reply describes the
group as ``<group jid subject creator t phash>`` with its participants; ``phash`` is the
first 8 bytes of SHA-256 over the sorted participant device addresses (hex, ours).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from .errors import GipError, GipErrorCode
from .jid import Jid
from .stanza import Node
from .stanzas import MESSAGE_TYPES, Enc, EncType, check_id, iq

XMLNS_GROUPS = "groups"
GROUP_SERVER = "group"
MAX_SUBJECT = 100


def is_group(jid: Jid) -> bool:
    return jid.server == GROUP_SERVER


def group_hash(devices: Iterable[Jid]) -> str:
    """The participant hash: what a sender's view of the group must match (§9)."""
    joined = ",".join(sorted({str(d) for d in devices}))
    return hashlib.sha256(joined.encode()).digest()[:8].hex()


class GroupAction(Enum):
    CREATE = "create"
    ADD = "add"
    REMOVE = "remove"
    PROMOTE = "promote"
    DEMOTE = "demote"
    LEAVE = "leave"
    SUBJECT = "subject"


MEMBER_ACTIONS = (GroupAction.ADD, GroupAction.REMOVE, GroupAction.PROMOTE, GroupAction.DEMOTE)


@dataclass(frozen=True, slots=True)
class Participant:
    jid: Jid
    admin: bool = False
    # (ours) The user-visible identifier: members of a group see each other's numbers.
    uvid: str = ""


@dataclass(frozen=True, slots=True)
class GroupInfo:
    jid: Jid
    subject: str
    creator: Jid
    t: int
    phash: str
    participants: tuple[Participant, ...]

    @property
    def members(self) -> list[Jid]:
        return [p.jid for p in self.participants]

    @property
    def admins(self) -> list[Jid]:
        return [p.jid for p in self.participants if p.admin]

    def node(self) -> Node:
        attrs = {
            "jid": str(self.jid),
            "subject": self.subject,
            "creator": str(self.creator),
            "t": str(self.t),
            "phash": self.phash,
        }
        children = [
            Node(
                "participant",
                {"jid": str(p.jid), "type": "admin" if p.admin else "member", **({"uvid": p.uvid} if p.uvid else {})},
            )
            for p in self.participants
        ]
        return Node("group", attrs, children)

    @classmethod
    def parse(cls, node: Node) -> GroupInfo:
        jid = Jid.parse(node.attr("jid"))
        if not is_group(jid):
            raise GipError(GipErrorCode.BAD_REQUEST, "not a group address")
        participants = []
        for child in node.all("participant"):
            kind = child.get("type", "member")
            if kind not in ("admin", "member"):
                raise GipError(GipErrorCode.BAD_REQUEST, "participant type must be admin or member")
            uvid = child.get("uvid", "") or ""
            participants.append(Participant(Jid.parse(child.attr("jid")).bare, kind == "admin", uvid[:64]))
        return cls(
            jid,
            _subject(node.get("subject", "") or ""),
            Jid.parse(node.attr("creator")).bare,
            node.int_attr("t"),
            node.get("phash", "") or "",
            tuple(participants),
        )


def _subject(text: str) -> str:
    if len(text) > MAX_SUBJECT:
        raise GipError(GipErrorCode.BAD_REQUEST, f"a subject is at most {MAX_SUBJECT} characters")
    return text


def _participants(jids: Iterable[Jid]) -> list[Node]:
    return [Node("participant", {"jid": str(j.bare)}) for j in jids]


def _parse_participants(node: Node) -> list[Jid]:
    return [Jid.parse(p.attr("jid")).bare for p in node.all("participant")]


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class GroupRequest:
    """One ``groups`` iq as the gatekeeper reads it."""

    action: GroupAction | None  # None: a query (``group`` set) or the list of mine
    group: Jid | None = None
    subject: str = ""
    participants: tuple[Jid, ...] = ()


def create(stanza_id: str, subject: str, participants: Sequence[Jid]) -> Node:
    return iq(
        stanza_id, "set", XMLNS_GROUPS, Node("create", {"subject": _subject(subject)}, _participants(participants))
    )


def query(stanza_id: str, group: Jid) -> Node:
    return iq(stanza_id, "get", XMLNS_GROUPS, Node("query", {"jid": str(group)}))


def list_mine(stanza_id: str) -> Node:
    return iq(stanza_id, "get", XMLNS_GROUPS, Node("list"))


def change(stanza_id: str, action: GroupAction, group: Jid, participants: Sequence[Jid]) -> Node:
    if action not in MEMBER_ACTIONS:
        raise ValueError(f"{action} is not a change of participants")
    return iq(stanza_id, "set", XMLNS_GROUPS, Node(action.value, {"jid": str(group)}, _participants(participants)))


def leave(stanza_id: str, group: Jid) -> Node:
    return iq(stanza_id, "set", XMLNS_GROUPS, Node("leave", {"jid": str(group)}))


def set_subject(stanza_id: str, group: Jid, subject: str) -> Node:
    return iq(stanza_id, "set", XMLNS_GROUPS, Node("subject", {"jid": str(group)}, text=_subject(subject)))


def parse_request(node: Node) -> GroupRequest:
    kind = node.get("type")
    if not node.children:
        raise GipError(GipErrorCode.BAD_REQUEST, "empty groups request")
    body = node.children[0]
    if kind == "get":
        if body.tag == "list":
            return GroupRequest(None)
        if body.tag == "query":
            return GroupRequest(None, _group_attr(body))
        raise GipError(GipErrorCode.BAD_REQUEST, "unknown groups query")
    try:
        action = GroupAction(body.tag)
    except ValueError:
        raise GipError(GipErrorCode.BAD_REQUEST, "unknown groups change") from None
    if action is GroupAction.CREATE:
        return GroupRequest(action, None, _subject(body.get("subject", "") or ""), tuple(_parse_participants(body)))
    group = _group_attr(body)
    if action is GroupAction.SUBJECT:
        return GroupRequest(action, group, _subject(body.text or ""))
    if action is GroupAction.LEAVE:
        return GroupRequest(action, group)
    participants = tuple(_parse_participants(body))
    if not participants:
        raise GipError(GipErrorCode.BAD_REQUEST, "name at least one participant")
    return GroupRequest(action, group, participants=participants)


def _group_attr(node: Node) -> Jid:
    jid = Jid.parse(node.attr("jid"))
    if not is_group(jid):
        raise GipError(GipErrorCode.BAD_REQUEST, "not a group address")
    return jid


@dataclass(frozen=True, slots=True)
class GroupResult:
    """The answer to a change: the group as it is now, and who could not be added (403)."""

    group: GroupInfo
    refused: tuple[Jid, ...] = ()

    def nodes(self) -> list[Node]:
        refused = [Node("participant", {"jid": str(j), "error": GipErrorCode.FORBIDDEN.value}) for j in self.refused]
        return [self.group.node(), *refused]

    @classmethod
    def parse(cls, result: Node) -> GroupResult:
        group = GroupInfo.parse(result.require_child("group"))
        refused = tuple(Jid.parse(p.attr("jid")).bare for p in result.all("participant") if p.get("error"))
        return cls(group, refused)


def parse_group_list(result: Node) -> list[GroupInfo]:
    return [GroupInfo.parse(g) for g in result.all("group")]


# --------------------------------------------------------------------------- notifications


@dataclass(frozen=True, slots=True)
class GroupNotice:
    """``<notification type="group">``: a change of the group, by ``actor``."""

    id: str
    group: Jid
    actor: Jid
    t: int
    action: GroupAction
    participants: tuple[Jid, ...] = ()
    subject: str = ""
    info: GroupInfo | None = None  # the group as it is now (always on create and add)

    def node(self) -> Node:
        attrs = {"id": check_id(self.id), "type": "group", "from": str(self.group), "participant": str(self.actor)}
        attrs["t"] = str(self.t)
        if self.action is GroupAction.SUBJECT:
            body = Node("subject", text=self.subject)
        elif self.action is GroupAction.LEAVE:
            body = Node("leave")
        else:
            body = Node(self.action.value, children=_participants(self.participants))
        children = [body] + ([self.info.node()] if self.info is not None else [])
        return Node("notification", attrs, children)

    @classmethod
    def parse(cls, node: Node) -> GroupNotice:
        group = Jid.parse(node.attr("from"))
        if not is_group(group) or not node.children:
            raise GipError(GipErrorCode.BAD_REQUEST, "not a group notification")
        body = node.children[0]
        try:
            action = GroupAction(body.tag)
        except ValueError:
            raise GipError(GipErrorCode.BAD_REQUEST, "unknown group notification") from None
        info_node = node.child("group")
        return cls(
            check_id(node.attr("id")),
            group,
            Jid.parse(node.attr("participant")).bare,
            node.int_attr("t"),
            action,
            tuple(_parse_participants(body)),
            _subject(body.text or "") if action is GroupAction.SUBJECT else "",
            GroupInfo.parse(info_node) if info_node is not None else None,
        )


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class OutgoingGroupMessage:
    """Partner → G: pairwise ``<enc>`` only for devices that lack the sender key (or a
    retry's answer), and the body once, as ``skmsg``."""

    id: str
    to: Jid
    type: str
    t: int
    phash: str
    participants: tuple[tuple[Jid, Enc], ...]
    body: Enc | None

    def node(self) -> Node:
        attrs = {"id": check_id(self.id), "to": str(self.to), "type": self.type, "t": str(self.t)}
        attrs["phash"] = self.phash
        children = [
            Node("participants", children=[Node("to", {"jid": str(j)}, [e.node()]) for j, e in self.participants])
        ]
        if self.body is not None:
            children.append(self.body.node())
        return Node("message", attrs, children)

    @classmethod
    def parse(cls, node: Node) -> OutgoingGroupMessage:
        to = Jid.parse(node.attr("to"))
        if not is_group(to):
            raise GipError(GipErrorCode.BAD_REQUEST, "not a group address")
        message_type = node.attr("type")
        if message_type not in MESSAGE_TYPES:
            raise GipError(GipErrorCode.BAD_REQUEST, "unknown message type")
        holder = node.child("participants")
        participants = tuple(
            (Jid.parse(t.attr("jid")), Enc.parse(t.require_child("enc"))) for t in (holder.all("to") if holder else [])
        )
        if any(enc.type is EncType.SKMSG for _, enc in participants):
            raise GipError(GipErrorCode.BAD_REQUEST, "a pairwise enc cannot be a sender key message")
        body = next((Enc.parse(e) for e in node.all("enc")), None)
        if body is not None and body.type is not EncType.SKMSG:
            raise GipError(GipErrorCode.BAD_REQUEST, "a group body must be a sender key message")
        if body is None and not participants:
            raise GipError(GipErrorCode.BAD_REQUEST, "the message carries nothing")
        return cls(
            check_id(node.attr("id")),
            to,
            message_type,
            node.int_attr("t"),
            node.get("phash", "") or "",
            participants,
            body,
        )


@dataclass(frozen=True, slots=True)
class IncomingGroupMessage:
    """G → a participant device: the author's device in ``participant``, this device's
    pairwise ``<enc>`` if it has one, and the ``skmsg``."""

    id: str
    group: Jid
    sender: Jid  # the author's device
    type: str
    t: int
    enc: Enc | None = None
    body: Enc | None = None
    offline: bool = False
    sender_uvid: str | None = None

    def node(self) -> Node:
        attrs = {"id": self.id, "from": str(self.group), "participant": str(self.sender), "type": self.type}
        attrs["t"] = str(self.t)
        if self.offline:
            attrs["offline"] = "1"
        if self.sender_uvid:
            attrs["uvid"] = self.sender_uvid
        children = [e.node() for e in (self.enc, self.body) if e is not None]
        return Node("message", attrs, children)

    @classmethod
    def parse(cls, node: Node) -> IncomingGroupMessage:
        group = Jid.parse(node.attr("from"))
        if not is_group(group):
            raise GipError(GipErrorCode.BAD_REQUEST, "not a group address")
        encs = [Enc.parse(e) for e in node.all("enc")]
        pairwise = [e for e in encs if e.type is not EncType.SKMSG]
        bodies = [e for e in encs if e.type is EncType.SKMSG]
        if len(pairwise) > 1 or len(bodies) > 1 or not encs:
            raise GipError(GipErrorCode.BAD_REQUEST, "a group message carries one pairwise enc and one body at most")
        return cls(
            check_id(node.attr("id")),
            group,
            Jid.parse(node.attr("participant")),
            node.attr("type"),
            node.int_attr("t"),
            pairwise[0] if pairwise else None,
            bodies[0] if bodies else None,
            node.get("offline") == "1",
            node.get("uvid"),
        )
