"""The durable flow through the core, with both sides faked and failures injected.

Each test names the defect it guards against: what used to lose, duplicate or reorder a
message, and what happens now.
"""

from __future__ import annotations

import time

from bridge.core.errors import Refused, Unavailable
from bridge.core.matrix_api import SendStatus
from bridge.gatekeeper.state import ConnectionState, StateChange
from bridge.gip import stanzas as st
from bridge.gip.client import ReceiptEvent, UndecryptableEvent
from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.jid import Jid
from tests.core.conftest import ALICE, PEER, Harness


async def posted(h: Harness, count: int) -> list[str]:
    await h.until(lambda: len(h.matrix.bodies()) >= count)
    await h.core.settle()
    return h.matrix.bodies()


async def test_an_incoming_message_is_posted_once_at_the_time_it_was_sent(harness: Harness) -> None:
    await harness.incoming("hello", t=1_600_000_000)
    assert await posted(harness, 1) == ["hello"]
    post = harness.matrix.posts[-1]
    assert post["ts"] == 1_600_000_000_000, "the gatekeeper's time, not the time of posting"
    assert post["txn_id"].startswith("dma-in-"), "a transaction id derived from the stored item"
    assert [item.state for item in await harness.core.inbox.pending()] == []


async def test_storing_an_incoming_message_calls_out_to_nobody(harness: Harness) -> None:
    """Defect: the handler registered the puppet on the homeserver before the inbox write,
    so a homeserver down for a new contact's first message lost it. Storing now touches
    the database only; the homeserver is reached from the portal's loop."""
    harness.matrix.faults.add("ensure_puppet", *[Unavailable("the homeserver is down")] * 3)
    await harness.core.stop()
    await harness.restart()  # nothing runs the loop during the store below
    await harness.core.loops.stop()
    calls_before = len(harness.matrix.posts)
    await harness.incoming("first message from a new contact")
    assert len(harness.matrix.posts) == calls_before
    assert len(await harness.core.inbox.pending()) == 1, "stored, so the receipt may go"
    await harness.restart()
    assert await posted(harness, 1) == ["first message from a new contact"]


async def test_a_crash_between_posting_and_marking_posts_nothing_twice(harness: Harness) -> None:
    """Defect: posts used a random transaction id and were marked after the send, so a
    retry after a timeout or a crash posted twice. The mark now lands a moment later with
    others; the process dies before it does, and the replay posts under the same id."""
    later = harness.core.stores.later
    later._delay = 60.0  # nothing lands by itself during this test
    await harness.incoming("only once")
    await harness.until(lambda: harness.matrix.bodies() == ["only once"])
    assert later.pending >= 1
    later._waiting.clear()  # the process dies: its bookkeeping never lands
    await harness.restart()
    await harness.until(lambda: not harness.core.loops.busy(("portal", ALICE, PEER)))
    await harness.core.settle()
    assert harness.matrix.bodies() == ["only once"]
    assert len([p for p in harness.matrix.posts if p["kind"] == "message"]) == 1
    assert await harness.core.inbox.pending() == []


async def test_a_failing_head_holds_its_portal_but_not_the_others(harness: Harness) -> None:
    """Defect: a failed post waited for a 30 s loop while later messages of the same chat
    went ahead."""
    harness.matrix.faults.add("send_message", *[Unavailable("briefly down")] * 3)
    await harness.incoming("one")
    await harness.incoming("two")
    await harness.incoming("from someone else", peer="8@native")
    await posted(harness, 3)
    bodies = harness.matrix.bodies()
    assert bodies.index("one") < bodies.index("two"), "nothing overtakes the head of its portal"
    assert bodies.index("from someone else") < bodies.index("one"), "another portal is not held up"


