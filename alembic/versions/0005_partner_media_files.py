"""Partner media as files: the blobs leave the database for a directory (``bridge.media``).

``partner_media`` keeps one row per blob (who sent it, its size, when), the blob itself is
a file named by its ref; the periodic collector deletes both after ``keep_days``. Until now
no blob was ever stored (files from Matrix were refused), so the table is replaced.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("partner_media_created", table_name="partner_media")
    op.drop_table("partner_media")
    op.create_table(
        "partner_media",
        sa.Column("ref", sa.Text, primary_key=True),
        sa.Column("owner", sa.Text, sa.ForeignKey("logins.mxid", ondelete="CASCADE"), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("partner_media_created", "partner_media", ["created_at"])
    op.create_index("partner_media_owner", "partner_media", ["owner"])


def downgrade() -> None:
    op.drop_index("partner_media_owner", table_name="partner_media")
    op.drop_index("partner_media_created", table_name="partner_media")
    op.drop_table("partner_media")
    op.create_table(
        "partner_media",
        sa.Column("ref", sa.Text, primary_key=True),
        sa.Column("owner", sa.Text, sa.ForeignKey("logins.mxid", ondelete="CASCADE"), nullable=False),
        sa.Column("blob", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("partner_media_created", "partner_media", ["created_at"])
