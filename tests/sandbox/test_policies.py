"""Gatekeeper policies (§8): privacy, opt-in, blocklist, opt-out, rate limits, durability."""

from __future__ import annotations

import pytest

from bridge.gip.client import MessageEvent
from bridge.gip.content import Content
from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.jid import Jid
from bridge.sandbox.clock import Clock
from bridge.sandbox.store import SandboxStore
from devstack.sandbox import PartnerServer, Sandbox, new_partner, new_phone, start_sandbox, stop_sandbox


async def _lookup_error(partner, uvid: str) -> tuple[str, str]:
    with pytest.raises(GipError) as excinfo:
        await partner.client.lookup(uvid)
    return excinfo.value.code.value, excinfo.value.text


async def test_lookup_of_unknown_opted_out_and_blocked_answers_identically(
    sandbox: Sandbox, partner_server: PartnerServer
) -> None:
    alice = await new_partner(sandbox, partner_server)
    opted_out = await sandbox.native(opted_in=False)
    blocker = await sandbox.native()
    await sandbox.control("POST", f"/natives/{blocker['iid']}/block", {"jid": alice.client.iid})
    restricting = await sandbox.native()
    await sandbox.control(
        "POST", f"/natives/{restricting['iid']}/opt_in", {"opted_in": True, "restricted": ["test-bridge"]}
    )
    answers = {
        await _lookup_error(alice, new_phone()),
        await _lookup_error(alice, opted_out["uvid"]),
        await _lookup_error(alice, blocker["uvid"]),
        await _lookup_error(alice, restricting["uvid"]),
    }
    assert answers == {("404", "not found")}
    # Devices and keys of an unreachable user are just as invisible.
    with pytest.raises(GipError) as excinfo:
        await alice.client.get_devices(Jid.parse(opted_out["iid"]))
    assert excinfo.value.code is GipErrorCode.NOT_FOUND
    # A malformed identifier is a different, format error.
    assert (await _lookup_error(alice, "12345"))[0] == "400"
    # Opting in makes the user reachable.
    await sandbox.control("POST", f"/natives/{opted_out['iid']}/opt_in", {"opted_in": True})
    assert await alice.client.lookup(opted_out["uvid"]) == Jid.parse(opted_out["iid"])


