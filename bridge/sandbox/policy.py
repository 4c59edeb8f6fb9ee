"""Gatekeeper policies that need no I/O: identifier rules, rate windows, faults."""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

import phonenumbers

from bridge.gip.errors import GipErrorCode

_USERNAME = re.compile(r"^[a-z0-9.]{5,30}$")


def valid_native_uvid(profile: str, uvid: str) -> bool:
    """WhatsApp: a valid E.164 number; Messenger: a username ``[a-z0-9.]{5,30}``."""
    if profile == "messenger":
        return bool(_USERNAME.match(uvid))
    if not uvid.startswith("+"):
        return False
    try:
        number = phonenumbers.parse(uvid, None)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(number) and (
        phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) == uvid
    )


class RateWindow:
    """At most ``limit`` events per ``window`` seconds (a sliding log)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._events: deque[float] = deque()

    def hit(self, now: float) -> int | None:
        """Record an event; None if allowed, else seconds until one would be."""
        while self._events and self._events[0] <= now - self.window:
            self._events.popleft()
        if len(self._events) >= self.limit:
            return max(1, int(self._events[0] + self.window - now) + 1)
        self._events.append(now)
        return None


@dataclass
class Faults:
    """Faults the control API injects; each applies once unless said otherwise."""

    refuse_next_connect: dict[str, GipErrorCode] = field(default_factory=dict)  # iid or "*"
    ack_delay: float = 0.0  # seconds, for every message ack until reset
    corrupt_next_from: set[str] = field(default_factory=set)  # native iids
    refuse_next_message: dict[str, GipErrorCode] = field(default_factory=dict)  # partner iid
    media_bytes_per_second: int = 0  # native media downloads (GET /v/t…) this slow until reset; 0: full speed
