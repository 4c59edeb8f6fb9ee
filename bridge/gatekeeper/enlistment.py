"""Enlisting a user: make their Signal device and Noise key, store them, enlist at G."""

from __future__ import annotations

import os
import time

import aiohttp

from bridge.db.logins import Login, LoginState
from bridge.db.signal_store import DbSignalStore
from bridge.db.stores import Stores
from bridge.gip.client import GipClient
from bridge.gip.noise import StaticKey
from bridge.signal import IdentityKeyPair, SignedPreKeyRecord, generate_registration_id

from .tokens import TokenIssuer


async def create_login(stores: Stores, *, mxid: str, uvid: str, country: str, eea_attested: bool) -> Login:
    """A new device for ``mxid``, stored before anything is sent anywhere."""
    now = int(time.time() * 1000)
    identity = IdentityKeyPair.generate()
    login = Login(
        mxid=mxid,
        uvid=uvid,
        iid=None,
        state=LoginState.ENLISTING,
        consented_at=now,
        eea_attested=eea_attested,
        country=country,
        noise_private=os.urandom(32),
        registration_id=generate_registration_id(),
        identity=identity,
        signed_pre_key_id=1,
        next_pre_key_id=1,
        management_room=None,
        created_at=now,
    )
    async with stores.db.transaction():
        await stores.logins.insert(login)
        store = DbSignalStore(stores.db, stores.sealer, mxid, identity, login.registration_id)
        await store.store_signed_pre_key(SignedPreKeyRecord.generate(identity, 1, now))
    return login


async def enlist(
    stores: Stores,
    login: Login,
    *,
    base_url: str,
    tokens: TokenIssuer,
    http: aiohttp.ClientSession | None = None,
) -> str:
    """``POST /3p/interop_reg`` for a stored login; records and returns the IID.

    Raises:
        EnlistError: the gatekeeper's reason (bad_token, not_eea, …).
    """
    store = DbSignalStore(stores.db, stores.sealer, login.mxid, login.identity, login.registration_id)
    client = GipClient(
        base_url=base_url,
        store=store,
        noise_static=StaticKey.from_private(login.noise_private),
        http=http,
        signed_pre_key_id=login.signed_pre_key_id,
    )
    try:
        iid = await client.enlist(tokens.for_login(login))
    finally:
        await client.close()
    await stores.logins.set_enlisted(login.mxid, iid)
    return iid
