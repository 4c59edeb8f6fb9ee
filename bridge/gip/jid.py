"""GIP addresses: ``<user>@<server>`` and ``<user>:<device>@<server>`` (device 0 = primary).

Partner users are ``1-<digits>@interop`` and native users ``<digits>@native`` (ours).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bridge.signal import ProtocolAddress

from .errors import GipError, GipErrorCode

PARTNER_SERVER = "interop"
NATIVE_SERVER = "native"
_JID = re.compile(r"^(?P<user>[0-9A-Za-z.\-_]{1,64})(?::(?P<device>\d{1,3}))?@(?P<server>[a-z.]{1,32})$")


@dataclass(frozen=True, slots=True, order=True)
class Jid:
    user: str
    server: str
    device: int = 0

    @classmethod
    def parse(cls, text: str) -> Jid:
        match = _JID.match(text)
        if match is None:
            raise GipError(GipErrorCode.BAD_REQUEST, "malformed address")
        device = int(match["device"]) if match["device"] else 0
        return cls(match["user"], match["server"], device)

    @property
    def bare(self) -> Jid:
        """The user, without a device."""
        return Jid(self.user, self.server)

    def with_device(self, device: int) -> Jid:
        return Jid(self.user, self.server, device)

    def signal_address(self) -> ProtocolAddress:
        """The Signal session address of this device."""
        return ProtocolAddress(str(self.bare), self.device)

    def __str__(self) -> str:
        if self.device:
            return f"{self.user}:{self.device}@{self.server}"
        return f"{self.user}@{self.server}"
