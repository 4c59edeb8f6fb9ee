"""Groups (interop profile §9) through the sandbox: each rule, and Sender Keys end to end
between Partner clients and natives, with rotation and retries."""

from __future__ import annotations

import asyncio

import pytest

from bridge.gip import groups as gp
from bridge.gip import stanzas as st
from bridge.gip.client import ChatStateEvent, ReceiptEvent
from bridge.gip.content import Content
from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.group_client import GroupEvent, GroupMessageEvent, GroupUndecryptableEvent
from bridge.gip.jid import Jid
from bridge.signal import SenderKeyRecord
from devstack.sandbox import Partner, PartnerServer, Sandbox, new_partner


def group_messages(partner: Partner) -> list[GroupMessageEvent]:
    return [e for e in partner.events if isinstance(e, GroupMessageEvent)]


async def native_group_texts(sandbox: Sandbox, iid: str, group: str) -> list[tuple[str, str]]:
    events = await sandbox.events(iid, "message")
    return [(e["device"], e["content"].get("text", "")) for e in events if e.get("group") == group]


async def test_a_partner_creates_a_group_and_every_device_reads_it_once(
    sandbox: Sandbox, partner_server: PartnerServer
) -> None:
    alice = await new_partner(sandbox, partner_server)
    bob = await new_partner(sandbox, partner_server)
    native = await sandbox.native(devices=2)
    result = await alice.client.create_group("Team", [Jid.parse(bob.client.iid), Jid.parse(native["iid"])])
    group = result.group
    assert group.subject == "Team" and result.refused == ()
    assert group.admins == [Jid.parse(alice.client.iid)]
    created = await bob.wait_for(lambda e: isinstance(e, GroupEvent))
    assert created.notice.action is gp.GroupAction.CREATE and created.notice.info.jid == group.jid

    message_id = await alice.client.send_group_message(group.jid, Content(text="hello group"))
    got = await bob.wait_for(lambda e: isinstance(e, GroupMessageEvent) and e.id == message_id)
    assert (
        got.content.text == "hello group" and got.group == group.jid and got.sender.bare == Jid.parse(alice.client.iid)
    )
    await sandbox.gatekeeper.settle()
    texts = await native_group_texts(sandbox, native["iid"], str(group.jid))
    assert sorted(texts) == sorted(
        [
            (f"{native['iid'].split('@')[0]}@native", "hello group"),
            (f"{native['iid'].split('@')[0]}:1@native", "hello group"),
        ]
    )

    # The second message needs no key hand-over: only the body goes.
    second = await alice.client.encrypt_group_message(group.jid, Content(text="again"))
    assert second.participants == () and second.body is not None
    await alice.client.send_group_prepared(second, Content(text="again"))
    await bob.wait_for(lambda e: isinstance(e, GroupMessageEvent) and e.content.text == "again")
    # The author hears who got and read it, by participant.
    receipt = await alice.wait_for(
        lambda e: isinstance(e, ReceiptEvent) and e.receipt.id == message_id and e.receipt.participant is not None
    )
    assert receipt.receipt.peer == group.jid
    for partner in (alice, bob):
        await partner.client.close()


async def test_natives_send_with_their_own_keys_and_rotate_when_someone_leaves(
    sandbox: Sandbox, partner_server: PartnerServer
) -> None:
    alice = await new_partner(sandbox, partner_server)
    bob = await new_partner(sandbox, partner_server)
    native = await sandbox.native()
    made = await sandbox.control(
        "POST",
        "/groups",
        {"creator": native["iid"], "subject": "Family", "participants": [alice.client.iid, bob.client.iid]},
    )
    group = made["jid"]
    await alice.wait_for(lambda e: isinstance(e, GroupEvent) and e.notice.action is gp.GroupAction.CREATE)
    first = await sandbox.control("POST", f"/natives/{native['iid']}/send", {"group": group, "text": "dinner at 8"})
    for partner in (alice, bob):
        got = await partner.wait_for(lambda e: isinstance(e, GroupMessageEvent) and e.id == first["id"])
        assert got.content.text == "dinner at 8" and str(got.group) == group
    # Bob leaves: the native's next message is under a new key that bob never gets.
    await bob.client.leave_group(Jid.parse(group))
    await alice.wait_for(lambda e: isinstance(e, GroupEvent) and e.notice.action is gp.GroupAction.LEAVE)
    second = await sandbox.control("POST", f"/natives/{native['iid']}/send", {"group": group, "text": "bob is gone"})
    later = await alice.wait_for(lambda e: isinstance(e, GroupMessageEvent) and e.id == second["id"])
    assert later.content.text == "bob is gone"
    # Under a new key: alice now holds two of the native's, bob only the old one.
    native_device = Jid.parse(native["iid"]).signal_address()
    alice_keys = await alice.store.load_sender_key(native_device, group)
    bob_keys = await bob.store.load_sender_key(native_device, group)
    assert len(alice_keys.states) == 2 and len(bob_keys.states) == 1
    assert bob_keys.states[0].key_id != alice_keys.states[0].key_id
    assert not any(e.id == second["id"] for e in group_messages(bob)), "a member who left gets nothing more"
    # And Alice, after bob left, rotated her own key: her next message hands a new key to all.
    alice_next = await alice.client.encrypt_group_message(Jid.parse(group), Content(text="bye bob"))
    assert {d.bare for d, _ in alice_next.participants} == {Jid.parse(native["iid"])}
    await alice.client.send_group_prepared(alice_next, Content(text="bye bob"))
    await sandbox.gatekeeper.settle()
    assert "bye bob" in [t for _, t in await native_group_texts(sandbox, native["iid"], group)]
    for partner in (alice, bob):
        await partner.client.close()


