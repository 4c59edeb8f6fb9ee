"""The core on a real database (SQLite), between recording fakes of Matrix and the gatekeeper."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.config import EXAMPLE_PATH, parse_config, read_yaml
from bridge.core.bridge import BridgeCore
from bridge.core.portal_loop import LoopPolicy, Work
from bridge.db.database import Database, create_database
from bridge.db.logins import Login
from bridge.db.sealed import Sealer
from bridge.db.stores import Stores
from bridge.db.upgrade import upgrade
from bridge.gip.client import MessageEvent
from bridge.gip.content import Content
from bridge.gip.jid import Jid
from devstack.logins import enlisted_login
from tests.core.fakes import RecordingGatekeeper, RecordingMatrix

ALICE = "@alice:test"
PEER = "9@native"
FAST = LoopPolicy(max_attempts=3, backoff_base=0.01, backoff_cap=0.05, unavailable_cap=0.05, idle_exit=0.5)
_ids = itertools.count(1)


def config():
    data = read_yaml(EXAMPLE_PATH)
    data["appservice"]["as_token"] = data["appservice"]["hs_token"] = "x" * 32
    data["encryption_at_rest"]["key"] = "A" * 43 + "="
    data["bridge"]["encryption"]["default"] = False
    data["bridge"]["permissions"] = {"test": "user", "@admin:test": "admin"}
    return parse_config(data)


@dataclass
class Harness:
    core: BridgeCore
    matrix: RecordingMatrix
    gatekeeper: RecordingGatekeeper
    db: Database
    login: Login
    uri: str

    async def incoming(self, text: str, *, gk_id: str | None = None, t: int = 1_700_000_000, peer: str = PEER) -> str:
        """A message from the peer, as the gatekeeper side hands it over: inside the
        transaction that stores its session."""
        gk_id = gk_id or f"N{next(_ids)}"
        uvid = f"+49151{peer.split('@')[0]:0>8}"
        event = MessageEvent(gk_id, Jid.parse(peer), "text", t, Content(text=text), False, False, uvid)
        async with self.db.transaction():
            await self.core.on_event(self.login, event)
        return gk_id

    def outgoing(self, room_id: str, text: str, *, event_id: str | None = None) -> str:
        """A Matrix message, as the connector hands it to the portal's loop."""
        event_id = event_id or f"$mx{next(_ids)}"
        portal_key = ("portal", self.login.mxid, PEER)
        self.core.loops.submit(portal_key, MatrixMessage(self.core, room_id, event_id, text))
        return event_id

    async def room(self) -> str:
        portal, _ = await self.core.ensure_portal(self.login, PEER)
        assert portal.room_id is not None
        return portal.room_id

    async def until(self, check: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting")
            await asyncio.sleep(0.01)

    async def restart(self) -> None:
        """A new process on the same database (the fakes are the other sides: they stay)."""
        await self.core.stop()
        await self.db.close()
        self.db = create_database(self.uri)
        await self.db.start()
        self.core = build_core(self.db, self.matrix, self.gatekeeper)
        await self.core.start()


class MatrixMessage(Work):
    """What the connector's work does for an ``m.text``: convert and store, then send."""

    def __init__(self, core: BridgeCore, room_id: str, event_id: str, text: str) -> None:
        self.core, self.room_id, self.event_id, self.text = core, room_id, event_id, text
        self.name = f"matrix {event_id}"
        self.delegate: Work | None = None

    async def run(self) -> None:
        if self.delegate is None:
            content = {"msgtype": "m.text", "body": self.text}
            self.delegate = await self.core.flow.message(self.room_id, self.event_id, ALICE, content)
        if self.delegate is not None:
            await self.delegate.run()

    async def attempted(self, error: BaseException) -> int:
        return await self.delegate.attempted(error) if self.delegate else 1

    async def waiting(self, error: BaseException) -> None:
        if self.delegate:
            await self.delegate.waiting(error)

    async def give_up(self, error: BaseException) -> None:
        if self.delegate:
            await self.delegate.give_up(error)


def build_core(db: Database, matrix: RecordingMatrix, gatekeeper: RecordingGatekeeper) -> BridgeCore:
    stores = Stores.create(db, Sealer(bytes(range(32))))
    core = BridgeCore(config(), stores, matrix, gatekeeper, policy=FAST)
    core.resend_wait_ms = 300
    return core


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    uri = f"sqlite:///{tmp_path / 'core.db'}"
    await upgrade(uri)
    db = create_database(uri)
    await db.start()
    matrix, gatekeeper = RecordingMatrix(), RecordingGatekeeper()
    core = build_core(db, matrix, gatekeeper)
    login = enlisted_login(ALICE, management_room="!management:test")
    await core.logins.insert(login)
    gatekeeper.online.add(ALICE)
    await core.start()
    harness = Harness(core, matrix, gatekeeper, db, login, uri)
    yield harness
    await harness.core.stop()
    await harness.db.close()