async def test_an_item_that_can_never_post_fails_after_the_cap_and_says_so(harness: Harness) -> None:
    """Defect: inbox items that could never post were retried every 30 s, forever."""
    room = await harness.room()
    refusal = Refused("M_TOO_LARGE", "the homeserver refused it (M_TOO_LARGE)")
    harness.matrix.faults.add("send_message", *[refusal] * 3)
    await harness.incoming("too big")
    await harness.incoming("the next one")
    await posted(harness, 1)
    assert harness.matrix.bodies() == ["the next one"]
    failed = [row for row in await harness.db.fetch("SELECT * FROM inbox WHERE state = 'failed'")]
    assert len(failed) == 1 and failed[0]["attempts"] == 3
    assert any(room_id == room and "could not be shown" in text for room_id, text in harness.matrix.notices)


async def test_outgoing_is_encrypted_once_and_every_resend_sends_that_ciphertext(harness: Harness) -> None:
    """Defect: a resend encrypted again; with a session rolled back meanwhile a message key
    was used twice. The prepared stanza is stored with its sessions and resent as it is."""
    room = await harness.room()
    harness.gatekeeper.faults.add("send", GipError(GipErrorCode.TIMEOUT, "no ack"), GipError(GipErrorCode.CLOSED))
    event_id = harness.outgoing(room, "hi there")
    await harness.until(lambda: len(harness.gatekeeper.delivered) == 1)
    await harness.core.settle()
    assert len(harness.gatekeeper.prepared) == 1, "encrypted once"
    assert len({sent.prepared for sent in harness.gatekeeper.attempts}) == 1 and len(harness.gatekeeper.attempts) == 3
    item = await harness.core.outbox.by_event(room, event_id)
    assert item.state == "sent" and item.prepared == harness.gatekeeper.prepared[0][1]
    await harness.until(lambda: any(s.status is SendStatus.SUCCESS for _, s in harness.matrix.statuses))


async def test_a_crash_after_encrypting_resends_the_stored_ciphertext_after_the_restart(harness: Harness) -> None:
    room = await harness.room()
    harness.gatekeeper.faults.add("send", *[GipError(GipErrorCode.CLOSED)] * 1000)
    harness.outgoing(room, "survives")
    await harness.until(lambda: len(harness.gatekeeper.attempts) >= 1)
    await harness.restart()
    harness.gatekeeper.faults.queued.clear()
    harness.core.loops.wake()
    await harness.until(lambda: len(harness.gatekeeper.delivered) == 1)
    assert len(harness.gatekeeper.prepared) == 1
    assert harness.gatekeeper.delivered[0].prepared == harness.gatekeeper.prepared[0][1]


async def test_a_rate_limit_holds_the_portal_for_exactly_as_long_as_asked(harness: Harness) -> None:
    """Defect: the 30 s loop ignored ``retry_after``, which risks turning a rate limit into
    a suspension."""
    room = await harness.room()
    harness.gatekeeper.faults.add("send", GipError(GipErrorCode.RATE_LIMITED, "slow down", retry_after=1))
    started = time.monotonic()
    harness.outgoing(room, "first")
    harness.outgoing(room, "second")
    await harness.until(lambda: len(harness.gatekeeper.delivered) == 2, timeout=10)
    assert time.monotonic() - started >= 1.0
    assert [s.text for s in harness.gatekeeper.delivered] == ["first", "second"]
    pending = [s for _, s in harness.matrix.statuses if s.status is SendStatus.PENDING]
    assert pending and "limiting how fast you send" in (pending[0].message or "")


async def test_a_message_sent_while_disconnected_waits_and_goes_on_reconnect(harness: Harness) -> None:
    room = await harness.room()
    harness.gatekeeper.online.clear()
    harness.outgoing(room, "queued while away")
    await harness.until(lambda: any(s.status is SendStatus.PENDING for _, s in harness.matrix.statuses))
    assert "Waiting for the connection" in (harness.matrix.statuses[-1][1].message or "")
    harness.gatekeeper.online.add(ALICE)
    await harness.core.on_state(harness.login, StateChange(ConnectionState.CONNECTED, None, "up"))
    await harness.until(lambda: len(harness.gatekeeper.delivered) == 1)


