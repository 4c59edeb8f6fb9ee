"""Bridge states as mautrix bridges report them (``BridgeState``), for clients and
provisioning tools that pull them: the bridge's own (``RUNNING`` once it serves) and each
login's remote state, from its connection's state.

mautrix's states are STARTING, UNCONFIGURED, RUNNING, BRIDGE_UNREACHABLE, CONNECTING,
BACKFILLING, CONNECTED, TRANSIENT_DISCONNECT, BAD_CREDENTIALS, UNKNOWN_ERROR and
LOGGED_OUT; the gatekeeper's refusals that have no state of their own there go as
BAD_CREDENTIALS or UNKNOWN_ERROR with an error code of ours (``dma-…``) and the message the
user was given.
"""

from __future__ import annotations

import time
from typing import Any

from bridge.db.logins import Login, LoginState
from bridge.gatekeeper.state import ConnectionState, StateChange

# As mautrix: an OK state is good for six hours, an error for one.
TTL_OK = 21600
TTL_ERROR = 3600
_EVENTS: dict[ConnectionState, tuple[str, str | None]] = {
    ConnectionState.CONNECTING: ("CONNECTING", None),
    ConnectionState.CONNECTED: ("CONNECTED", None),
    ConnectionState.TRANSIENT_DISCONNECT: ("TRANSIENT_DISCONNECT", "dma-transient"),
    ConnectionState.BAD_CREDENTIALS: ("BAD_CREDENTIALS", "dma-bad-credentials"),
    ConnectionState.SUSPENDED: ("BAD_CREDENTIALS", "dma-suspended"),
    ConnectionState.NOT_IN_EEA: ("BAD_CREDENTIALS", "dma-not-in-eea"),
    ConnectionState.REPLACED: ("UNKNOWN_ERROR", "dma-replaced"),
    ConnectionState.LOGGED_OUT: ("LOGGED_OUT", "dma-logged-out"),
    ConnectionState.UNSUPPORTED: ("UNKNOWN_ERROR", "dma-unsupported"),
}


def remote_state(login: Login, change: StateChange | None, now: float | None = None) -> dict[str, Any]:
    """One login's state, in mautrix's ``BridgeState`` shape."""
    if login.state is not LoginState.ENLISTED:
        event, error, message = "LOGGED_OUT", "dma-not-enlisted", "Not logged in: send `login` to the bridge bot."
    elif change is None:
        event, error, message = "CONNECTING", None, ""
    else:
        event, error = _EVENTS[change.state]
        message = change.message
    state: dict[str, Any] = {
        "state_event": event,
        "timestamp": int(now if now is not None else time.time()),
        "ttl": TTL_OK if error is None else TTL_ERROR,
        "source": "bridge",
        "remote_id": login.iid or login.mxid,
        "remote_name": login.uvid,
    }
    if error is not None:
        state["error"] = error
    if message:
        state["message"] = message
    return state


def bridge_state(running: bool, now: float | None = None) -> dict[str, Any]:
    return {
        "state_event": "RUNNING" if running else "STARTING",
        "timestamp": int(now if now is not None else time.time()),
        "ttl": TTL_OK,
        "source": "bridge",
    }
