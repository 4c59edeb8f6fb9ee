"""Sender Keys fan-out: what one group message costs the Partner side, against what 50
pairwise Signal encryptions cost, in the same run.

The sandbox runs as its own process with a group of 50 participant devices (the sender's
one and 49 natives' devices, their decryption happening there, not here). This process
holds the sending Partner client (``bridge.gip.client``: Sender Keys, the stanza, the ack
wait) and a stand-in Partner server. The first message hands the sender key to every
device (50 pairwise messages); every later one is the body, encrypted once. The figure is
this process's CPU to encrypt one later message for the whole group, against the CPU of 50
pairwise encryptions over established sessions measured just before (``SessionCipher`` on
in-memory stores). It prints beside it everything a message costs here, the receipts the
participants send back included (a pairwise fan-out would get them too).

This is the client half of the bridge's group path, where Sender Keys make their saving.
What the bridge adds per message above it (the portal loop, the durable outbox, the
homeserver round trips) is the same for a group as for a 1:1 chat; bench/pipeline_bench.py
counts it.

    python bench/group_bench.py [--quick]

Last line: ``group_fanout_ratio: X`` (CPU per group message over 50 pairwise encryptions;
Sender Keys should make it well below 1).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.gip.client import ReceiptEvent
from bridge.gip.content import Content
from bridge.gip.jid import Jid
from bridge.signal import (
    IdentityKeyPair,
    MemorySignalStore,
    MessageType,
    PreKeyBundle,
    ProtocolAddress,
    SessionCipher,
    SignedPreKeyRecord,
    generate_prekeys,
)
from devstack.sandbox import Partner, PartnerServer, RemoteSandbox, new_partner, spawn_sandbox_process

DEVICES = 50


async def pairwise_reference(rounds: int) -> float:
    """CPU seconds of one round of 50 pairwise encryptions (sessions set up beforehand)."""
    sender = MemorySignalStore(IdentityKeyPair.generate(), 1)
    ciphers = []
    for i in range(DEVICES):
        identity = IdentityKeyPair.generate()
        receiver = MemorySignalStore(identity, 1000 + i)
        signed = SignedPreKeyRecord.generate(identity, 1, 0)
        await receiver.store_signed_pre_key(signed)
        prekey = generate_prekeys(1, 1)[0]
        bundle = PreKeyBundle(
            registration_id=1000 + i,
            device_id=0,
            pre_key_id=prekey.id,
            pre_key=prekey.key_pair.public,
            signed_pre_key_id=signed.id,
            signed_pre_key=signed.key_pair.public,
            signed_pre_key_signature=signed.signature,
            identity_key=identity.public,
        )
        cipher = SessionCipher(sender, ProtocolAddress(f"peer{i}", 0))
        await cipher.process_bundle(bundle)
        ciphers.append(cipher)
    plaintext = b"x" * 64
    for cipher in ciphers:  # past the first (prekey) message of each session
        assert (await cipher.encrypt(plaintext)).type in (MessageType.PREKEY, MessageType.WHISPER)
    started = time.process_time()
    for _ in range(rounds):
        for cipher in ciphers:
            await cipher.encrypt(plaintext)
    return (time.process_time() - started) / rounds


async def group_run(count: int, workdir: Path) -> tuple[float, float, float, int]:
    server = PartnerServer()
    await server.start()
    http = aiohttp.ClientSession()
    process, base = await spawn_sandbox_process(workdir, server.base, http)
    try:
        sandbox = RemoteSandbox(base, http)
        alice = await new_partner(sandbox, server, keepalive=0)  # type: ignore[arg-type]
        # Delivery receipts only (one per native), each waited for before the next message,
        # so that the time to encrypt one message is not mixed with handling receipts.
        natives = [await sandbox.native(devices=2, read_receipts=False) for _ in range((DEVICES - 1) // 2)]
        natives.append(await sandbox.native(devices=1, read_receipts=False))
        group = (await alice.client.create_group("bench", [Jid.parse(n["iid"]) for n in natives])).group.jid
        info = await alice.client.group_info(group, refresh=True)
        devices = 1 + sum(len(n["devices"]) for n in natives)
        assert len(info.members) == len(natives) + 1
        first = await alice.client.encrypt_group_message(group, Content(text="the key for everyone"))
        handed = len(first.participants)
        await alice.client.send_group_prepared(first, Content(text="the key for everyone"))
        sealing = 0.0
        receipts = Receipts(alice)
        started_cpu, started = time.process_time(), time.perf_counter()
        for i in range(count):
            content = Content(text=f"message {i}")
            before = time.process_time()
            prepared = await alice.client.encrypt_group_message(group, content)
            sealing += time.process_time() - before
            assert prepared.participants == (), "after the first message only the body goes"
            await alice.client.send_group_prepared(prepared, content)
            await receipts.wait_for(prepared.id, len(natives))
        total = (time.process_time() - started_cpu) / count
        rate = count / (time.perf_counter() - started)
        await alice.client.close()
        assert handed == devices - 1, (handed, devices)
        return sealing / count, total, rate, handed
    finally:
        process.terminate()
        process.wait()
        await http.close()
        await server.stop()


class Receipts:
    """Counts the sender's receipts per message as they come (events are only appended)."""

    def __init__(self, partner: Partner) -> None:
        self._partner = partner
        self._seen = 0
        self._counts: dict[str, int] = {}

    async def wait_for(self, message_id: str, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self._counts.get(message_id, 0) < count:
            for event in self._partner.events[self._seen :]:
                if isinstance(event, ReceiptEvent):
                    self._counts[event.receipt.id] = self._counts.get(event.receipt.id, 0) + 1
            self._seen = len(self._partner.events)
            if time.monotonic() > deadline:
                raise TimeoutError(f"receipts for {message_id}: {self._counts.get(message_id, 0)} of {count}")
            await asyncio.sleep(0.0005)


async def main(quick: bool) -> None:
    count = 100 if quick else 500
    reference = await pairwise_reference(20 if quick else 100)
    with tempfile.TemporaryDirectory(prefix="group-bench-") as workdir:
        sealing, total, rate, handed = await group_run(count, Path(workdir))
    print(f"participant devices: {handed + 1} (the first message handed the key to {handed})")
    print(f"group messages: {rate:.0f}/s sent and acknowledged one after another")
    print(f"  encrypting one for the whole group: {sealing * 1e6:.0f} µs CPU")
    print(f"  everything per message (stanza, Noise, the ack, a receipt per participant): {total * 1e6:.0f} µs CPU")
    print(f"50 pairwise Signal encryptions: {reference * 1e6:.0f} µs CPU")
    print(f"group_fanout_ratio: {sealing / reference:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    asyncio.run(main(parser.parse_args().quick))
    os._exit(0)