async def test_a_refusal_no_retry_changes_fails_at_once_and_says_why(harness: Harness) -> None:
    room = await harness.room()
    harness.gatekeeper.faults.add("send", GipError(GipErrorCode.FORBIDDEN, "blocked"))
    event_id = harness.outgoing(room, "to someone who blocked me")
    await harness.until(lambda: any(s.status is SendStatus.FAIL_PERMANENT for _, s in harness.matrix.statuses))
    assert len(harness.gatekeeper.attempts) == 1
    assert (await harness.core.outbox.by_event(room, event_id)).state == "failed"
    assert any("cannot be reached" in text for _, text in harness.matrix.notices)


async def test_receipts_are_stored_items_and_reach_matrix(harness: Harness) -> None:
    room = await harness.room()
    event_id = harness.outgoing(room, "did you get this?")
    await harness.until(lambda: len(harness.gatekeeper.delivered) == 1)
    gk_id = harness.gatekeeper.delivered[0].message_id
    peer = Jid.parse(PEER)
    delivered = ReceiptEvent(st.Receipt(gk_id, peer, st.ReceiptType.DELIVERED))
    read = ReceiptEvent(st.Receipt(gk_id, peer, st.ReceiptType.READ, (gk_id,)))
    for event in (delivered, delivered, read):  # the gatekeeper may deliver one twice
        await harness.core.on_event(harness.login, event)
    await harness.until(lambda: bool(harness.matrix.receipts))
    await harness.core.settle()
    confirmations = [s for e, s in harness.matrix.statuses if e == event_id and s.delivered_to]
    assert len(confirmations) == 1
    assert harness.matrix.receipts[-1][2] == event_id
    assert await harness.core.inbox.pending() == []


async def test_an_undecryptable_message_is_explained_once_and_once_more_on_giving_up(harness: Harness) -> None:
    sender = Jid.parse(PEER)
    for count in (1, 1, 2, 3, 6):  # the first retry count comes again after a reconnect
        await harness.core.on_event(harness.login, UndecryptableEvent("BAD1", sender, "InvalidMacError", count))
    await harness.until(lambda: len(harness.matrix.notices) >= 2)
    await harness.core.settle()
    texts = [text for _, text in harness.matrix.notices]
    assert len(texts) == 2 and "asked their phone" in texts[0] and "even after" in texts[1]


async def test_a_resend_that_comes_in_time_takes_the_place_of_the_undecryptable_message(harness: Harness) -> None:
    """Defect: a message recovered through a retry receipt was posted after the messages
    that followed it. Its place is held while the resend is on its way."""
    await harness.core.on_event(harness.login, UndecryptableEvent("M1", Jid.parse(PEER), "InvalidMacError", 1))
    await harness.incoming("the one after")
    await harness.incoming("the one that failed", gk_id="M1")
    assert await posted(harness, 2) == ["the one that failed", "the one after"]
    assert harness.matrix.notices == [], "nothing to explain: it came"


async def test_stored_work_runs_before_new_events_after_a_restart(harness: Harness) -> None:
    await harness.core.loops.stop()  # the process dies with both stored
    await harness.incoming("stored one")
    await harness.incoming("stored two")
    await harness.restart()
    await harness.incoming("new")
    assert await posted(harness, 3) == ["stored one", "stored two", "new"]


async def test_retention_removes_done_rows_only(harness: Harness) -> None:
    await harness.incoming("old")
    await posted(harness, 1)
    await harness.core.loops.stop()
    await harness.incoming("pending")
    far_future = int(time.time() * 1000) + 30 * 86_400_000
    removed = await harness.core.prune(now_ms=far_future)
    assert removed["inbox"] == 1
    assert [i.state for i in await harness.core.inbox.pending()] == ["pending"]
