"""Keys (§4 encrypt) and device lists (§4 usync): consumption, fallback, phash, 409."""

from __future__ import annotations

from bridge.gip import stanzas as st
from bridge.gip.client import NotificationEvent
from bridge.gip.content import Content
from bridge.gip.jid import Jid
from bridge.signal import SignedPreKeyRecord, generate_prekeys
from devstack.sandbox import PartnerServer, Sandbox, new_partner


async def test_fetch_consumes_one_time_prekey_then_falls_back(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    alice = await new_partner(sandbox, partner_server, prekeys=2)
    bob = await new_partner(sandbox, partner_server)
    assert await alice.client.count_prekeys() == 2
    me = Jid.parse(alice.client.iid)
    first = (await bob.client.fetch_bundles([me]))[0]
    second = (await bob.client.fetch_bundles([me]))[0]
    third = (await bob.client.fetch_bundles([me]))[0]
    assert isinstance(first, st.Bundle) and isinstance(second, st.Bundle) and isinstance(third, st.Bundle)
    assert first.pre_key is not None and second.pre_key is not None
    assert first.pre_key.id != second.pre_key.id, "each handed-out prekey is deleted"
    assert third.pre_key is None, "no one-time prekey left: the bundle comes without one"
    assert third.identity == alice.identity.public.raw
    assert await alice.client.count_prekeys() == 0
    unknown = (await bob.client.fetch_bundles([Jid.parse("1-99999999999999@interop")]))[0]
    assert isinstance(unknown, st.BundleError)
    assert unknown.code.value == "404"


async def test_low_prekey_count_notification_and_replenish(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    alice = await new_partner(sandbox, partner_server, prekeys=10)
    bob = await new_partner(sandbox, partner_server)
    await bob.client.fetch_bundles([Jid.parse(alice.client.iid)])
    event = await alice.wait_for(lambda e: isinstance(e, NotificationEvent) and e.kind == "encrypt")
    assert event.node.require_child("count").int_attr("value") == 9
    await alice.client.upload_prekeys(generate_prekeys(500, 40))
    assert await alice.client.count_prekeys() == 49


async def test_rotate_signed_prekey(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    alice = await new_partner(sandbox, partner_server)
    bob = await new_partner(sandbox, partner_server)
    record = SignedPreKeyRecord.generate(alice.identity, 77, 0)
    await alice.client.rotate_signed_prekey(record)
    bundle = (await bob.client.fetch_bundles([Jid.parse(alice.client.iid)]))[0]
    assert isinstance(bundle, st.Bundle)
    assert bundle.signed_pre_key.id == 77
    assert bundle.signed_pre_key.public == record.key_pair.public.raw


async def test_device_list_and_hash(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    alice = await new_partner(sandbox, partner_server)
    native = await sandbox.native(devices=3)
    devices = await alice.client.get_devices(Jid.parse(native["iid"]))
    assert devices.device_ids == (0, 1, 2)
    assert devices.hash == st.device_list_hash([2, 0, 1])


async def test_stale_phash_409_then_resend_same_id_delivered_once(
    sandbox: Sandbox, partner_server: PartnerServer
) -> None:
    alice = await new_partner(sandbox, partner_server)
    native = await sandbox.native(devices=2)
    bob = Jid.parse(native["iid"])
    await alice.client.get_devices(bob)  # cached: devices 0 and 1
    added = await sandbox.control("POST", f"/natives/{native['iid']}/devices")
    assert added["device"] == 2
    # The notification would refresh the cache; drop it to exercise the 409 path alone.
    stale = alice.client._devices[bob]
    message_id = await alice.client.send_message(bob, Content(text="to all three"))
    assert alice.client._devices[bob] != stale
    messages = [e for e in await sandbox.events(native["iid"], "message") if e["id"] == message_id]
    assert sorted(e["device"] for e in messages) == [
        f"{bob.user}:1@native",
        f"{bob.user}:2@native",
        f"{bob.user}@native",
    ]
    # Sending the same id again is acknowledged and not delivered a second time.
    await alice.client.send_message(bob, Content(text="to all three"), message_id=message_id)
    again = [e for e in await sandbox.events(native["iid"], "message") if e["id"] == message_id]
    assert len(again) == 3


async def test_device_add_and_remove_notifications(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    alice = await new_partner(sandbox, partner_server)
    native = await sandbox.native()
    bob = Jid.parse(native["iid"])
    await alice.client.send_message(bob, Content(text="hi"))
    await sandbox.control("POST", f"/natives/{native['iid']}/devices")
    added = await alice.wait_for(lambda e: isinstance(e, NotificationEvent) and e.kind == "devices")
    assert added.node.require_child("add").attr("id") == "1"
    assert (await alice.client.get_devices(bob)).device_ids == (0, 1)
    await sandbox.control("DELETE", f"/natives/{native['iid']}/devices/1")
    await alice.wait_for(lambda e: isinstance(e, NotificationEvent) and e.node.child("remove") is not None)
    assert (await alice.client.get_devices(bob)).device_ids == (0,)
