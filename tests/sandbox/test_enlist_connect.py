"""Enlistment (§2) and connecting (§3): success and every failure reason."""

from __future__ import annotations

import pytest

from bridge.gip.client import EnlistError
from bridge.gip.errors import GipError, GipErrorCode
from bridge.gip.tokens import SigningKey, issue_partner_token
from devstack.sandbox import INTEGRATOR, PartnerServer, Sandbox, new_partner, start_sandbox, stop_sandbox


async def test_enlist_ok_assigns_interop_iid(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    partner = await new_partner(sandbox, partner_server, connect=False)
    assert partner.client.iid is not None
    assert partner.client.iid.startswith("1-")
    assert partner.client.iid.endswith("@interop")
    # Re-enlisting the same UVID keeps the IID.
    iid = partner.client.iid
    assert await partner.client.enlist(partner_server.token(partner.uvid)) == iid


async def _enlist_reason(sandbox: Sandbox, partner_server: PartnerServer, token: str, **tweak) -> str:
    partner = await new_partner(sandbox, partner_server, enlist=False, connect=False)
    for name, value in tweak.items():
        setattr(partner.client, name, value)
    with pytest.raises(EnlistError) as excinfo:
        await partner.client.enlist(token)
    await partner.client.close()
    return excinfo.value.reason


async def test_enlist_failure_reasons(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    uvid = "@carol:example.org"
    stranger = SigningKey.generate()
    unknown = issue_partner_token(stranger, integrator="someone-else", uvid=uvid, audience="WHATSAPP", country="DE")
    assert await _enlist_reason(sandbox, partner_server, unknown) == "bad_integrator"
    forged = issue_partner_token(stranger, integrator=INTEGRATOR, uvid=uvid, audience="WHATSAPP", country="DE")
    assert await _enlist_reason(sandbox, partner_server, forged) == "bad_token"
    wrong_audience = partner_server.token(uvid, audience="MESSENGER")
    assert await _enlist_reason(sandbox, partner_server, wrong_audience) == "bad_token"
    expired = partner_server.token(uvid, now=1_000_000)
    assert await _enlist_reason(sandbox, partner_server, expired) == "bad_token"
    assert await _enlist_reason(sandbox, partner_server, partner_server.token(uvid, country="US")) == "not_eea"
    assert await _enlist_reason(sandbox, partner_server, "not.a.jwt") == "bad_token"


async def test_enlist_bad_signature_and_version(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    async def post(**changes: str) -> dict:
        partner = await new_partner(sandbox, partner_server, enlist=False, connect=False)
        form = {
            "authkey": "A" * 43,
            "e_keytype": "BQ",
            "e_regid": "AAAAAQ",
            "e_ident": "B" * 43,
            "e_skey_id": "AAAB",
            "e_skey_val": "C" * 43,
            "e_skey_sig": "D" * 86,
            "token": partner_server.token(partner.uvid),
            "v": "1",
            **changes,
        }
        async with sandbox.http.post(f"{sandbox.base}/3p/interop_reg", data=form) as response:
            assert response.status == 200
            return await response.json()

    assert await post() == {"status": "fail", "reason": "bad_signature"}
    assert await post(v="2") == {"status": "fail", "reason": "version"}
    assert await post(e_keytype="Bg") == {"status": "fail", "reason": "bad_signature"}


async def test_enlist_rate_limited(partner_server: PartnerServer, tmp_path) -> None:
    box = await start_sandbox(partner_server, media_dir=tmp_path, rate_limits={"enlistments_per_hour": 2})
    try:
        await new_partner(box, partner_server, connect=False)
        await new_partner(box, partner_server, connect=False)
        assert await _enlist_reason(box, partner_server, partner_server.token("@late:example.org")) == "rate_limited"
    finally:
        await stop_sandbox(box)


async def test_jwks_refetched_on_unknown_kid(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    await new_partner(sandbox, partner_server, connect=False)
    fetches = partner_server.jwks_fetches
    partner_server.key = SigningKey.generate()  # the Partner rotates its key
    sandbox.gatekeeper.clock.advance(60)  # past the refetch rate limit
    await new_partner(sandbox, partner_server, connect=False)
    assert partner_server.jwks_fetches == fetches + 1


async def _connect_code(partner, **token_args) -> GipErrorCode:
    with pytest.raises(GipError) as excinfo:
        await partner.connect(**token_args)
    return excinfo.value.code


async def test_connect_ok_and_failures(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    partner = await new_partner(sandbox, partner_server, connect=False)
    assert await partner.connect() == 0
    await partner.client.ping()
    await partner.client.close()

    # 401: a token for another user, and a static key other than the enlisted one.
    with pytest.raises(GipError) as excinfo:
        await partner.client.connect(partner_server.token("@someone-else:example.org"))
    assert excinfo.value.code is GipErrorCode.UNAUTHORIZED
    from bridge.gip.noise import StaticKey

    real_key = partner.client.noise_static
    partner.client.noise_static = StaticKey.generate()
    assert await _connect_code(partner) is GipErrorCode.UNAUTHORIZED
    partner.client.noise_static = real_key

    # 451: the token now says the user is outside the EEA.
    assert await _connect_code(partner, country="US") is GipErrorCode.NOT_IN_EEA

    # 426: a protocol version we do not speak.
    import bridge.gip.client as client_module

    original = client_module.PROTOCOL_VERSION
    client_module.PROTOCOL_VERSION = 2
    try:
        assert await _connect_code(partner) is GipErrorCode.VERSION
    finally:
        client_module.PROTOCOL_VERSION = original

    # 403: suspended.
    await sandbox.control("POST", f"/partners/{partner.client.iid}/suspend", {"suspended": True})
    assert await _connect_code(partner) is GipErrorCode.FORBIDDEN
    await sandbox.control("POST", f"/partners/{partner.client.iid}/suspend", {"suspended": False})

    # 503: refused on purpose, with retry_after.
    await sandbox.control("POST", "/faults", {"refuse_connect": {"iid": partner.client.iid, "code": "503"}})
    with pytest.raises(GipError) as excinfo:
        await partner.connect()
    assert excinfo.value.code is GipErrorCode.UNAVAILABLE
    assert excinfo.value.retry_after == 5
    await partner.connect()
    await partner.client.close()


async def test_connect_not_enlisted_405(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    partner = await new_partner(sandbox, partner_server, enlist=False, connect=False)
    partner.client.iid = "1-00000000000000@interop"
    assert await _connect_code(partner) is GipErrorCode.NOT_ENLISTED
    await partner.client.close()


async def test_newer_connection_closes_older_with_409(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    first = await new_partner(sandbox, partner_server)
    from bridge.gip.client import GipClient

    second = GipClient(
        base_url=sandbox.base, store=first.store, noise_static=first.client.noise_static, iid=first.client.iid
    )
    await second.connect(partner_server.token(first.uvid))
    await first.client.closed.wait()
    assert first.client.disconnect_code is GipErrorCode.CONFLICT
    await second.ping()
    await second.close()


async def test_unenlisted_after_30_days_without_connection_428(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    partner = await new_partner(sandbox, partner_server)
    await partner.client.close()
    await sandbox.control("POST", "/clock/advance", {"seconds": 29 * 86400})
    # Within 30 days: fine, and connecting resets the timer.
    await partner.connect(now=sandbox.gatekeeper.clock.now())
    await partner.client.close()
    await sandbox.control("POST", "/clock/advance", {"seconds": 31 * 86400})
    assert await _connect_code(partner, now=sandbox.gatekeeper.clock.now()) is GipErrorCode.UNENLISTED
    info = await sandbox.control("GET", f"/partners/{partner.client.iid}")
    assert info["enlisted"] is False
    assert info["rows"] == 0
    await partner.client.close()


async def test_strict_proxy_requires_client_ip(partner_server: PartnerServer, tmp_path) -> None:
    box = await start_sandbox(partner_server, media_dir=tmp_path, strict_proxy=True)
    try:
        partner = await new_partner(box, partner_server, connect=False)
        assert await _connect_code(partner) is GipErrorCode.UNAUTHORIZED
        partner.client.client_ip = "192.0.2.10"
        await partner.connect()
        await partner.client.close()
    finally:
        await stop_sandbox(box)


async def test_proxy_client_gone_closes_the_connection(sandbox: Sandbox, partner_server: PartnerServer) -> None:
    partner = await new_partner(sandbox, partner_server, client_ip="192.0.2.7")
    await partner.client.client_gone()
    assert partner.client.closed.is_set()
    info = await sandbox.control("GET", f"/partners/{partner.client.iid}")
    assert info["connected"] is False


async def test_several_connections_allowed_when_the_policy_is_off(partner_server: PartnerServer, tmp_path) -> None:
    box = await start_sandbox(partner_server, media_dir=tmp_path, one_connection_per_device=False)
    try:
        first = await new_partner(box, partner_server)
        from bridge.gip.client import GipClient

        second = GipClient(
            base_url=box.base, store=first.store, noise_static=first.client.noise_static, iid=first.client.iid
        )
        box.clients.append(second)
        await second.connect(partner_server.token(first.uvid))
        await first.client.ping()
        await second.ping()
    finally:
        await stop_sandbox(box)


async def test_a_server_without_the_pinned_noise_key_never_sees_the_token(
    sandbox: Sandbox, partner_server: PartnerServer
) -> None:
    from bridge.gip.noise import StaticKey

    partner = await new_partner(sandbox, partner_server, connect=False)
    seen: list[dict] = []
    authenticate = sandbox.gatekeeper.authenticate

    async def recording(payload: dict, remote_static: bytes):
        seen.append(payload)
        return await authenticate(payload, remote_static)

    sandbox.gatekeeper.authenticate = recording  # type: ignore[method-assign]
    partner.client.gatekeeper_static = StaticKey.generate().public  # another server's key
    assert await _connect_code(partner) is GipErrorCode.UNTRUSTED_SERVER
    assert seen == [], "refused before the third handshake message, which carries the token"
    partner.client.gatekeeper_static = sandbox.gatekeeper.noise_static.public
    assert await partner.connect() == 0
    assert len(seen) == 1
    await partner.client.close()
