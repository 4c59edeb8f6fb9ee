"""Bridge-wide secrets (the Partner's JWT signing key) and Partner media blobs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bridge_secrets",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "partner_media",
        sa.Column("ref", sa.Text, primary_key=True),
        sa.Column("owner", sa.Text, sa.ForeignKey("logins.mxid", ondelete="CASCADE"), nullable=False),
        sa.Column("blob", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("partner_media_created", "partner_media", ["created_at"])


def downgrade() -> None:
    op.drop_table("partner_media")
    op.drop_table("bridge_secrets")