async def test_messages_to_unreachable_users_refused_403(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    alice = await new_partner(sandbox, partner_server)
    native = await sandbox.native()
    bob = Jid.parse(native["iid"])
    await alice.client.send_message(bob, Content(text="hi"))
    await sandbox.control("POST", f"/natives/{native['iid']}/block", {"jid": alice.client.iid})
    with pytest.raises(GipError) as excinfo:
        await alice.client.send_message(bob, Content(text="are you there?"))
    assert excinfo.value.code is GipErrorCode.FORBIDDEN


async def test_partner_blocklist(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    alice = await new_partner(sandbox, partner_server)
    native = await sandbox.native()
    bob = Jid.parse(native["iid"])
    await alice.client.send_message(bob, Content(text="hi"))
    await alice.client.set_blocked(bob, True)
    assert await alice.client.blocklist() == [bob]
    refused = await sandbox.control(
        "POST", f"/natives/{native['iid']}/send", {"to": alice.client.iid, "text": "spam"}, expect=403
    )
    assert refused["error"] == "403"
    with pytest.raises(GipError):
        await alice.client.send_message(bob, Content(text="blocked both ways"))
    await alice.client.set_blocked(bob, False)
    assert await alice.client.blocklist() == []
    sent = await sandbox.control("POST", f"/natives/{native['iid']}/send", {"to": alice.client.iid, "text": "ok now"})
    await alice.wait_for(lambda e: isinstance(e, MessageEvent) and e.id == sent["id"])


async def test_opt_out_deletes_everything(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    alice = await new_partner(sandbox, partner_server)
    native = await sandbox.native()
    await alice.client.send_message(Jid.parse(native["iid"]), Content(text="bye soon"))
    await alice.client.set_blocked(Jid.parse("123456789012@native"), True)
    iid = alice.client.iid
    await alice.client.close()
    await sandbox.control("POST", f"/natives/{native['iid']}/send", {"to": iid, "text": "queued"})
    await alice.connect()
    await alice.client.opt_out()
    info = await sandbox.control("GET", f"/partners/{iid}")
    assert info == {**info, "enlisted": False, "mailbox": 0, "prekeys": 0, "rows": 0, "blocklist": []}
    with pytest.raises(GipError) as excinfo:
        await alice.connect()
    assert excinfo.value.code is GipErrorCode.NOT_ENLISTED


async def test_message_rate_limit_429(partner_server: PartnerServer, tmp_path) -> None:
    box = await start_sandbox(partner_server, media_dir=tmp_path, rate_limits={"messages_per_minute": 3})
    try:
        alice = await new_partner(box, partner_server)
        bob = Jid.parse((await box.native())["iid"])
        for i in range(3):
            await alice.client.send_message(bob, Content(text=f"{i}"))
        with pytest.raises(GipError) as excinfo:
            await alice.client.send_message(bob, Content(text="one too many"))
        assert excinfo.value.code is GipErrorCode.RATE_LIMITED
        assert excinfo.value.retry_after is not None and excinfo.value.retry_after > 0
        box.gatekeeper.clock.advance(61)
        await alice.client.send_message(bob, Content(text="later"))
    finally:
        await stop_sandbox(box)


async def test_first_contact_rate_limit(partner_server: PartnerServer, tmp_path) -> None:
    box = await start_sandbox(partner_server, media_dir=tmp_path, rate_limits={"first_contacts_per_day": 1})
    try:
        alice = await new_partner(box, partner_server)
        first, second = [Jid.parse((await box.native())["iid"]) for _ in range(2)]
        await alice.client.send_message(first, Content(text="hello"))
        await alice.client.send_message(first, Content(text="again, not a first contact"))
        with pytest.raises(GipError) as excinfo:
            await alice.client.send_message(second, Content(text="hello stranger"))
        assert excinfo.value.code is GipErrorCode.RATE_LIMITED
    finally:
        await stop_sandbox(box)


async def test_suspension_and_eea_close_live_connections(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    alice = await new_partner(sandbox, partner_server)
    await sandbox.control("POST", f"/partners/{alice.client.iid}/suspend", {"suspended": True})
    await alice.client.closed.wait()
    assert alice.client.disconnect_code is GipErrorCode.FORBIDDEN
    bob = await new_partner(sandbox, partner_server)
    await sandbox.control("POST", f"/partners/{bob.client.iid}/suspend", {"eea_blocked": True})
    await bob.client.closed.wait()
    assert bob.client.disconnect_code is GipErrorCode.NOT_IN_EEA


async def test_dropped_connection_and_delayed_ack(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    alice = await new_partner(sandbox, partner_server)
    bob = Jid.parse((await sandbox.native())["iid"])
    await sandbox.control("POST", "/faults", {"ack_delay": 0.3})
    await alice.client.send_message(bob, Content(text="slow"))
    await sandbox.control("POST", "/faults", {"ack_delay": 0, "drop": alice.client.iid})
    await alice.client.closed.wait()
    assert alice.client.disconnect_code is GipErrorCode.UNAVAILABLE
    await alice.connect()
    await alice.client.send_message(bob, Content(text="back"))


async def test_mailbox_expires_after_30_days(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    alice = await new_partner(sandbox, partner_server)
    native = await sandbox.native()
    await alice.client.send_message(Jid.parse(native["iid"]), Content(text="hi"))
    await alice.client.close()
    await sandbox.control("POST", f"/natives/{native['iid']}/send", {"to": alice.client.iid, "text": "old news"})
    assert (await sandbox.control("GET", f"/partners/{alice.client.iid}"))["mailbox"] >= 1
    await sandbox.control("POST", "/clock/advance", {"seconds": 30 * 86400 + 60})
    assert (await sandbox.control("GET", f"/partners/{alice.client.iid}"))["mailbox"] == 0


async def test_restart_loses_nothing(partner_server: PartnerServer, tmp_path) -> None:
    database = str(tmp_path / "sandbox.db")
    clock = Clock()
    box = await start_sandbox(partner_server, store=SandboxStore(database), clock=clock, media_dir=tmp_path / "m")
    alice = await new_partner(box, partner_server)
    native = await box.native()
    bob = Jid.parse(native["iid"])
    await alice.client.send_message(bob, Content(text="before the restart"))
    await alice.client.close()
    queued = await box.control("POST", f"/natives/{native['iid']}/send", {"to": alice.client.iid, "text": "waiting"})
    box.clients.clear()
    await stop_sandbox(box)
    box.gatekeeper.store.close()

    again = await start_sandbox(partner_server, store=SandboxStore(database), clock=clock, media_dir=tmp_path / "m")
    try:
        alice.client.base_url = again.base
        again.clients.append(alice.client)
        await alice.connect()
        event = await alice.wait_for(lambda e: isinstance(e, MessageEvent) and e.id == queued["id"])
        assert event.content.text == "waiting"
        # The native's Signal state survived too: the conversation goes on both ways.
        await alice.client.send_message(bob, Content(text="after the restart"))
        texts = [e["content"].get("text") for e in await again.events(native["iid"], "message")]
        assert texts == ["before the restart", "after the restart"]
    finally:
        await stop_sandbox(again)


async def test_messenger_profile_uses_usernames(partner_server: PartnerServer, tmp_path) -> None:
    box = await start_sandbox(partner_server, media_dir=tmp_path, profile="messenger")
    partner_server.audience = "MESSENGER"
    try:
        alice = await new_partner(box, partner_server)
        native = await box.native(uvid="jane.doe")
        assert await alice.client.lookup("jane.doe") == Jid.parse(native["iid"])
        refused = await box.control("POST", "/natives", {"uvid": "+4915112345678"}, expect=400)
        assert refused["error"] == "400"
        await alice.client.send_message(Jid.parse(native["iid"]), Content(text="hi jane"))
    finally:
        await stop_sandbox(box)


async def test_control_api_requires_its_token(sandbox: Sandbox) -> None:
    async with sandbox.http.post(
        f"{sandbox.base}/_sandbox/natives",
        json={"uvid": new_phone()},
        headers={"Authorization": "Bearer wrong"},
    ) as response:
        assert response.status == 401
