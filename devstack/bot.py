"""What a person does with the bridge's bot: open the management room, log in with
consent, start a chat."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Client(Protocol):
    """What these steps need of a Matrix client (devstack's Element client, the tests' mautrix one)."""

    mxid: str

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = ...) -> dict[str, Any]: ...

    async def notice(self, room_id: str, contains: str, timeout: float = ...) -> dict[str, Any]: ...

    async def create_dm(self, invitee: str, encrypted: bool = ...) -> str: ...

    async def say(self, room_id: str, text: str) -> str: ...


async def management_room(user: Client, bot_mxid: str) -> str:
    room_id = await user.create_dm(bot_mxid)
    await user.notice(room_id, "Send `help`")
    return room_id


async def log_in(user: Client, room: str) -> None:
    """The consent dialogue: the terms, then the EEA declaration."""
    await user.say(room, "login")
    await user.notice(room, "Do you agree?")
    await user.say(room, "yes")
    await user.notice(room, "European Economic Area")
    await user.say(room, "yes")
    await user.notice(room, "Logged in", timeout=30)


async def open_chat(user: Client, room: str, identifier: str) -> str:
    """``start-chat``: returns the portal once the user has joined it."""
    await user.say(room, f"start-chat {identifier}")
    reply = await user.notice(room, "Opened a chat")
    portal = reply["content"]["body"].rsplit("/", 1)[1]
    await user.wait_for(
        lambda e: (
            e.get("room_id") == portal
            and e.get("type") == "m.room.member"
            and e.get("state_key") == user.mxid
            and e["content"].get("membership") == "join"
        )
    )
    return portal
