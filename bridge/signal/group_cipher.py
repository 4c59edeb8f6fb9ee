"""Sender Keys operations driven by a :class:`SenderKeyStore`, for one group."""

from __future__ import annotations

from . import sender_keys
from .messages import SenderKeyDistributionMessage, SenderKeyMessage, SenderKeySchema
from .sender_keys import SenderKeyRecord
from .stores import ProtocolAddress, SenderKeyStore


class GroupCipher:
    """Our sender key and the members' sender keys for one group (``distribution_id``)."""

    def __init__(
        self,
        store: SenderKeyStore,
        distribution_id: str,
        *,
        schema: SenderKeySchema = SenderKeySchema.LEGACY,
        distribution_uuid: bytes | None = None,
    ) -> None:
        self._store = store
        self._distribution_id = distribution_id
        self._schema = schema
        self._uuid = distribution_uuid

    async def create_distribution_message(self, own_address: ProtocolAddress) -> SenderKeyDistributionMessage:
        record = await self._store.load_sender_key(own_address, self._distribution_id)
        record, message = sender_keys.create_distribution_message(
            record or SenderKeyRecord(), schema=self._schema, distribution_id=self._uuid
        )
        await self._store.store_sender_key(own_address, self._distribution_id, record)
        return message

    async def process_distribution_message(
        self, sender: ProtocolAddress, message: SenderKeyDistributionMessage
    ) -> None:
        record = await self._store.load_sender_key(sender, self._distribution_id)
        record = sender_keys.process_distribution_message(record or SenderKeyRecord(), message)
        await self._store.store_sender_key(sender, self._distribution_id, record)

    async def encrypt(self, own_address: ProtocolAddress, plaintext: bytes) -> SenderKeyMessage:
        record = await self._store.load_sender_key(own_address, self._distribution_id)
        record, message = sender_keys.group_encrypt(
            record or SenderKeyRecord(), plaintext, schema=self._schema, distribution_id=self._uuid
        )
        await self._store.store_sender_key(own_address, self._distribution_id, record)
        return message

    async def decrypt(self, sender: ProtocolAddress, data: bytes) -> bytes:
        message = SenderKeyMessage.deserialize(data, self._schema)
        record = await self._store.load_sender_key(sender, self._distribution_id)
        record, plaintext = sender_keys.group_decrypt(record or SenderKeyRecord(), message)
        await self._store.store_sender_key(sender, self._distribution_id, record)
        return plaintext
