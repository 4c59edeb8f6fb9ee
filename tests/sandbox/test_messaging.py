"""Messages both ways through the sandbox, with fan-out, receipts, retries and media."""

from __future__ import annotations

from bridge.gip import stanzas as st
from bridge.gip.client import MessageEvent, ReceiptEvent
from bridge.gip.content import Content
from bridge.gip.jid import Jid
from tests.sandbox.harness import PartnerServer, Sandbox, new_partner


async def test_text_both_ways_with_receipts(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    alice = await new_partner(sandbox, partner_server)
    native = await sandbox.native()
    bob = Jid.parse(native["iid"])
    assert await alice.client.lookup(native["uvid"]) == bob

    message_id = await alice.client.send_message(bob, Content(text="hello from matrix"))
    received = await sandbox.events(native["iid"], "message")
    assert received[-1]["id"] == message_id
    assert received[-1]["content"] == {"text": "hello from matrix"}
    delivered = await alice.wait_for(
        lambda e: isinstance(e, ReceiptEvent) and e.receipt.type is st.ReceiptType.DELIVERED
    )
    assert delivered.receipt.id == message_id
    read = await alice.wait_for(
        lambda e: isinstance(e, ReceiptEvent) and e.receipt.type is st.ReceiptType.READ
    )
    assert message_id in read.receipt.message_ids

    reply = await sandbox.control(
        "POST", f"/natives/{native['iid']}/send", {"to": alice.client.iid, "text": "hello from whatsapp"}
    )
    event = await alice.wait_for(lambda e: isinstance(e, MessageEvent) and e.id == reply["id"])
    assert event.content.text == "hello from whatsapp"
    assert event.sender.bare == bob
    receipts = await sandbox.events(native["iid"], "receipt")
    assert any(r["id"] == reply["id"] and r["type"] == "delivered" for r in receipts)
    info = await sandbox.control("GET", f"/partners/{alice.client.iid}")
    assert info["mailbox"] == 0, "the delivery receipt emptied the mailbox"
    await alice.client.close()
