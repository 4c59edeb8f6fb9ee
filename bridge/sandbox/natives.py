"""Native users' devices: Signal clients on ``bridge.signal`` whose state lives in the
sandbox database, so that they survive a restart like a phone would."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from bridge.gip.jid import Jid
from bridge.gip.stanzas import Bundle, Enc, EncType, PreKey, SignedPreKey
from bridge.signal import (
    IdentityChange,
    IdentityKeyPair,
    MessageType,
    PreKeyRecord,
    ProtocolAddress,
    PublicKey,
    SessionCipher,
    SessionRecord,
    SignedPreKeyRecord,
    generate_prekeys,
    generate_registration_id,
)
from bridge.signal.sender_keys import SenderKeyRecord
from bridge.signal.stores import Direction

from .store import DeviceKeys, SandboxStore

INITIAL_PREKEYS = 20


class NativeSignalStore:
    """The ``bridge.signal`` store protocols for one native device, on the sandbox DB.

    Identity changes of peers are accepted and reported, as WhatsApp clients do.
    """

    def __init__(self, store: SandboxStore, jid: str) -> None:
        self._db = store
        self.jid = jid

    def _get(self, kind: str, key: str) -> bytes | None:
        return self._db.signal_get(self.jid, kind, key)

    async def get_identity_key_pair(self) -> IdentityKeyPair:
        data = self._get("self", "identity")
        if data is None:
            raise LookupError(f"native device {self.jid} has no identity")
        return IdentityKeyPair.deserialize(data)

    async def get_local_registration_id(self) -> int:
        data = self._get("self", "registration")
        return int.from_bytes(data, "big") if data else 0

    async def save_identity(self, address: ProtocolAddress, key: PublicKey) -> IdentityChange:
        old = self._get("peer", str(address))
        self._db.signal_put(self.jid, "peer", str(address), key.serialize())
        if old is not None and old != key.serialize():
            return IdentityChange.REPLACED_EXISTING
        return IdentityChange.NEW_OR_UNCHANGED

    async def is_trusted_identity(self, address: ProtocolAddress, key: PublicKey, direction: Direction) -> bool:
        return True

    async def get_identity(self, address: ProtocolAddress) -> PublicKey | None:
        data = self._get("peer", str(address))
        return PublicKey.deserialize(data) if data else None

    async def load_pre_key(self, pre_key_id: int) -> PreKeyRecord | None:
        data = self._get("prekey", str(pre_key_id))
        return PreKeyRecord.deserialize(data) if data else None

    async def store_pre_key(self, record: PreKeyRecord) -> None:
        self._db.signal_put(self.jid, "prekey", str(record.id), record.serialize())

    async def remove_pre_key(self, pre_key_id: int) -> None:
        self._db.signal_delete(self.jid, "prekey", str(pre_key_id))

    async def load_signed_pre_key(self, signed_pre_key_id: int) -> SignedPreKeyRecord | None:
        data = self._get("spk", str(signed_pre_key_id))
        return SignedPreKeyRecord.deserialize(data) if data else None

    async def store_signed_pre_key(self, record: SignedPreKeyRecord) -> None:
        self._db.signal_put(self.jid, "spk", str(record.id), record.serialize())

    async def load_session(self, address: ProtocolAddress) -> SessionRecord | None:
        data = self._get("session", str(address))
        return SessionRecord.deserialize(data) if data else None

    async def store_session(self, address: ProtocolAddress, record: SessionRecord) -> None:
        self._db.signal_put(self.jid, "session", str(address), record.serialize())

    async def load_sender_key(self, sender: ProtocolAddress, distribution_id: str) -> SenderKeyRecord | None:
        data = self._get("senderkey", f"{sender}/{distribution_id}")
        return SenderKeyRecord.deserialize(data) if data else None

    async def store_sender_key(self, sender: ProtocolAddress, distribution_id: str, record: SenderKeyRecord) -> None:
        self._db.signal_put(self.jid, "senderkey", f"{sender}/{distribution_id}", record.serialize())


class NativeDevice:
    """One native device: keys published in the sandbox, Signal state in its store."""

    def __init__(self, store: SandboxStore, jid: Jid, clock_ms: Callable[[], int]) -> None:
        self.jid = jid
        self._db = store
        self.signal = NativeSignalStore(store, str(jid))
        self._clock_ms = clock_ms

    async def install(self) -> DeviceKeys:
        """Generate a fresh identity and keys (first install or reinstall) and publish them."""
        jid = str(self.jid)
        for kind in ("session", "peer", "prekey", "spk", "senderkey", "sent", "retry"):
            self._db.signal_delete(jid, kind)
        identity = IdentityKeyPair.generate()
        registration = generate_registration_id()
        self._db.signal_put(jid, "self", "identity", identity.serialize())
        self._db.signal_put(jid, "self", "registration", registration.to_bytes(4, "big"))
        spk = SignedPreKeyRecord.generate(identity, secrets.randbelow(0xFFFFFE) + 1, 0)
        await self.signal.store_signed_pre_key(spk)
        keys = DeviceKeys(
            jid,
            str(self.jid.bare),
            self.jid.device,
            registration,
            identity.public.raw,
            spk.id,
            spk.key_pair.public.raw,
            spk.signature,
        )
        self._db.put_device(keys)
        await self.add_prekeys(INITIAL_PREKEYS)
        return keys

    async def add_prekeys(self, count: int) -> None:
        start = secrets.randbelow(0xFFFF00) + 1
        records = generate_prekeys(start, count)
        for record in records:
            await self.signal.store_pre_key(record)
        self._db.add_prekeys(str(self.jid), [(r.id, r.key_pair.public.raw) for r in records])

    async def fresh_bundle(self) -> Bundle:
        """Our bundle with a newly made one-time prekey, for a retry receipt."""
        keys = self._db.device(str(self.jid))
        if keys is None:
            raise LookupError(f"native device {self.jid} is not installed")
        record = generate_prekeys(secrets.randbelow(0xFFFF00) + 1, 1)[0]
        await self.signal.store_pre_key(record)
        return Bundle(
            self.jid,
            keys.registration_id,
            keys.identity,
            SignedPreKey(keys.spk_id, keys.spk_pub, keys.spk_sig),
            PreKey(record.id, record.key_pair.public.raw),
        )

    def cipher(self, peer: Jid) -> SessionCipher:
        return SessionCipher(self.signal, peer.signal_address(), clock=self._clock_ms)

    async def encrypt(self, peer: Jid, plaintext: bytes, bundle: Bundle | None) -> Enc:
        """Encrypt for a peer device, opening a session from ``bundle`` if one is given or
        none exists yet (the caller fetched it from the gatekeeper's key directory)."""
        cipher = self.cipher(peer)
        if bundle is not None:
            await cipher.process_bundle(bundle.to_signal())
        message = await cipher.encrypt(plaintext)
        enc_type = EncType.PKMSG if message.type == MessageType.PREKEY else EncType.MSG
        return Enc(enc_type, message.serialized)

    async def has_session(self, peer: Jid) -> bool:
        return await self.cipher(peer).has_session()

    async def decrypt(self, peer: Jid, enc: Enc) -> tuple[bytes, bool]:
        """Plaintext and whether the peer's identity changed; raises SignalError."""
        message_type = MessageType.PREKEY if enc.type is EncType.PKMSG else MessageType.WHISPER
        result = await self.cipher(peer).decrypt(message_type, enc.ciphertext)
        return result.plaintext, result.identity_change is IdentityChange.REPLACED_EXISTING
