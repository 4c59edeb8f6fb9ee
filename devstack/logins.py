"""A stored login for tests that need one row (foreign keys point at it), without enlisting."""

from __future__ import annotations

from typing import Any

from bridge.db.logins import Login, LoginState
from bridge.signal import IdentityKeyPair


def enlisted_login(mxid: str, **fields: Any) -> Login:
    values: dict[str, Any] = {
        "mxid": mxid,
        "uvid": mxid,
        "iid": "1-100@interop",
        "state": LoginState.ENLISTED,
        "consented_at": 0,
        "eea_attested": True,
        "country": "DE",
        "noise_private": bytes(32),
        "registration_id": 1,
        "identity": IdentityKeyPair.generate(),
        "signed_pre_key_id": 1,
        "next_pre_key_id": 1,
        "management_room": None,
        "created_at": 0,
    }
    values.update(fields)
    return Login(**values)
