"""What the bot tells each user about their connection, in their management room, as
mautrix bridges do: a lasting problem (suspended, logged out, bad credentials) at once; a
disconnection the bridge is retrying by itself only once it has lasted
``transient_delay_seconds`` since it began, so that a connection that flaps says nothing;
and the end of a problem it told. Each notice carries the state it reports as
``fi.mau.bridge_state``, in the shape of the pull endpoint's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from bridge.config import StateNoticesConfig
from bridge.db.logins import Login
from bridge.gatekeeper.state import ConnectionState, StateChange
from bridge.gip.errors import GipErrorCode

from .bridge_state import remote_state

# Said when a disconnection lasted: what the gatekeeper answered, in words.
TRANSIENT_EXPLANATIONS = {
    GipErrorCode.RATE_LIMITED: "The gatekeeper is rate limiting the bridge's connection for you.",
    GipErrorCode.UNAVAILABLE: "The gatekeeper is unavailable right now.",
}
_STILL_DOWN = (ConnectionState.TRANSIENT_DISCONNECT, ConnectionState.CONNECTING)
Tell = Callable[[Login, str, dict[str, Any]], None]


class StateNotices:
    def __init__(self, config: StateNoticesConfig, tell: Tell, current: Callable[[str], StateChange | None]) -> None:
        self._config = config
        self._tell = tell
        self._current = current
        self._told: set[str] = set()  # users told of a problem whose end they have not heard
        self._trouble_since: dict[str, float] = {}
        self._trouble: dict[str, StateChange] = {}  # the latest disconnection of each outage
        self._waiting: dict[str, asyncio.TimerHandle] = {}

    def changed(self, login: Login, change: StateChange) -> None:
        level, mxid = self._config.level, login.mxid
        if level == "none":
            return
        state = remote_state(login, change)
        if change.state is ConnectionState.CONNECTED:
            self._calm(mxid)
            if mxid in self._told:
                self._told.discard(mxid)
                self._tell(login, "✅ Connected to the gatekeeper again.", state)
            elif level == "all":
                self._tell(login, change.message, state)
        elif change.final:
            self._calm(mxid)
            self._told.add(mxid)
            self._tell(login, change.message, state)
        elif change.state is ConnectionState.TRANSIENT_DISCONNECT:
            since = self._trouble_since.setdefault(mxid, time.monotonic())
            self._trouble[mxid] = change
            if mxid not in self._told and mxid not in self._waiting:
                delay = max(0.0, since + self._config.transient_delay_seconds - time.monotonic())
                self._waiting[mxid] = asyncio.get_running_loop().call_later(delay, self._lasted, login)
            if level == "all":
                self._tell(login, change.message, state)
        elif level == "all":  # connecting
            self._tell(login, change.message, state)

    def _lasted(self, login: Login) -> None:
        """A disconnection outlived the delay: told, unless the connection came back."""
        self._waiting.pop(login.mxid, None)
        now, change = self._current(login.mxid), self._trouble.get(login.mxid)
        if (
            change is None
            or now is None
            or now.state not in (ConnectionState.TRANSIENT_DISCONNECT, ConnectionState.CONNECTING)
        ):
            return
        minutes = max(1, round((time.monotonic() - self._trouble_since.get(login.mxid, time.monotonic())) / 60))
        reason = TRANSIENT_EXPLANATIONS.get(change.code) if change.code else None
        self._told.add(login.mxid)
        self._tell(
            login,
            f"⚠️ Not connected to the gatekeeper for {minutes} min. {reason or change.message} The bridge keeps "
            "retrying by itself; messages you send meanwhile go out when it is back.",
            remote_state(login, change),
        )

    def _calm(self, mxid: str) -> None:
        self._trouble_since.pop(mxid, None)
        self._trouble.pop(mxid, None)
        handle = self._waiting.pop(mxid, None)
        if handle is not None:
            handle.cancel()

    def close(self) -> None:
        for handle in self._waiting.values():
            handle.cancel()
        self._waiting.clear()
