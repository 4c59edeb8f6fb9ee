"""Each user's own limits on what goes to the gatekeeper, kept below the gatekeeper's.

The gatekeeper's integrity rules act per Partner user and per integrator: one local user
who floods could get every user of the homeserver suspended. So the bridge counts, per
user, in sliding windows, and refuses what goes past its own limits (the caller answers
with a failed status and a notice). The windows live in memory: a restart forgets them,
which at most doubles one window's allowance, still under the gatekeeper's defaults.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from bridge.config import LimitsConfig

MINUTE = 60.0
DAY = 86_400.0


class SlidingWindow:
    """At most ``limit`` events per ``seconds`` for each key."""

    def __init__(self, limit: int, seconds: float, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.seconds = seconds
        self._clock = clock
        self._events: dict[str, deque[float]] = {}

    def allow(self, key: str) -> bool:
        """Counts the event and returns True, or returns False (and counts nothing)."""
        now = self._clock()
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - self.seconds:
            events.popleft()
        if len(events) >= self.limit:
            return False
        events.append(now)
        return True

    def retry_in(self, key: str) -> float:
        """Seconds until one more event would be allowed."""
        events = self._events.get(key)
        if not events or len(events) < self.limit:
            return 0.0
        return max(0.0, events[0] + self.seconds - self._clock())


class UserLimits:
    def __init__(self, config: LimitsConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.messages = SlidingWindow(config.messages_per_minute, MINUTE, clock)
        self.first_contacts = SlidingWindow(config.first_contacts_per_day, DAY, clock)
        self._told: dict[str, float] = {}  # when each user was last told, so a flood gets one notice
        self._clock = clock

    def tell_once(self, mxid: str, window: SlidingWindow) -> bool:
        """Whether to post the notice now: once per window and user."""
        now = self._clock()
        if now - self._told.get(f"{mxid}/{window.seconds}", -window.seconds) < window.seconds:
            return False
        self._told[f"{mxid}/{window.seconds}"] = now
        return True
