"""How the core tells a failure worth waiting out from one that is the item's own.

The portal loop retries its head until it succeeds. Failures of the other side's
availability (the homeserver or the gatekeeper unreachable, a rate limit, the database
restarting) are waited out for as long as they last and never count against the item;
failures of the item itself (the homeserver refuses this event, a bug) count, and after
``max_attempts`` the item fails for good, with a status and a notice.
"""

from __future__ import annotations

import asyncio
import sqlite3

import aiohttp
import asyncpg

from bridge.gip.errors import GipError, GipErrorCode


class Unavailable(Exception):
    """The other side cannot take it now (down, restarting, disconnected); try again."""


class RetryAfter(Unavailable):
    """The other side asked to wait exactly this long (a rate limit)."""

    def __init__(self, seconds: float, text: str = "") -> None:
        super().__init__(text or f"retry after {seconds:g} s")
        self.seconds = seconds


class Refused(Exception):
    """The other side refused this item; trying again is unlikely to help, so it counts."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason  # machine-readable (an errcode, a GIP code)
        self.text = text


class Final(Refused):
    """Refused, and no retry can change that (a file over a limit, a tampered blob): the
    item fails at once, with its status and notice, without using up its tries."""


# GIP codes that say "not now" rather than "not this".
_GIP_TRANSIENT = {
    GipErrorCode.CLOSED,
    GipErrorCode.TIMEOUT,
    GipErrorCode.UNAVAILABLE,
    GipErrorCode.SERVER_ERROR,
    GipErrorCode.CONFLICT,  # a device list that kept changing settles
}


def retry_after(error: BaseException) -> float | None:
    """The exact wait a failure asks for, if any."""
    if isinstance(error, RetryAfter):
        return error.seconds
    if isinstance(error, GipError) and error.code is GipErrorCode.RATE_LIMITED:
        return float(error.retry_after or 5)
    return None


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` says the other side or the database is unavailable."""
    if isinstance(error, Unavailable | aiohttp.ClientError | TimeoutError | ConnectionError | asyncio.TimeoutError):
        return True
    if isinstance(error, GipError):
        return error.code in _GIP_TRANSIENT or error.code is GipErrorCode.RATE_LIMITED
    if isinstance(
        error,
        asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncpg.CannotConnectNowError
        | asyncpg.InternalClientError,  # a connection the server's restart left in a bad state
    ):
        return True
    if isinstance(error, asyncpg.PostgresError):
        # Admin shutdown, too many connections, a failover: the server, not the query.
        return (error.sqlstate or "").startswith(("08", "53", "57"))
    if isinstance(error, sqlite3.OperationalError):
        return "locked" in str(error) or "busy" in str(error)
    return isinstance(error, OSError)
