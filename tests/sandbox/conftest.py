from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from devstack.sandbox import PartnerServer, Sandbox, start_sandbox, stop_sandbox


@pytest.fixture
async def partner_server() -> AsyncIterator[PartnerServer]:
    server = PartnerServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def sandbox(partner_server: PartnerServer, tmp_path) -> AsyncIterator[Sandbox]:
    box = await start_sandbox(partner_server, media_dir=tmp_path / "media")
    yield box
    await stop_sandbox(box)