async def test_rules_admins_limits_reachability_and_hash(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    alice = await new_partner(sandbox, partner_server)
    bob = await new_partner(sandbox, partner_server)
    shy = await sandbox.native(opted_in=False)
    result = await alice.client.create_group("Rules", [Jid.parse(bob.client.iid), Jid.parse(shy["iid"])])
    group = result.group.jid
    assert result.refused == (Jid.parse(shy["iid"]),), "not opted in: refused with 403, the others added"
    # Bob is not an admin: he may not add, remove or promote.
    other = await sandbox.native()
    with pytest.raises(GipError) as refused:
        await bob.client.change_group(gp.GroupAction.ADD, group, [Jid.parse(other["iid"])])
    assert refused.value.code is GipErrorCode.FORBIDDEN
    await alice.client.change_group(gp.GroupAction.PROMOTE, group, [Jid.parse(bob.client.iid)])
    added = await bob.client.change_group(gp.GroupAction.ADD, group, [Jid.parse(other["iid"])])
    assert Jid.parse(other["iid"]) in added.group.members
    # A stranger cannot read the group or write to it.
    stranger = await new_partner(sandbox, partner_server)
    with pytest.raises(GipError) as missing:
        await stranger.client.group_info(group)
    assert missing.value.code is GipErrorCode.NOT_FOUND
    # A stale participant hash is refused with 409, then the client catches up by itself.
    stale = await alice.client.encrypt_group_message(group, Content(text="before the change"))
    await bob.client.change_group(gp.GroupAction.REMOVE, group, [Jid.parse(other["iid"])])
    sent = await alice.client.send_group_prepared(stale, Content(text="before the change"))
    assert sent.id == stale.id and sent.phash != stale.phash
    await bob.wait_for(lambda e: isinstance(e, GroupMessageEvent) and e.id == stale.id)
    # The last admin leaving makes the longest-standing member an admin.
    await alice.client.leave_group(group)
    await bob.client.change_group(gp.GroupAction.DEMOTE, group, [Jid.parse(bob.client.iid)])
    info = await bob.client.group_info(group, refresh=True)
    assert info.admins == [Jid.parse(bob.client.iid)], "a group always keeps an admin"
    # Over the limit: 406.
    sandbox.gatekeeper.config.policies.__dict__["group_max_participants"] = 2
    third = await sandbox.native()
    with pytest.raises(GipError) as over:
        await bob.client.change_group(gp.GroupAction.ADD, group, [Jid.parse(third["iid"]), Jid.parse(other["iid"])])
    assert over.value.code is GipErrorCode.NOT_ACCEPTABLE
    for partner in (alice, bob, stranger):
        await partner.client.close()


async def test_a_missing_sender_key_is_asked_for_and_answered_pairwise(
    sandbox: Sandbox, partner_server: PartnerServer
) -> None:
    alice = await new_partner(sandbox, partner_server)
    bob = await new_partner(sandbox, partner_server)
    group = (await alice.client.create_group("Retry", [Jid.parse(bob.client.iid)])).group.jid
    await alice.client.send_group_message(group, Content(text="first"))
    await bob.wait_for(lambda e: isinstance(e, GroupMessageEvent) and e.content.text == "first")
    # Bob loses alice's sender key (a restore from an old backup, say).
    await bob.store.store_sender_key(Jid.parse(alice.client.iid).signal_address(), str(group), SenderKeyRecord())
    lost = await alice.client.send_group_message(group, Content(text="second"))
    failed = await bob.wait_for(lambda e: isinstance(e, GroupUndecryptableEvent) and e.id == lost)
    assert failed.retry_count == 1
    answer = await bob.wait_for(lambda e: isinstance(e, GroupMessageEvent) and e.id == lost)
    assert answer.content.text == "second", "the body came again pairwise, with the key"
    after = await alice.client.send_group_message(group, Content(text="third"))
    await bob.wait_for(lambda e: isinstance(e, GroupMessageEvent) and e.id == after)
    for partner in (alice, bob):
        await partner.client.close()


async def test_subject_typing_and_read_receipts_name_the_participant(
    sandbox: Sandbox, partner_server: PartnerServer
) -> None:
    alice = await new_partner(sandbox, partner_server)
    bob = await new_partner(sandbox, partner_server)
    native = await sandbox.native()
    group = (await alice.client.create_group("Old", [Jid.parse(bob.client.iid), Jid.parse(native["iid"])])).group.jid
    info = await bob.client.set_group_subject(group, "New name")
    assert info.subject == "New name"
    changed = await alice.wait_for(lambda e: isinstance(e, GroupEvent) and e.notice.action is gp.GroupAction.SUBJECT)
    assert changed.notice.subject == "New name" and changed.notice.actor == Jid.parse(bob.client.iid)
    events = await sandbox.events(native["iid"], "group")
    assert any(e["action"] == "subject" and e["subject"] == "New name" for e in events)
    await bob.client.send_typing(group, st.ChatState.COMPOSING)
    typing = await alice.wait_for(lambda e: isinstance(e, ChatStateEvent) and e.sender == group)
    assert typing.participant == Jid.parse(bob.client.iid)
    sent = await alice.client.send_group_message(group, Content(text="read me"))
    await bob.wait_for(lambda e: isinstance(e, GroupMessageEvent) and e.id == sent)
    await bob.client.send_group_receipt(group, Jid.parse(alice.client.iid), [sent], read=True)
    read = await alice.wait_for(
        lambda e: (
            isinstance(e, ReceiptEvent)
            and e.receipt.type is st.ReceiptType.READ
            and e.receipt.participant == Jid.parse(bob.client.iid)
        )
    )
    assert read.receipt.peer == group and sent in read.receipt.message_ids
    for partner in (alice, bob):
        await partner.client.close()


async def test_an_offline_participant_is_pushed_and_gets_each_group_message_once(
    sandbox: Sandbox, partner_server: PartnerServer
) -> None:
    alice = await new_partner(sandbox, partner_server)
    bob = await new_partner(sandbox, partner_server)
    native = await sandbox.native()
    members = [alice.client.iid, bob.client.iid]
    made = await sandbox.control(
        "POST", "/groups", {"creator": native["iid"], "subject": "Away", "participants": members}
    )
    await bob.wait_for(lambda e: isinstance(e, GroupEvent))
    await bob.client.close()
    pushes = len(partner_server.pushes)
    ids = [
        (await sandbox.control("POST", f"/natives/{native['iid']}/send", {"group": made["jid"], "text": f"m{i}"}))["id"]
        for i in range(3)
    ]
    await sandbox.gatekeeper.settle()
    assert len(partner_server.pushes) == pushes + 1, "one push until bob connects"
    await bob.connect()
    for message_id in ids:
        got = await bob.wait_for(lambda e, m=message_id: isinstance(e, GroupMessageEvent) and e.id == m)
        assert got.offline
    await bob.client.close()
    before = len(group_messages(bob))
    await bob.connect()
    await bob.client.ping()
    assert len(group_messages(bob)) == before, "acknowledged: not delivered again"
    for partner in (alice, bob):
        await partner.client.close()


async def test_a_reinstalled_native_asks_again_and_the_partner_answers_pairwise(
    sandbox: Sandbox, partner_server: PartnerServer
) -> None:
    alice = await new_partner(sandbox, partner_server)
    native = await sandbox.native()
    group = (await alice.client.create_group("Phones", [Jid.parse(native["iid"])])).group.jid
    await alice.client.send_group_message(group, Content(text="before"))
    await sandbox.gatekeeper.settle()
    # The phone is reinstalled without telling anyone: it holds no session and no key now,
    # while alice believes it holds her sender key and sends the body alone.
    await sandbox.control("POST", f"/natives/{native['iid']}/reinstall", {"device": 0, "notify": False})
    lost = await alice.client.send_group_message(group, Content(text="after the reinstall"))
    for _ in range(100):
        texts = [t for _, t in await native_group_texts(sandbox, native["iid"], str(group))]
        if "after the reinstall" in texts:
            break
        await asyncio.sleep(0.05)
    assert "after the reinstall" in texts, "asked again (with a fresh bundle) and answered pairwise"
    asked = [e for e in await sandbox.events(native["iid"], "undecryptable") if e.get("id") == lost]
    assert asked, "the first copy did not decrypt"
    await alice.client.close()


async def test_groups_survive_a_sandbox_restart(partner_server: PartnerServer, tmp_path) -> None:
    from bridge.sandbox.store import SandboxStore
    from devstack.sandbox import start_sandbox, stop_sandbox

    path = str(tmp_path / "sandbox.db")
    first = await start_sandbox(partner_server, store=SandboxStore(path), media_dir=tmp_path / "media")
    native, other = await first.native(), await first.native()
    made = await first.control(
        "POST", "/groups", {"creator": native["iid"], "subject": "Kept", "participants": [other["iid"]]}
    )
    await stop_sandbox(first)
    second = await start_sandbox(partner_server, store=SandboxStore(path), media_dir=tmp_path / "media")
    kept = await second.control("GET", f"/groups/{made['jid']}")
    assert kept["subject"] == "Kept" and [p["jid"] for p in kept["participants"]] == [native["iid"], other["iid"]]
    await stop_sandbox(second)
