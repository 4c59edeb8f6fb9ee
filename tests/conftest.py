"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.signal_client import NodeSignalPeer, peer_available


@pytest.fixture(scope="session")
def signal_peer() -> Iterator[NodeSignalPeer]:
    """The Node process wrapping libsignal 0.72.1 and libsignal-node 6.0.0."""
    if not peer_available():
        pytest.fail(
            "the Node Signal peer is not installed: run `npm ci` in devstack/signal "
            "(the README's test command does this)"
        )
    peer = NodeSignalPeer()
    yield peer
    peer.close()
