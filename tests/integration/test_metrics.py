"""The Prometheus endpoint scraped around a conversation: each series moves by what the
conversation must give, in both directions, with failures and retries injected."""

from __future__ import annotations

import asyncio
import base64
from collections import defaultdict

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.gip.tokens import issue_gatekeeper_token
from tests.integration.conftest import Stack
from tests.integration.test_chat_features import chat, in_room, native_events

pytestmark = pytest.mark.asyncio(loop_scope="session")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(stack: Stack) -> Samples:
    config = stack.bridge.config.metrics
    async with stack.http.get(f"http://{config.host}:{config.port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: Samples = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_a_conversation_moves_every_series_by_what_it_must(stack: Stack) -> None:
    alice, _, portal, native, iid = await chat(stack)
    await stack.bridge.core.settle()
    before = await scrape(stack)

    # Matrix → gatekeeper: two texts and a reaction, then one the gatekeeper refuses.
    first = await alice.say(portal, "one")
    await alice.status_of(first)
    await alice.status_of(await alice.say(portal, "two"))
    await alice.status_of(await alice.client.react(portal, first, "👍"))
    await stack.sandbox.control("POST", "/faults", {"refuse_message": {"iid": iid, "code": "403"}})
    refused = await alice.say(portal, "not this one")
    await alice.wait_for(
        lambda e: (
            e.get("type") == "com.beeper.message_send_status"
            and e["content"].get("m.relates_to", {}).get("event_id") == refused
            and e["content"].get("status") == "FAIL_PERMANENT"
        )
    )

    # Gatekeeper → Matrix: a text, a file, and a text that first arrives undecryptable
    # (the bridge asks for it again, the phone resends it).
    send = f"/natives/{native['iid']}/send"
    await stack.sandbox.control("POST", send, {"to": iid, "text": "three"})
    data = base64.b64encode(b"%PDF-1.4 a small file").decode()
    await stack.sandbox.control("POST", send, {"to": iid, "media": {"kind": "document", "data": data}})
    await stack.sandbox.control("POST", "/faults", {"corrupt_next_from": native["iid"]})
    await stack.sandbox.control("POST", send, {"to": iid, "text": "four"})
    await alice.wait_for(lambda e: in_room(portal)(e) and e["content"].get("body") == "four", timeout=30)

    # The native asks for "one" again; the gatekeeper pushes once.
    [sent_one, *_] = await native_events(stack, native, "message", 3)
    await stack.sandbox.control("POST", f"/natives/{native['iid']}/retry", {"to": iid, "id": sent_one["id"]})
    await native_events(stack, native, "message", 4)
    gk = stack.sandbox.gatekeeper
    token = issue_gatekeeper_token(gk.signing_key, issuer=gk.config.name, audience=stack.bridge.config.integrator_id)
    login = await stack.bridge.core.logins.get(alice.mxid)
    push_url = f"{stack.bridge.config.partner_public_url}/push"
    async with stack.http.post(push_url, json={"to": login.uvid}, headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200
    await stack.bridge.core.settle()
    await asyncio.sleep(0.5)
    after = await scrape(stack)

    to_gk, to_mx = "matrix_to_gatekeeper", "gatekeeper_to_matrix"
    assert delta(before, after, "dma_messages_total", direction=to_gk, kind="text", outcome="bridged") == 2
    assert delta(before, after, "dma_messages_total", direction=to_gk, kind="reaction", outcome="bridged") == 1
    assert delta(before, after, "dma_messages_total", direction=to_gk, kind="text", outcome="failed") == 1
    assert delta(before, after, "dma_gatekeeper_refusals_total", code="403") == 1
    assert delta(before, after, "dma_messages_total", direction=to_mx, kind="text", outcome="bridged") == 2
    assert delta(before, after, "dma_messages_total", direction=to_mx, kind="media", outcome="bridged") == 1
    assert delta(before, after, "dma_hop_latency_seconds_count", direction=to_gk) == 3
    assert delta(before, after, "dma_hop_latency_seconds_count", direction=to_mx) == 3
    assert 0 < delta(before, after, "dma_hop_latency_seconds_sum", direction=to_mx) < 60
    assert delta(before, after, "dma_decryption_failures_total", leg="gatekeeper") == 1
    assert delta(before, after, "dma_decryption_failures_total", leg="matrix") == 0
    assert delta(before, after, "dma_retry_receipts_total", direction="sent") == 1
    assert delta(before, after, "dma_retry_receipts_total", direction="received") == 1
    assert delta(before, after, "dma_push_wakeups_total") == 1
    assert after[("dma_outbox_depth", ())] == 0 and after[("dma_inbox_depth", ())] == 0
    assert after[("bridge_logged_in", (("state", "enlisted"),))] >= 1
    assert after[("bridge_connected", (("state", "connected"),))] >= 1
    await alice.close()
