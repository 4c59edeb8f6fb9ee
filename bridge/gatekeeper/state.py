"""Connection states, a closed set (as mautrix-go's bridge states), with what to tell the user."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from bridge.gip.errors import GipErrorCode


class ConnectionState(Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    TRANSIENT_DISCONNECT = "transient_disconnect"  # retrying by itself
    BAD_CREDENTIALS = "bad_credentials"  # token or keys refused: an admin must look
    SUSPENDED = "suspended"  # the gatekeeper suspended the user
    NOT_IN_EEA = "not_in_eea"
    REPLACED = "replaced"  # another connection of the same user took over
    LOGGED_OUT = "logged_out"  # not enlisted (any more): log in again
    UNSUPPORTED = "unsupported"  # protocol version refused


@dataclass(frozen=True)
class StateChange:
    state: ConnectionState
    code: GipErrorCode | None
    message: str
    retry_in: float | None = None

    @property
    def final(self) -> bool:
        return self.state not in (
            ConnectionState.CONNECTING,
            ConnectionState.CONNECTED,
            ConnectionState.TRANSIENT_DISCONNECT,
        )


# What each refusal means for the user, in words they understand.
EXPLANATIONS: dict[GipErrorCode, tuple[ConnectionState, str]] = {
    GipErrorCode.UNAUTHORIZED: (
        ConnectionState.BAD_CREDENTIALS,
        "The gatekeeper did not accept the bridge's credentials for your account. Ask your bridge "
        "admin to check the bridge's keys; logging out and in again enlists you afresh.",
    ),
    GipErrorCode.FORBIDDEN: (
        ConnectionState.SUSPENDED,
        "The gatekeeper suspended your account for third-party chats. Messages cannot be sent or "
        "received until it lifts the suspension.",
    ),
    GipErrorCode.NOT_ENLISTED: (
        ConnectionState.LOGGED_OUT,
        "The gatekeeper no longer knows your account. Send `login` to enlist again.",
    ),
    GipErrorCode.UNENLISTED: (
        ConnectionState.LOGGED_OUT,
        "The gatekeeper removed your account after 30 days without a connection. Send `login` to enlist again.",
    ),
    GipErrorCode.CONFLICT: (
        ConnectionState.REPLACED,
        "Another connection for your account took over (is a second bridge running with your account?). "
        "Send `reconnect` to take it back.",
    ),
    GipErrorCode.NOT_IN_EEA: (
        ConnectionState.NOT_IN_EEA,
        "The gatekeeper only serves users located in the European Economic Area and believes you are not.",
    ),
    GipErrorCode.VERSION: (
        ConnectionState.UNSUPPORTED,
        "The gatekeeper no longer accepts this bridge's protocol version. Ask your bridge admin to update it.",
    ),
}
