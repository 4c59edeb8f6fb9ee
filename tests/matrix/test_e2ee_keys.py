"""The crypto store's pickle key and database URL, derived from the bridge's own settings."""

from __future__ import annotations

import base64

import pytest

from bridge.matrix.connector import pickle_key
from bridge.matrix.stores import mautrix_url


def test_pickle_key_is_derived_from_the_at_rest_key() -> None:
    one, other = pickle_key(b"\x01" * 32), pickle_key(b"\x02" * 32)
    assert one == pickle_key(b"\x01" * 32)
    assert one != other
    assert len(base64.b64decode(one)) == 32
    # Not the at-rest key itself: the crypto store never holds the key that seals the bridge's tables.
    assert base64.b64decode(one) != b"\x01" * 32


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("sqlite:///bridge.db", "sqlite:bridge.db"),
        ("sqlite:////var/lib/bridge/bridge.db", "sqlite:/var/lib/bridge/bridge.db"),
        ("sqlite:///with%20space.db", "sqlite:with space.db"),
        ("postgres://bridge@127.0.0.1/bridge", "postgres://bridge@127.0.0.1/bridge"),
    ],
)
def test_mautrix_reads_the_same_database(ours: str, theirs: str) -> None:
    assert mautrix_url(ours) == theirs


def test_encryption_needs_a_database_file() -> None:
    with pytest.raises(ValueError, match="SQLite file"):
        mautrix_url("sqlite:///:memory:")
