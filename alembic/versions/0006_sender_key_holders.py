"""Groups (interop profile §9): which participant devices hold each user's current sender
key of a group, written with the key itself, so that a restart hands it only to devices
that lack it. A group's portal is one room with a ``portals`` row per local member, so a
room id is no longer unique there (an index keeps the lookups by room fast).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # Recreated without the inline UNIQUE (migrations run with foreign keys off, so the
        # tables that point at portals keep their rows).
        with op.batch_alter_table("portals", recreate="always", copy_from=_portals(unique_room=False)):
            pass
    else:
        op.drop_constraint("portals_room_id_key", "portals", type_="unique")
    op.create_index("portals_room", "portals", ["room_id"])
    op.create_table(
        "sender_key_holders",
        sa.Column("mxid", sa.Text, sa.ForeignKey("logins.mxid", ondelete="CASCADE"), primary_key=True),
        sa.Column("group_jid", sa.Text, primary_key=True),
        sa.Column("device", sa.Text, primary_key=True),
    )


def downgrade() -> None:
    op.drop_table("sender_key_holders")
    op.drop_index("portals_room", table_name="portals")
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("portals", recreate="always", copy_from=_portals(unique_room=True)):
            pass
    else:
        op.create_unique_constraint("portals_room_id_key", "portals", ["room_id"])


def _portals(*, unique_room: bool) -> sa.Table:
    """The table as 0001 made it, with or without the unique room id."""
    return sa.Table(
        "portals",
        sa.MetaData(),
        sa.Column("receiver", sa.Text, sa.ForeignKey("logins.mxid", ondelete="CASCADE"), primary_key=True),
        sa.Column("peer", sa.Text, primary_key=True),
        sa.Column("room_id", sa.Text, nullable=True, unique=unique_room),
        sa.Column("encrypted", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
