"""A Python test device on bridge.signal with the same verbs as devstack.signal_client.RemoteParty."""

from __future__ import annotations

import itertools
from typing import Any

from bridge.signal import (
    IdentityKeyPair,
    MemorySignalStore,
    MessageType,
    PreKeyBundle,
    ProtocolAddress,
    PublicKey,
    SessionCipher,
)
from bridge.signal.curve import KeyPair
from bridge.signal.prekeys import PreKeyRecord, SignedPreKeyRecord
from devstack.signal_client import b64, unb64


class LocalParty:
    def __init__(self, name: str, registration_id: int, clock: Any = None) -> None:
        self.name = name
        self.registration_id = registration_id
        self.identity = IdentityKeyPair.generate()
        self.store = MemorySignalStore(self.identity, registration_id)
        self._ids = itertools.count(1)
        self._clock = clock

    @property
    def identity_key(self) -> bytes:
        return self.identity.public.serialize()

    def cipher(self, peer_name: str) -> SessionCipher:
        address = ProtocolAddress(peer_name, 1)
        if self._clock is not None:
            return SessionCipher(self.store, address, clock=self._clock)
        return SessionCipher(self.store, address)

    async def make_bundle(self, *, one_time: bool) -> dict[str, Any]:
        n = next(self._ids)
        spk = SignedPreKeyRecord.generate(self.identity, n, 0)
        await self.store.store_signed_pre_key(spk)
        bundle: dict[str, Any] = {
            "registration_id": self.registration_id,
            "device_id": 1,
            "signed_pre_key_id": n,
            "signed_pre_key": b64(spk.key_pair.public.serialize()),
            "signed_pre_key_signature": b64(spk.signature),
            "identity_key": b64(self.identity_key),
            "pre_key_id": None,
            "pre_key": None,
        }
        if one_time:
            opk = PreKeyRecord(n, KeyPair.generate())
            await self.store.store_pre_key(opk)
            bundle["pre_key_id"] = n
            bundle["pre_key"] = b64(opk.key_pair.public.serialize())
        return bundle

    async def process_bundle(self, peer_name: str, bundle: dict[str, Any]) -> None:
        await self.cipher(peer_name).process_bundle(to_bundle(bundle))

    async def encrypt(self, peer_name: str, plaintext: bytes) -> tuple[int, bytes]:
        message = await self.cipher(peer_name).encrypt(plaintext)
        return int(message.type), message.serialized

    async def decrypt(self, peer_name: str, message_type: int, body: bytes) -> bytes:
        result = await self.cipher(peer_name).decrypt(MessageType(message_type), body)
        return result.plaintext

    def reinstall(self) -> None:
        self.identity = IdentityKeyPair.generate()
        self.store = MemorySignalStore(self.identity, self.registration_id)


def to_bundle(b: dict[str, Any]) -> PreKeyBundle:
    return PreKeyBundle(
        registration_id=b["registration_id"],
        device_id=b["device_id"],
        pre_key_id=b["pre_key_id"],
        pre_key=PublicKey.deserialize(unb64(b["pre_key"])) if b["pre_key"] else None,
        signed_pre_key_id=b["signed_pre_key_id"],
        signed_pre_key=PublicKey.deserialize(unb64(b["signed_pre_key"])),
        signed_pre_key_signature=unb64(b["signed_pre_key_signature"]),
        identity_key=PublicKey.deserialize(unb64(b["identity_key"])),
    )
