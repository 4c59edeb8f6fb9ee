"""Each data test runs against a fresh, uniquely named database on both backends."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from bridge.db.database import Database, create_database
from bridge.db.upgrade import upgrade
from devstack.postgres import server_dsn


@pytest.fixture(params=["sqlite", "postgres"])
async def db_uri(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'bridge.db'}"
        return
    admin = server_dsn()
    name = f"dma_test_{uuid.uuid4().hex[:16]}"
    connection = await asyncpg.connect(admin)
    await connection.execute(f'CREATE DATABASE "{name}"')
    await connection.close()
    yield admin.rsplit("/", 1)[0] + "/" + name
    connection = await asyncpg.connect(admin)
    await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await connection.close()


@pytest.fixture
async def db(db_uri: str) -> AsyncIterator[Database]:
    await upgrade(db_uri)
    database = create_database(db_uri)
    await database.start()
    yield database
    await database.close()
