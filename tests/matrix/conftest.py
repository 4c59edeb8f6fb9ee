"""The matrix package's stores run on both database backends, as the bridge's own do."""

from __future__ import annotations

from tests.db.conftest import db, db_uri

__all__ = ["db", "db_uri"]
