"""Bring a database to the current schema with the alembic migrations in ``alembic/``."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(uri: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "alembic"))
    config.attributes["database_uri"] = uri
    return config


def upgrade_sync(uri: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(uri), revision)


async def upgrade(uri: str, revision: str = "head") -> None:
    """Run the migrations (alembic drives its own event loop, so in a worker thread)."""
    await asyncio.to_thread(upgrade_sync, uri, revision)
