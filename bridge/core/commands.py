"""Bot commands: declared with their permission level, dispatched in one place."""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bridge import __version__
from bridge.config import PermissionLevel
from bridge.db.logins import Login, LoginState
from bridge.db.portals import Portal
from bridge.gatekeeper.enlistment import create_login
from bridge.gatekeeper.state import ConnectionState
from bridge.gip.client import EnlistError
from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.jid import Jid
from bridge.signal import Fingerprint

from .bridge import BridgeCore

CONNECT_WAIT = 15.0


@dataclass
class Context:
    core: BridgeCore
    room_id: str
    sender: str
    args: list[str]
    portal: Portal | None
    login: Login | None

    async def reply(self, text: str) -> None:
        await self.core.matrix.send_notice(self.room_id, text)


Handler = Callable[[Context], Awaitable[None]]


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    handler: Handler
    level: PermissionLevel = PermissionLevel.USER
    needs_login: bool = False
    aliases: tuple[str, ...] = ()
    # An admin may run it in anyone's portal, logged in or not (it acts on the room only).
    admin_in_portal: bool = False


COMMANDS: dict[str, Command] = {}


def command(
    name: str,
    summary: str,
    *,
    level: PermissionLevel = PermissionLevel.USER,
    needs_login: bool = False,
    aliases: tuple[str, ...] = (),
    admin_in_portal: bool = False,
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        entry = Command(name, summary, handler, level, needs_login, aliases, admin_in_portal)
        for key in (name, *aliases):
            COMMANDS[key] = entry
        return handler

    return register


@dataclass
class LoginDraft:
    stage: str  # "consent" or "eea"
    room_id: str
    consented: bool = False


@dataclass
class CommandState:
    drafts: dict[str, LoginDraft] = field(default_factory=dict)


def explain(error: GipError, core: BridgeCore) -> str:
    """A gatekeeper failure as a sentence for the user."""
    identifier = (
        "a phone number in international format, like +4915112345678"
        if core.config.profile == "whatsapp"
        else "a Messenger username (5 to 30 of a-z, 0-9 and dots)"
    )
    return {
        GipErrorCode.NOT_FOUND: f"That {core.network} user cannot be reached: they have no account, have not turned "
        "on chats with other apps, or do not accept chats from this bridge.",
        GipErrorCode.BAD_REQUEST: f"That is not a valid identifier; use {identifier}.",
        GipErrorCode.RATE_LIMITED: "The gatekeeper is rate limiting you; try again "
        + (f"in {error.retry_after} seconds." if error.retry_after else "later."),
        GipErrorCode.FORBIDDEN: "The gatekeeper refused: your account is suspended or the other person blocked you.",
        GipErrorCode.NOT_IN_EEA: "The gatekeeper only serves users located in the European Economic Area.",
        GipErrorCode.CLOSED: "The bridge is not connected to the gatekeeper right now; try again in a moment.",
        GipErrorCode.TIMEOUT: "The gatekeeper did not answer in time; try again in a moment.",
    }.get(error.code, f"The gatekeeper refused the request ({error.code.value}).")


async def dispatch(
    core: BridgeCore, state: CommandState, room_id: str, sender: str, text: str, portal: Portal | None
) -> None:
    """Run a command line. Permission is checked here, so no command can forget it."""
    level = core.config.permission(sender)
    words = text.strip().split()
    login = await core.logins.get(sender)
    # One whose access was revoked may still erase what the bridge keeps of them.
    may_erase = login is not None and words and words[0].lower() == "logout"
    if level is PermissionLevel.NONE and not may_erase:
        await core.matrix.send_notice(room_id, "You are not allowed to use this bridge. Ask its admin for access.")
        return
    if not words:
        return
    draft = state.drafts.get(sender)
    if draft is not None and words[0].lower() in ("yes", "no", "cancel") and draft.room_id == room_id:
        await _continue_login(Context(core, room_id, sender, words[1:], portal, login), state, words[0].lower())
        return
    entry = COMMANDS.get(words[0].lower())
    admin_here = level is PermissionLevel.ADMIN and entry is not None and entry.admin_in_portal
    if portal is not None and sender != portal.receiver and not admin_here:
        # A portal is its owner's: other members of the room do not steer it (an admin may
        # only run what acts on the room itself, never their own account on its peer).
        await core.matrix.send_notice(room_id, "Only the owner of this chat (or a bridge admin) can use commands here.")
        return
    ctx = Context(core, room_id, sender, words[1:], portal, login)
    if entry is None:
        await ctx.reply(f"Unknown command `{words[0]}`. Send `help` to see what the bridge understands.")
        return
    if level.value < entry.level.value and not may_erase:
        await ctx.reply(f"`{entry.name}` is for bridge admins.")
        return
    as_admin = entry.admin_in_portal and portal is not None and level is PermissionLevel.ADMIN
    if entry.needs_login and not as_admin and (login is None or login.state is not LoginState.ENLISTED):
        await ctx.reply("You are not logged in. Send `login` first.")
        return
    if entry.name == "login":
        await _start_login(ctx, state)
        return
    try:
        await entry.handler(ctx)
    except GipError as exc:
        await ctx.reply(explain(exc, core))


@command("help", "Show this list.")
async def help_command(ctx: Context) -> None:
    seen: set[str] = set()
    lines = [f"**matrix-dma-bridge** bridges your Matrix account to {ctx.core.network}. Commands:"]
    for entry in COMMANDS.values():
        if entry.name in seen or ctx.core.config.permission(ctx.sender).value < entry.level.value:
            continue
        seen.add(entry.name)
        lines.append(f"• `{entry.name}` — {entry.summary}")
    await ctx.reply("\n".join(lines))


@command("version", "Show the bridge's version.")
async def version_command(ctx: Context) -> None:
    await ctx.reply(f"matrix-dma-bridge {__version__}, speaking GIP/1 to {ctx.core.network}.")


CONSENT_TEXT = """Logging in enlists your Matrix account with {network} as a third-party user. Before you do:

• {network} users who turned on chats with other apps can then message you, and you them.
• {network} learns your Matrix ID ({mxid}), an identifier it assigns to you, when you are connected, whom you chat \
with and when, and the country this server attests for you ({country}). It cannot read your messages: they are \
end-to-end encrypted between this bridge and the other person's phone.
• This bridge decrypts and re-encrypts your messages on this homeserver, so its admins are part of the path.
• You can log out at any time: `logout` deletes your enlistment at {network} and every key and message record here.

Do you agree? Reply `yes` to continue or `cancel` to stop."""


async def _start_login(ctx: Context, state: CommandState) -> None:
    if ctx.login is not None and ctx.login.state is LoginState.ENLISTED:
        await ctx.reply(f"You are already logged in as {ctx.login.iid}. Send `logout` first to start over.")
        return
    state.drafts[ctx.sender] = LoginDraft("consent", ctx.room_id)
    await ctx.reply(CONSENT_TEXT.format(network=ctx.core.network, mxid=ctx.sender, country=ctx.core.config.country))


async def _continue_login(ctx: Context, state: CommandState, answer: str) -> None:
    draft = state.drafts[ctx.sender]
    if (answer in ("cancel", "no") and draft.stage == "consent") or answer == "cancel":
        del state.drafts[ctx.sender]
        await ctx.reply("Login cancelled. Nothing was sent anywhere.")
        return
    if draft.stage == "consent":
        draft.stage, draft.consented = "eea", True
        await ctx.reply(
            f"{ctx.core.network} serves third-party users only while they are located in the European Economic "
            "Area (the EU, Iceland, Liechtenstein, Norway). Are you located there now? Reply `yes` or `no`."
        )
        return
    del state.drafts[ctx.sender]
    if answer != "yes":
        await ctx.reply(f"Then {ctx.core.network} does not allow enlisting you. Login cancelled.")
        return
    await _enlist(ctx)


async def _enlist(ctx: Context) -> None:
    core = ctx.core
    if ctx.login is not None:  # a login left over from an un-enlistment: start afresh
        await core.logins.delete(ctx.sender)
        core.gatekeeper.forget(ctx.sender)
    login = await create_login(
        core.stores, mxid=ctx.sender, uvid=ctx.sender, country=core.config.country, eea_attested=True
    )
    await core.logins.set_management_room(ctx.sender, ctx.room_id)
    try:
        iid = await core.gatekeeper.enlist(login)
    except EnlistError as exc:
        await core.logins.delete(ctx.sender)
        reasons = {
            "not_eea": f"{core.network} refused: it only serves users located in the European Economic Area.",
            "rate_limited": f"{core.network} is limiting new enlistments; try again later.",
            "bad_token": f"{core.network} did not accept this bridge's proof of your identity. Ask the bridge admin "
            "to check the bridge's keys and the gatekeeper settings.",
            "bad_integrator": f"{core.network} does not know this bridge. Ask the bridge admin to check "
            "partner.integrator_id.",
            "version": f"{core.network} no longer accepts this bridge's protocol version; it needs an update.",
        }
        await ctx.reply(f"Login failed. {reasons.get(exc.reason, f'{core.network} refused ({exc.reason}).')}")
        return
    except GipError as exc:
        await core.logins.delete(ctx.sender)
        await ctx.reply(f"Login failed: {explain(exc, core)}")
        return
    enlisted = await core.logins.get(ctx.sender)
    assert enlisted is not None
    core.gatekeeper.connect(enlisted)
    for _ in range(int(CONNECT_WAIT * 10)):
        change = core.states.get(ctx.sender)
        if change is not None and (change.state is ConnectionState.CONNECTED or change.final):
            break
        await asyncio.sleep(0.1)
    whom = "phone number" if core.config.profile == "whatsapp" else "username"
    await ctx.reply(
        f"✅ Logged in. {core.network} knows you as {iid}. Send `start-chat <{whom}>` to write to someone; "
        "chats people start with you appear as new rooms."
    )


@command("cancel", "Cancel a login in progress.")
async def cancel_command(ctx: Context) -> None:
    await ctx.reply("Nothing to cancel.")


@command("logout", "Opt out at the gatekeeper and erase your keys, sessions and chats here.")
async def logout_command(ctx: Context) -> None:
    """Erases everything here whatever the gatekeeper says: a user it already removed
    (405, 428), or one it cannot be reached for, still gets their data deleted."""
    core = ctx.core
    if ctx.login is None:
        await ctx.reply("You are not logged in: the bridge holds no keys or records of yours.")
        return
    there = f"{core.network} deleted your enlistment"
    if ctx.login.state is not LoginState.ENLISTED:
        there = f"{core.network} no longer had an enlistment of yours"
    elif core.revoked(ctx.sender):
        there = (
            f"the bridge no longer connects to {core.network} for you, so it could not opt you out there; an "
            "enlistment without a connection ends after 30 days"
        )
    elif not core.gatekeeper.connected(ctx.sender):
        there = (
            f"{core.network} could not be reached to opt you out; an enlistment without a connection ends "
            "there after 30 days"
        )
    else:
        try:
            await core.gatekeeper.opt_out(ctx.sender)
        except GipError as exc:
            if exc.code in (GipErrorCode.NOT_ENLISTED, GipErrorCode.UNENLISTED):
                there = f"{core.network} no longer had an enlistment of yours"
            else:
                there = f"{core.network} did not confirm the opt-out ({exc.code.value})"
        except Exception as exc:  # Unavailable and the like: the local erasure goes on
            there = f"{core.network} did not confirm the opt-out ({type(exc).__name__})"
    await core.gatekeeper.disconnect(ctx.sender)
    for portal in await core.portals.of_receiver(ctx.sender):
        puppet = await core.puppets.get(portal.peer)
        if portal.room_id and puppet:
            with contextlib.suppress(Exception):
                await core.matrix.leave_portal(portal.room_id, puppet.mxid, ctx.sender)
    await core.logins.delete(ctx.sender)
    core.portals.forget_receiver(ctx.sender)
    core.messages.forget_receiver(ctx.sender)
    core.gatekeeper.forget(ctx.sender)
    core.states.pop(ctx.sender, None)
    await ctx.reply(f"Logged out. {there}, and the bridge erased your keys, sessions and message records.")


@command(
    "reconnect", "Connect to the gatekeeper again now (after another connection took over, say).", needs_login=True
)
async def reconnect_command(ctx: Context) -> None:
    core = ctx.core
    assert ctx.login is not None
    await core.gatekeeper.disconnect(ctx.sender)
    core.states.pop(ctx.sender, None)
    core.gatekeeper.connect(ctx.login)
    for _ in range(int(CONNECT_WAIT * 10)):
        change = core.states.get(ctx.sender)
        if change is not None and (change.state is ConnectionState.CONNECTED or change.final):
            break
        await asyncio.sleep(0.1)
    change = core.states.get(ctx.sender)
    await ctx.reply(change.message if change else "Still connecting to the gatekeeper; send `status` in a moment.")


@command("status", "Show whether you are logged in and connected.", aliases=("ping",))
async def status_command(ctx: Context) -> None:
    if ctx.login is None:
        await ctx.reply("You are not logged in. Send `login` to start.")
        return
    change = ctx.core.states.get(ctx.sender)
    connection = change.message if change else "Not connected yet."
    await ctx.reply(f"Logged in as {ctx.login.iid or '(enlisting)'} ({ctx.login.state.value}). {connection}")


async def _resolve(ctx: Context) -> str | None:
    if not ctx.args:
        await ctx.reply("Say whom: for example `start-chat +4915112345678`.")
        return None
    return await ctx.core.gatekeeper.lookup(ctx.sender, ctx.args[0])


@command("start-chat", "Open a chat with someone: `start-chat <identifier>`.", needs_login=True, aliases=("pm",))
async def start_chat_command(ctx: Context) -> None:
    jid = await _resolve(ctx)
    if jid is None or ctx.login is None:
        return
    limits = ctx.core.limits
    if await ctx.core.portals.get(ctx.login.mxid, jid) is None and not limits.first_contacts.allow(ctx.sender):
        hours = max(1, round(limits.first_contacts.retry_in(ctx.sender) / 3600))
        await ctx.reply(
            f"You have started chats with {limits.first_contacts.limit} new people today, as many as this bridge "
            f"allows in a day; try again in {hours} h."
        )
        return
    portal, puppet = await ctx.core.ensure_portal(ctx.login, jid, ctx.args[0])
    await ctx.reply(f"Opened a chat with {puppet.displayname}: https://matrix.to/#/{portal.room_id}")


@command(
    "create-group",
    'Start a group: `create-group <name> <identifier>…` (quote a name with spaces: `create-group "Book club" …`).',
    needs_login=True,
)
async def create_group_command(ctx: Context) -> None:
    try:
        words = shlex.split(" ".join(ctx.args))
    except ValueError:
        words = []
    if len(words) < 2 or ctx.login is None:
        await ctx.reply('Say a name and whom: for example `create-group "Book club" +4915112345678 +4915187654321`.')
        return
    name, identifiers = words[0], words[1:]
    peers: list[str] = []
    for identifier in identifiers:
        peers.append(await ctx.core.gatekeeper.lookup(ctx.sender, identifier))
    view, refused = await ctx.core.gatekeeper.create_group(ctx.sender, name, peers)
    portal = await ctx.core.groups.ensure(ctx.login, view.jid, view)
    text = f"Created the group {name}: https://matrix.to/#/{portal.room_id}"
    if refused:
        names = [identifiers[peers.index(p)] for p in refused if p in peers]
        text += f"\n{ctx.core.network} did not let you add {', '.join(names)}: they cannot be reached from here."
    await ctx.reply(text)


@command("resolve", "Check whether someone can be reached: `resolve <identifier>`.", needs_login=True)
async def resolve_command(ctx: Context) -> None:
    jid = await _resolve(ctx)
    if jid is not None:
        await ctx.reply(f"{ctx.args[0]} can be reached on {ctx.core.network}.")


async def _block(ctx: Context, blocked: bool) -> None:
    gatekeeper = ctx.core.gatekeeper
    if not gatekeeper.connected(ctx.sender):
        raise GipError(GipErrorCode.CLOSED, "not connected")
    if ctx.args:
        if not (ctx.args[0].startswith("+") or "@" not in ctx.args[0]):
            return
        peer = await gatekeeper.lookup(ctx.sender, ctx.args[0])
    elif ctx.portal is not None:
        peer = ctx.portal.peer
    else:
        await ctx.reply("Say whom, or send this command in the chat with them.")
        return
    await gatekeeper.set_blocked(ctx.sender, peer, blocked)
    await ctx.reply("Blocked." if blocked else "Unblocked.")


@command("block", "Block someone (here, or `block <identifier>`).", needs_login=True)
async def block_command(ctx: Context) -> None:
    await _block(ctx, True)


@command("unblock", "Unblock someone (here, or `unblock <identifier>`).", needs_login=True)
async def unblock_command(ctx: Context) -> None:
    await _block(ctx, False)


@command("verify", "Show the safety number of this chat, to compare with the other person.", needs_login=True)
async def verify_command(ctx: Context) -> None:
    if ctx.portal is None or ctx.login is None or ctx.login.iid is None:
        await ctx.reply("Send `verify` in the chat whose safety number you want to see.")
        return
    peer = Jid.parse(ctx.portal.peer)
    remote = await ctx.core.gatekeeper.peer_identity(ctx.login.mxid, ctx.portal.peer)
    if remote is None:
        await ctx.reply("There is no secure session with this person yet; send a message first.")
        return
    fingerprint = Fingerprint.create(
        local_id=ctx.login.iid.encode(),
        local_key=ctx.login.identity.public,
        remote_id=str(peer.bare).encode(),
        remote_key=remote,
    )
    await ctx.reply(f"Safety number (compare it with the one the other person sees):\n{fingerprint.display_groups()}")


@command(
    "delete-portal",
    "Remove this chat's room (the chat itself stays on the other side).",
    needs_login=True,
    admin_in_portal=True,
)
async def delete_portal_command(ctx: Context) -> None:
    if ctx.portal is None or ctx.portal.room_id is None:
        await ctx.reply("Send `delete-portal` in the chat room you want to remove.")
        return
    puppet = await ctx.core.puppets.get(ctx.portal.peer)
    await ctx.core.portals.delete(ctx.portal.receiver, ctx.portal.peer)
    if puppet is not None:
        await ctx.core.matrix.leave_portal(ctx.portal.room_id, puppet.mxid, ctx.portal.receiver)


@command("encrypt", "Turn on end-to-end encryption in this chat's room (it cannot be turned off).", needs_login=True)
async def encrypt_command(ctx: Context) -> None:
    if ctx.portal is None or ctx.portal.room_id is None:
        await ctx.reply("Send `encrypt` in the chat room you want to encrypt.")
        return
    if not ctx.core.config.encryption.allow:
        await ctx.reply("Encryption is turned off on this bridge (bridge.encryption.allow); ask its admin.")
        return
    if ctx.portal.encrypted:
        await ctx.reply("This room is already encrypted.")
        return
    await ctx.core.matrix.enable_encryption(ctx.portal.room_id)
    await ctx.core.portals.set_encrypted(ctx.portal)
    await ctx.reply("🔒 This room is encrypted now; new messages are end-to-end encrypted up to the bridge.")


COMMANDS["login"] = Command("login", "Enlist your account with the gatekeeper (asks for your consent).", _start_login)  # type: ignore[arg-type]
