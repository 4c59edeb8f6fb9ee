"""Data access. The schema lives in ``alembic/``; queries go through :mod:`.database`."""
