"""Matrix events that arrived encrypted with a room key the bridge does not have yet.

They are kept (as the ciphertext the homeserver sent) until the key arrives, so that a
late key still bridges the message after a restart; nothing here is plaintext.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "undecrypted_events",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("room_id", sa.Text, nullable=False),
        sa.Column("session_id", sa.Text, nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("received_at", sa.BigInteger, nullable=False),
        # The notice that told the sender, once the bounded wait ran out.
        sa.Column("notice_event_id", sa.Text, nullable=True),
    )
    op.create_index("undecrypted_events_session", "undecrypted_events", ["session_id"])


def downgrade() -> None:
    op.drop_table("undecrypted_events")
