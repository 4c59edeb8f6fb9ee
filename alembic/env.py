"""Alembic environment: one set of migrations for Postgres (asyncpg) and SQLite (aiosqlite)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from bridge.db.database import sqlalchemy_url


def _database_uri() -> str:
    x = context.get_x_argument(as_dictionary=True)
    if "uri" in x:
        return x["uri"]
    configured = context.config.attributes.get("database_uri")
    if configured:
        return configured
    from bridge.config import read_yaml

    data = read_yaml(Path(x.get("config", "config.yaml")))
    return data["database"]["uri"]


def _migrate(connection: Connection) -> None:
    context.configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


async def _run() -> None:
    engine = create_async_engine(sqlalchemy_url(_database_uri()))
    async with engine.connect() as connection:
        await connection.run_sync(_migrate)
        await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=sqlalchemy_url(_database_uri()), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run())
