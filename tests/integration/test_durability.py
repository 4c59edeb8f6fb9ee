"""Nothing lost at the edges, on real Synapse, Postgres and the sandbox: each test injects
the failure it is about.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from bridge.app import BridgeApp
from tests.integration.conftest import Stack
from tests.integration.test_bridge import log_in, open_chat
from tests.integration.test_chat_features import chat, in_room, native_events

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def put_transaction(stack: Stack, txn_id: str, body: dict[str, Any], token: str | None = None) -> int:
    """What the homeserver does: PUT a transaction to the bridge."""
    config = stack.bridge.config
    url = f"{config.appservice_address}/_matrix/app/v1/transactions/{txn_id}"
    headers = {"Authorization": f"Bearer {token or config.hs_token}"}
    async with stack.http.put(url, json=body, headers=headers) as response:
        return response.status


def message(room_id: str, sender: str, text: str) -> dict[str, Any]:
    return {
        "type": "m.room.message",
        "room_id": room_id,
        "sender": sender,
        "event_id": f"$handmade-{uuid.uuid4().hex}",
        "origin_server_ts": 1,
        "content": {"msgtype": "m.text", "body": text},
    }


async def test_one_failing_event_drops_nothing_else_of_its_transaction(stack: Stack) -> None:
    """Defect: mautrix answered 200 after a failing handler and remembered the transaction
    id, so every later event of that transaction was lost and the resend was a no-op."""
    alice, _, portal, native, _ = await chat(stack)
    core = stack.bridge.core
    original = core.flow.message

    async def poisoned(room_id: str, event_id: str, sender: str, content: dict[str, Any], *rest: Any) -> Any:
        if content.get("body") == "poison":
            raise ValueError("a bug in the handler")
        return await original(room_id, event_id, sender, content, *rest)

    core.flow.message = poisoned  # type: ignore[method-assign]
    try:
        events = [message(portal, alice.mxid, "poison"), message(portal, alice.mxid, "after the poison")]
        txn = f"handmade-{uuid.uuid4().hex}"
        assert await put_transaction(stack, txn, {"events": events}) == 200
        received = await native_events(stack, native, "message", 1, timeout=30)
        assert [m["content"]["text"] for m in received] == ["after the poison"]
        # The poisoned one failed for good, with a status, after its tries.
        rows = await core.db.fetch(
            "SELECT state, attempts FROM matrix_events WHERE event_id = $1", events[0]["event_id"]
        )
        assert rows[0]["state"] == "failed" and rows[0]["attempts"] == core.loops.policy.max_attempts
        # The homeserver's resend of the same transaction changes nothing.
        assert await put_transaction(stack, txn, {"events": events}) == 200
        await asyncio.sleep(0.5)
        assert len(await native_events(stack, native, "message", 1)) == 1
    finally:
        core.flow.message = original  # type: ignore[method-assign]
    await alice.close()


async def test_a_transaction_that_cannot_be_stored_is_not_acknowledged(stack: Stack) -> None:
    alice, _, portal, native, _ = await chat(stack)
    store = stack.bridge.stores.matrix_events
    original = store.store_transaction

    async def database_down(*args: Any) -> Any:
        raise ConnectionResetError("the database went away")

    events = [message(portal, alice.mxid, "stored on the second try")]
    txn = f"handmade-{uuid.uuid4().hex}"
    store.store_transaction = database_down  # type: ignore[method-assign]
    try:
        assert await put_transaction(stack, txn, {"events": events}) == 500, "the homeserver must send it again"
    finally:
        store.store_transaction = original  # type: ignore[method-assign]
    assert await put_transaction(stack, txn, {"events": events}) == 200
    received = await native_events(stack, native, "message", 1, timeout=30)
    assert received[0]["content"]["text"] == "stored on the second try"
    assert await put_transaction(stack, txn, {"events": events}, token="not-the-hs-token") == 401
    await alice.close()


async def test_a_retry_receipt_is_answered_after_a_restart_for_the_recipient_only(stack: Stack) -> None:
    """Defect: the sent messages a retry receipt needs lived in the connection object, so
    a retry receipt after any reconnect went unanswered; and a retry receipt from anyone
    got the message re-encrypted for them."""
    alice, _, portal, native, iid = await chat(stack)
    stranger = await stack.sandbox.native()
    event_id = await alice.say(portal, "please read this")
    await alice.status_of(event_id)
    [sent] = await native_events(stack, native, "message", 1)
    await stack.bridge.stop()
    stack.bridge = BridgeApp(stack.bridge.config)
    await stack.bridge.start()
    await stack.sandbox.control("POST", f"/natives/{stranger['iid']}/retry", {"to": iid, "id": sent["id"]})
    await stack.sandbox.control("POST", f"/natives/{native['iid']}/retry", {"to": iid, "id": sent["id"]})
    for _ in range(150):
        copies = [m for m in await stack.sandbox.events(native["iid"], "message") if m["id"] == sent["id"]]
        if len(copies) == 2:
            break
        await asyncio.sleep(0.1)
    assert len(copies) == 2, "the recipient's device got the message again"
    assert copies[1]["content"] == {"text": "please read this"}
    assert await stack.sandbox.events(stranger["iid"], "message") == [], "nobody else did"
    await alice.close()


async def test_a_connection_supervisor_survives_an_unexpected_error(stack: Stack) -> None:
    """Defect: a supervisor ended on any error but GipError or a timeout and stayed
    "connecting" with nothing logged and nothing retried."""
    alice = await stack.user()
    room = await log_in(stack, alice)
    login = await stack.bridge.core.logins.get(alice.mxid)
    tokens = stack.bridge.connections.tokens
    original = tokens.for_login
    failures = []

    def broken(login_: Any) -> str:
        if not failures:
            failures.append(1)
            raise RuntimeError("an unexpected bug")
        return original(login_)

    tokens.for_login = broken  # type: ignore[method-assign]
    try:
        await stack.sandbox.control("POST", "/faults", {"drop": login.iid})
        for _ in range(200):
            client = stack.bridge.connections.client_for(alice.mxid)
            if failures and client is not None:
                break
            await asyncio.sleep(0.05)
        assert failures and stack.bridge.connections.client_for(alice.mxid) is not None
    finally:
        tokens.for_login = original  # type: ignore[method-assign]
    native = await stack.sandbox.native()
    portal = await open_chat(stack, alice, room, native)
    await alice.status_of(await alice.say(portal, "still here"))
    await alice.close()


async def test_gatekeeper_faults_lose_nothing_and_keep_the_order(stack: Stack) -> None:
    """Dropped connections, delayed acks, 429 with retry_after and 503 at connect, a
    corrupt ciphertext: every message arrives once, in order, both ways."""
    alice, _, portal, native, iid = await chat(stack)
    send = f"/natives/{native['iid']}/send"
    outgoing = [f"out {i}" for i in range(12)]
    incoming = [f"in {i}" for i in range(12)]

    async def faults(i: int) -> None:
        if i == 2:
            await stack.sandbox.control("POST", "/faults", {"drop": iid})
        elif i == 4:
            await stack.sandbox.control("POST", "/faults", {"ack_delay": 0.3})
        elif i == 6:
            await stack.sandbox.control(
                "POST", "/faults", {"ack_delay": 0, "refuse_message": {"iid": iid, "code": "429"}}
            )
        elif i == 8:
            await stack.sandbox.control("POST", "/faults", {"refuse_connect": {"iid": iid, "code": "503"}, "drop": iid})
        elif i == 10:
            await stack.sandbox.control("POST", "/faults", {"corrupt_next_from": native["iid"]})

    for i in range(12):
        await faults(i)
        await alice.say(portal, outgoing[i])
        await stack.sandbox.control("POST", send, {"to": iid, "text": incoming[i]})
    received = await native_events(stack, native, "message", 12, timeout=90)
    assert [m["content"]["text"] for m in received] == outgoing
    for text in incoming:
        await alice.wait_for(lambda e, t=text: in_room(portal)(e) and e["content"].get("body") == t, timeout=60)
    posted = [
        e["content"]["body"]
        for e in alice.events
        if in_room(portal)(e) and e["sender"] != alice.mxid and e["content"].get("msgtype") == "m.text"
    ]
    assert posted == incoming, "each once, in the order the native sent them"
    await alice.close()


async def test_the_bridge_device_never_makes_new_cross_signing_keys_on_restart(e2ee_stack: Stack) -> None:
    """Defect: every start made new cross-signing keys for the bot (clients saw its
    identity reset)."""
    await e2ee_stack.bridge.stop()
    e2ee_stack.bridge = BridgeApp(e2ee_stack.bridge.config)
    await e2ee_stack.bridge.start()
    assert e2ee_stack.bridge.matrix.e2ee.bot.cross_signed == 0
