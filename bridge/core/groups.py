"""Group chats (interop profile §9) as portals: one Matrix room per group, whoever on this
homeserver is in it.

Each local member has its own ``portals`` row for the group, all naming the same room; the
first to hear of the group makes the room, the others are invited into it. The native
participants are puppets in the room. Every local member's connection receives every group
message, and all of them run in the group's one loop (``portal_key`` ignores the receiver
of a group), so a message is posted once: the copies that come after find it mapped.
A message a local member wrote is in the room already, as their own Matrix event.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

from bridge.db.logins import Login, LoginState
from bridge.db.portals import MessageRef, Portal
from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.groups import MAX_SUBJECT
from bridge.msgconv import convert

from .errors import is_transient
from .gatekeeper_api import GroupMember, GroupView

if TYPE_CHECKING:
    from .bridge import BridgeCore

log = logging.getLogger(__name__)
ADMIN_LEVEL = 50


def is_group(peer: str) -> bool:
    return peer.endswith("@group")


def bare(device: str) -> str:
    """``123:2@native`` → ``123@native``."""
    user, _, server = device.partition("@")
    return f"{user.split(':', 1)[0]}@{server}"


def group_txn_id(group: str, sender: str, gk_id: str, part: str = "") -> str:
    """One transaction id per group message for every local member's copy, so that the
    homeserver gives back the same event to the second copy (a reaction, a deletion)."""
    digest = hashlib.sha256(f"{group}|{bare(sender)}|{gk_id}|{part}".encode()).hexdigest()[:32]
    return f"dma-g-{digest}"


def notice_payload(
    group: str, actor: str, action: str, participants: list[str], subject: str, view: GroupView | None
) -> bytes:
    """A group change as the inbox keeps it (the loop that applies it may run after a restart)."""
    data: dict[str, Any] = {
        "group": group,
        "actor": actor,
        "action": action,
        "participants": participants,
        "subject": subject,
    }
    if view is not None:
        data["view"] = {"subject": view.subject, "members": [[m.iid, m.uvid, m.admin] for m in view.members]}
    return json.dumps(data, separators=(",", ":")).encode()


def _view_of(group: str, data: dict[str, Any]) -> GroupView | None:
    raw = data.get("view")
    if not isinstance(raw, dict):
        return None
    members = tuple(GroupMember(str(m[0]), str(m[1]), bool(m[2])) for m in raw.get("members", []))
    return GroupView(group, str(raw.get("subject", "")), members)


class GroupPortals:
    def __init__(self, core: BridgeCore) -> None:
        self.core = core

    async def ensure(self, login: Login, group: str, view: GroupView | None = None) -> Portal:
        """``login``'s row of the group's portal: the room made if nobody here has one yet,
        else the login invited to it; the native participants' puppets joined."""
        core = self.core
        async with core.portal_creation(("group", group)):
            portal = await core.portals.get(login.mxid, group)
            if portal is not None and portal.room_id:
                return portal
            view = view or await core.gatekeeper.group_view(login.mxid, group)
            rows = await core.portals.of_peer(group)
            existing = next((r for r in rows if r.room_id), None)
            if existing is None or existing.room_id is None:
                room = await core.matrix.create_group_portal(
                    name=view.subject or f"{core.network} group",
                    topic=f"{core.network} group, bridged by matrix-dma-bridge",
                    info=core.bridge_info(login, group),
                    encrypted=core.config.encryption.default,
                    invite=[login.mxid],
                )
                encrypted = core.config.encryption.default
            else:
                room, encrypted = existing.room_id, existing.encrypted
                await core.matrix.invite(room, login.mxid)
            portal = await core.portals.insert(login.mxid, group, room, encrypted)
            await self.join_natives(room, view)
            await self.admins(room, view)
            return portal

    async def join_natives(self, room: str, view: GroupView) -> None:
        for member in view.members:
            if await self.core.logins.by_iid(member.iid) is not None:
                continue  # a local member: their own connection brings them in
            puppet = await self.core.ensure_puppet(member.iid, member.uvid or None)
            await self.core.matrix.join_puppet(room, puppet.mxid)

    async def admins(self, room: str, view: GroupView) -> None:
        """The group's admins get power 50 in the room (invite and remove), the others 0."""
        for member in view.members:
            mxid = await self._mxid_of(member.iid)
            if mxid is not None:
                await self.core.matrix.set_power_level(room, mxid, ADMIN_LEVEL if member.admin else 0)

    async def _mxid_of(self, iid: str) -> str | None:
        local = await self.core.logins.by_iid(iid)
        if local is not None:
            return local.mxid
        puppet = await self.core.puppets.get(iid)
        return puppet.mxid if puppet is not None else None

    async def apply(self, login: Login, payload: bytes) -> None:
        """A change of the group, as ``login``'s connection heard it."""
        core = self.core
        data = json.loads(payload)
        group, action = str(data["group"]), str(data["action"])
        participants = [str(p) for p in data.get("participants", [])]
        view = _view_of(group, data)
        me_added = action == "create" or (action == "add" and login.iid in participants)
        if me_added:
            portal = await self.ensure(login, group, view)
            if view is not None and portal.room_id:
                await self.join_natives(portal.room_id, view)
            return
        portal = await core.portals.get(login.mxid, group)
        if portal is None or portal.room_id is None:
            if view is not None and view.member(login.iid or "") is not None:
                await self.ensure(login, group, view)
            return
        room = portal.room_id
        if action == "add" and view is not None:
            await self.join_natives(room, view)
        elif action in ("remove", "leave"):
            gone = participants if action == "remove" else [str(data["actor"])]
            for iid in gone:
                if iid == login.iid:
                    await core.matrix.remove_member(
                        room, login.mxid, f"You are no longer in this {core.network} group."
                    )
                    await core.portals.delete(login.mxid, group)
                elif await core.logins.by_iid(iid) is None:
                    puppet = await core.ensure_puppet(iid)
                    await core.matrix.remove_member(room, puppet.mxid, f"Left the {core.network} group.")
        elif action == "subject":
            await core.matrix.set_room_name(room, str(data.get("subject", "")))
        elif action in ("promote", "demote") and view is not None:
            await self.admins(room, view)

    async def mapped_copy(
        self, login: Login, portal: Portal, group: str, sender: str, gk_id: str
    ) -> tuple[bool, str | None]:
        """Whether a group message is in the room already (a local member wrote it: their
        own Matrix event; or another member's copy posted it), and its event, mapped for
        ``login`` too so that its replies and reactions find it."""
        core = self.core
        assert portal.room_id is not None
        author = await core.logins.by_iid(bare(sender))
        if author is not None:
            event_id = await core.event_of(author.mxid, group, gk_id)
        else:
            ref = await core.messages.posted(group, gk_id)
            event_id = ref.event_id if ref is not None else None
        if event_id:
            mine = author is not None and author.mxid == login.mxid
            await core.messages.put_later(MessageRef(login.mxid, group, gk_id, mine, portal.room_id, event_id, 0))
        return author is not None or event_id is not None, event_id

    # ------------------------------------------------------------------ mentions

    async def mentions_from_matrix(self, content: dict[str, Any]) -> list[convert.Mention]:
        """The people a Matrix message mentions whom the gatekeeper knows: puppets, and
        local members with a login (a Matrix user without one has no IID to name)."""
        found: list[convert.Mention] = []
        for mxid in convert.matrix_mentions(content):
            puppet = await self.core.puppets.by_mxid(mxid)
            if puppet is not None:
                found.append(convert.Mention(puppet.iid, mxid, puppet.displayname))
                continue
            login = await self.core.logins.get(mxid)
            if login is not None and login.iid:
                found.append(convert.Mention(login.iid, mxid, mxid))
        return found

    async def mentions_to_matrix(self, iids: list[str]) -> list[convert.Mention]:
        """The people a group message mentions, as Matrix users: a local member by their
        Matrix ID, anyone else by their puppet."""
        found: list[convert.Mention] = []
        for iid in dict.fromkeys(iids):
            login = await self.core.logins.by_iid(iid)
            if login is not None:
                found.append(convert.Mention(iid, login.mxid, login.mxid.split(":", 1)[0].lstrip("@")))
                continue
            puppet = await self.core.ensure_puppet(iid)
            found.append(convert.Mention(iid, puppet.mxid, puppet.displayname))
        return found

    # ------------------------------------------------------------------ the room's state from Matrix

    async def matrix_name(self, room_id: str, sender: str, name: str) -> None:
        """A local member renamed the room: the group's subject follows, or the name goes
        back to the subject with a word on why."""
        found = await self._member_portal(room_id, sender)
        if found is None:
            return
        group, _ = found
        core = self.core
        view = await core.gatekeeper.group_view(sender, group)
        if name == view.subject:
            return
        try:
            await core.gatekeeper.set_group_subject(sender, group, name)
        except GipError as exc:
            if is_transient(exc):
                raise  # waited out in the room's loop, then tried again
            await core.matrix.send_notice(
                room_id, f"⚠️ The group's name was not changed: {self._refusal(exc.code, 'rename the group')}"
            )
            await core.matrix.set_room_name(room_id, view.subject)

    async def matrix_power_levels(self, room_id: str, sender: str, users: dict[str, int]) -> None:
        """A local member changed power levels: whoever crossed 50 is promoted or demoted in
        the group. A refusal is explained and the levels go back to the group's admins."""
        found = await self._member_portal(room_id, sender)
        if found is None:
            return
        group, _ = found
        core = self.core
        view = await core.gatekeeper.group_view(sender, group)
        promote: list[str] = []
        demote: list[str] = []
        for member in view.members:
            mxid = await self._mxid_of(member.iid)
            if mxid is None:
                continue
            admin = users.get(mxid, 0) >= ADMIN_LEVEL
            if admin and not member.admin:
                promote.append(member.iid)
            elif member.admin and not admin:
                demote.append(member.iid)
        try:
            for action, iids in (("promote", promote), ("demote", demote)):
                if iids:
                    view, _ = await core.gatekeeper.change_group(sender, group, action, iids)
        except GipError as exc:
            if is_transient(exc):
                raise
            await core.matrix.send_notice(room_id, f"⚠️ {self._refusal(exc.code, 'promote or demote people')}")
            view = await core.gatekeeper.group_view(sender, group)
            await self.admins(room_id, view)

    async def _member_portal(self, room_id: str, sender: str) -> tuple[str, Portal] | None:
        """The group of a group portal and ``sender``'s row of it, if they are an enlisted member."""
        core = self.core
        portal = await core.portals.by_room(room_id)
        if portal is None or not is_group(portal.peer):
            return None
        login = await core.logins.get(sender)
        own = await core.portals.get(sender, portal.peer)
        if login is None or login.state is not LoginState.ENLISTED or own is None:
            return None
        return portal.peer, own

    # ------------------------------------------------------------------ membership from Matrix

    async def matrix_member(self, room_id: str, sender: str, target: str, membership: str) -> None:
        """A local member changed the room: inviting a puppet adds that person to the group,
        removing one removes them, leaving the room leaves the group. What the gatekeeper
        refuses is explained in the room (and an invitation it refused is withdrawn)."""
        core = self.core
        portal = await core.portals.by_room(room_id)
        if portal is None or not is_group(portal.peer):
            return
        group = portal.peer
        login = await core.logins.get(sender)
        if login is None or login.state is not LoginState.ENLISTED or await core.portals.get(sender, group) is None:
            return
        if target == sender:
            if membership in ("leave", "ban"):
                try:
                    await core.gatekeeper.leave_group(sender, group)
                except GipError as exc:
                    if exc.code is not GipErrorCode.NOT_FOUND:
                        raise
                await core.portals.delete(sender, group)
            return
        if membership not in ("invite", "leave", "ban"):
            return
        action = "add" if membership == "invite" else "remove"
        puppet = await core.puppets.by_mxid(target)
        uvid = core.config.uvid_of_puppet(target) if puppet is None else None
        if puppet is None and uvid is None:
            return  # not a puppet: a Matrix user, whom the group at the gatekeeper does not know
        try:
            peer = puppet.iid if puppet is not None else await core.gatekeeper.lookup(sender, uvid or "")
            _, refused = await core.gatekeeper.change_group(sender, group, action, [peer])
        except GipError as exc:
            refused = [target] if exc.code is GipErrorCode.NOT_FOUND and action == "add" else []
            if not refused:
                await core.matrix.send_notice(room_id, f"⚠️ {self._refusal(exc.code, f'{action} people')}")
                if action == "add":
                    await core.matrix.remove_member(room_id, target, "Not added to the group")
                return
        if refused:
            await core.matrix.send_notice(
                room_id,
                "⚠️ Not added: this person cannot be reached from here (they have not turned on chats with other "
                "apps, or they blocked you).",
            )
            await core.matrix.remove_member(room_id, target, "Not added to the group")
        elif action == "add":
            await core.matrix.join_puppet(room_id, target)

    def _refusal(self, code: GipErrorCode, doing: str) -> str:
        """``doing``: what was refused, as in "add people" or "rename the group"."""
        network = self.core.network
        if code is GipErrorCode.FORBIDDEN:
            return f"Only the group's admins may {doing} on {network}."
        if doing == "rename the group" and code in (GipErrorCode.NOT_ACCEPTABLE, GipErrorCode.BAD_REQUEST):
            return f"The name is longer than {network} allows ({MAX_SUBJECT} characters)."
        if code is GipErrorCode.NOT_ACCEPTABLE:
            return f"The group is full: {network} allows no more participants."
        if code is GipErrorCode.NOT_FOUND:
            return f"You are not in this group on {network} any more."
        return f"{network} refused to {doing} ({code.value})."
