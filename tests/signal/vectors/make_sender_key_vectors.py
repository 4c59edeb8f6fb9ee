"""Writes sender_keys_legacy.json: golden vectors for the legacy Sender Keys layout.

Run once (``python -m tests.signal.vectors.make_sender_key_vectors``) and commit the
result; the tests then hold our encoding and crypto to these bytes. The layout was
cross-checked by reading go.mau.fi/libsignal (``groups/``, ``protocol/``), whose
WhatsApp-lineage encoding has ``id=1, iteration=2, chainKey=3, signingKey=4`` and
``id=1, iteration=2, ciphertext=3``.
"""

from __future__ import annotations

import json
from pathlib import Path

from bridge.signal.curve import KeyPair
from bridge.signal.sender_keys import (
    SenderChainKey,
    SenderKeyRecord,
    SenderKeyState,
    create_distribution_message,
    group_encrypt,
)

SIGNING_PRIVATE = bytes.fromhex("a8" + "11" * 30 + "57")
CHAIN_KEY = bytes.fromhex("c0" * 16 + "de" * 16)
KEY_ID = 1234567890
ITERATION = 5
PLAINTEXTS = [b"", b"hello group", b"x" * 47, "\u00e9t\u00e9 \U0001f600".encode()]


def main() -> None:
    signing = KeyPair.from_private(SIGNING_PRIVATE)
    state = SenderKeyState(KEY_ID, SenderChainKey(ITERATION, CHAIN_KEY), signing.public, signing)
    record = SenderKeyRecord((state,))
    record, skdm = create_distribution_message(record)
    messages = []
    for plaintext in PLAINTEXTS:
        record, message = group_encrypt(record, plaintext)
        messages.append({"plaintext": plaintext.hex(), "message": message.serialized.hex()})
    data = {
        "signing_private": SIGNING_PRIVATE.hex(),
        "signing_public": signing.public.serialize().hex(),
        "chain_key": CHAIN_KEY.hex(),
        "key_id": KEY_ID,
        "iteration": ITERATION,
        "distribution_message": skdm.serialized.hex(),
        "messages": messages,
    }
    path = Path(__file__).with_name("sender_keys_legacy.json")
    path.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
