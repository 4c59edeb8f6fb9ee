"""The homeserver and the database restarted in the middle of a conversation: nothing
lost, nothing twice, nothing out of order."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from bridge.app import BridgeApp
from devstack.postgres import Cluster, throwaway_cluster
from tests.integration.conftest import Stack, build_stack, tear_down
from tests.integration.test_bridge import log_in, open_chat
from tests.integration.test_chat_features import native_events

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    if not shutil.which("pg_ctl") and not list(__import__("glob").glob("/usr/lib/postgresql/*/bin/pg_ctl")):
        pytest.fail("these tests restart a Postgres of their own: install Debian's postgresql (scripts/setup.sh)")
    return throwaway_cluster()


def _plain(data: dict) -> None:
    data["bridge"]["encryption"]["default"] = False


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def restart_stack(tmp_path_factory, cluster: Cluster) -> AsyncIterator[Stack]:
    built, admin, database = await build_stack(
        tmp_path_factory.mktemp("restarts"), "whatsapp", _plain, admin=cluster.dsn
    )
    yield built
    await tear_down(built, admin, database)


async def converse(stack: Stack, disruption, count: int = 16, *, strict_order: bool = True) -> None:
    alice = await stack.user()
    room = await log_in(stack, alice)
    native = await stack.sandbox.native()
    portal = await open_chat(stack, alice, room, native)
    iid = (await stack.bridge.core.logins.get(alice.mxid)).iid
    outgoing, incoming = [f"out {i}" for i in range(count)], [f"in {i}" for i in range(count)]
    ids: list[str] = []
    for i in range(count):
        if i == count // 2:
            await disruption()
        ids.append(await alice.say(portal, outgoing[i]))
        await stack.sandbox.control("POST", f"/natives/{native['iid']}/send", {"to": iid, "text": incoming[i]})
    try:
        received = await native_events(stack, native, "message", count, timeout=90)
    except AssertionError:
        got = [m["content"]["text"] for m in await stack.sandbox.events(native["iid"], "message")]
        missed = sorted(set(outgoing) - set(got))
        rows = await stack.bridge.core.db.fetch(
            "SELECT event_id, state, kind, txn_id, attempts, last_error FROM matrix_events WHERE event_id = ANY($1)",
            [ids[outgoing.index(m)] for m in missed],
        )
        catch_up = stack.bridge.matrix.catch_up
        seen = catch_up and (catch_up.rounds, catch_up.outages, catch_up.found)
        raise AssertionError(f"the native missed {missed}; the bridge holds {rows}; catch-up {seen}") from None
    texts = [m["content"]["text"] for m in received]
    assert sorted(texts) == sorted(outgoing), "each once"
    if strict_order:
        assert texts == outgoing
    # Read from the homeserver: a /sync across its restart may leave events out of a gap.
    posted: list[str] = []
    for _ in range(90):
        posted = [
            e["content"]["body"]
            for e in await alice.history(portal)
            if e["type"] == "m.room.message" and e["sender"] != alice.mxid and e["content"].get("msgtype") == "m.text"
        ]
        if len(posted) >= count:
            break
        await asyncio.sleep(1)
    assert posted == incoming, f"each once, in the order the native sent them: {posted}"
    await alice.close()


async def test_postgres_restarted_mid_conversation(restart_stack: Stack, cluster: Cluster) -> None:
    async def restart_postgres() -> None:
        await asyncio.to_thread(cluster.restart)

    await converse(restart_stack, restart_postgres)


async def test_synapse_restarted_mid_conversation(restart_stack: Stack) -> None:
    stack = restart_stack

    async def restart_synapse() -> None:
        await asyncio.to_thread(stack.synapse.restart)

    # Synapse loses the events it had not pushed yet when it stops; the bridge finds them in
    # the room afterwards, and one of them may come after a later one.
    await converse(stack, restart_synapse, strict_order=False)
    assert stack.bridge.matrix.catch_up is not None


def _appservice_state(stack: Stack) -> str | None:
    with sqlite3.connect(stack.synapse.directory / "data" / "homeserver.db") as db:
        row = db.execute("SELECT state FROM application_services_state WHERE as_id = 'dma'").fetchone()
    return row[0] if row else None


async def test_a_homeserver_that_marked_the_bridge_down_before_its_restart_is_woken(restart_stack: Stack) -> None:
    """Synapse marks an appservice it cannot reach as down, and after its own restart sends
    it nothing (to-device events are dropped) until a room event for an appservice comes:
    the bridge's start-up check must not take that for a missing setting."""
    stack = restart_stack
    alice = await stack.user()
    room = await log_in(stack, alice)
    await stack.bridge.stop()
    await alice.say(room, "help")  # cannot be pushed: the homeserver marks the bridge down
    for _ in range(100):
        if _appservice_state(stack) == "down":
            break
        await asyncio.sleep(0.1)
    assert _appservice_state(stack) == "down"
    await asyncio.to_thread(stack.synapse.restart)
    stack.bridge = BridgeApp(stack.bridge.config)
    await stack.bridge.start()
    # The message from while it was away is answered, and the bridge takes new ones.
    await alice.notice(room, "Commands", timeout=60)
    await alice.say(room, "status")
    await alice.notice(room, "Logged in as", timeout=30)
    await alice.close()
