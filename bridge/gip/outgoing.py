"""What a Partner client keeps about messages beyond one connection.

:class:`PreparedMessage` is an outgoing message encrypted once for every device it goes
to: the caller stores it (with the advanced sessions) before it is sent, and a resend
sends it again, so that no message key is ever used twice. :class:`RetryStore` remembers
what the client sent (to answer a peer's retry receipt after a reconnect) and how often it
asked a peer to resend (so that the fresh-bundle retry is reached and the give-up holds).
"""

from __future__ import annotations

import base64
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from . import stanzas as st
from .errors import GipError, GipErrorCode
from .groups import OutgoingGroupMessage, is_group
from .jid import Jid


@dataclass(frozen=True, slots=True)
class PreparedMessage:
    id: str
    to: Jid  # the recipient user (bare)
    type: str
    t: int
    phash: str  # the hash of the device list it was fanned out to
    participants: tuple[tuple[Jid, st.Enc], ...] = field(repr=False)
    # A group message's body, encrypted once with our sender key; ``participants`` then
    # holds only the pairwise messages that hand the key to devices lacking it.
    body: st.Enc | None = field(default=None, repr=False)

    @property
    def devices(self) -> tuple[Jid, ...]:
        return tuple(device for device, _ in self.participants)

    def stanza(self) -> st.OutgoingMessage | OutgoingGroupMessage:
        if is_group(self.to):
            return OutgoingGroupMessage(self.id, self.to, self.type, self.t, self.phash, self.participants, self.body)
        return st.OutgoingMessage(self.id, self.to, self.type, self.t, self.phash, self.participants)

    def serialize(self) -> bytes:
        return json.dumps(
            {
                "id": self.id,
                "to": str(self.to),
                "type": self.type,
                "t": self.t,
                "phash": self.phash,
                "enc": [[str(d), e.type.value, base64.b64encode(e.ciphertext).decode()] for d, e in self.participants],
                "body": base64.b64encode(self.body.ciphertext).decode() if self.body is not None else None,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def deserialize(cls, data: bytes) -> PreparedMessage:
        try:
            raw = json.loads(data)
            participants = tuple(
                (Jid.parse(device), st.Enc(st.EncType(kind), base64.b64decode(text)))
                for device, kind, text in raw["enc"]
            )
            body = st.Enc(st.EncType.SKMSG, base64.b64decode(raw["body"])) if raw.get("body") else None
            return cls(raw["id"], Jid.parse(raw["to"]), raw["type"], int(raw["t"]), raw["phash"], participants, body)
        except (ValueError, KeyError, TypeError) as exc:
            raise GipError(GipErrorCode.BAD_REQUEST, "not a prepared message") from exc


@dataclass(frozen=True, slots=True)
class SentMessage:
    """A message we sent, as a retry receipt needs it: whom to, and the plaintext."""

    id: str
    to: Jid
    type: str
    content: bytes = field(repr=False)  # the serialized Content (padding is added anew)
    devices: tuple[Jid, ...] = ()  # the devices it was fanned out to


class RetryStore(Protocol):
    async def sent(self, message_id: str) -> SentMessage | None:
        """A message we sent recently (bounded by age and count), or None."""
        ...

    async def remember_sent(self, message: SentMessage) -> None:
        """Called when a message was fanned out; a store that already holds sent messages
        elsewhere (the bridge keeps them with its outbox) may do nothing."""
        ...

    async def count_failure(self, sender: Jid, message_id: str) -> int:
        """One more message from ``sender`` that did not decrypt; returns how many times."""
        ...


class MemoryRetryStore:
    """For clients without a database (tests, the sandbox's conformance harness)."""

    def __init__(self, limit: int = 1000) -> None:
        self._limit = limit
        self._sent: OrderedDict[str, SentMessage] = OrderedDict()
        self._failures: OrderedDict[tuple[Jid, str], int] = OrderedDict()

    async def sent(self, message_id: str) -> SentMessage | None:
        return self._sent.get(message_id)

    async def remember_sent(self, message: SentMessage) -> None:
        self._sent[message.id] = message
        while len(self._sent) > self._limit:
            self._sent.popitem(last=False)

    async def count_failure(self, sender: Jid, message_id: str) -> int:
        key = (sender.bare, message_id)
        count = self._failures.pop(key, 0) + 1
        self._failures[key] = count
        while len(self._failures) > self._limit:
            self._failures.popitem(last=False)
        return count
