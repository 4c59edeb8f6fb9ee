"""The initial schema: logins, Signal stores, puppets, portals, the message map,
receipts, reactions, and the durable outbox and inbox.

Secrets (Signal private keys and sessions, the Noise key) and message contents waiting in
the outbox or inbox are stored encrypted with the at-rest key (bridge/db/sealed.py).
Times are unix milliseconds.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "logins",
        sa.Column("mxid", sa.Text, primary_key=True),
        sa.Column("uvid", sa.Text, nullable=False),
        sa.Column("iid", sa.Text, nullable=True, unique=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("consented_at", sa.BigInteger, nullable=False),
        sa.Column("eea_attested", sa.Boolean, nullable=False),
        sa.Column("country", sa.Text, nullable=False),
        sa.Column("noise_private", sa.LargeBinary, nullable=False),
        sa.Column("registration_id", sa.Integer, nullable=False),
        sa.Column("identity_key_pair", sa.LargeBinary, nullable=False),
        sa.Column("signed_pre_key_id", sa.Integer, nullable=False),
        sa.Column("next_pre_key_id", sa.Integer, nullable=False),
        sa.Column("management_room", sa.Text, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.CheckConstraint("state IN ('enlisting', 'enlisted', 'logged_out')", name="logins_state"),
    )
    op.create_table(
        "signal_pre_keys",
        sa.Column("mxid", sa.Text, sa.ForeignKey("logins.mxid", ondelete="CASCADE"), primary_key=True),
        sa.Column("key_id", sa.Integer, primary_key=True),
        sa.Column("record", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "signal_signed_pre_keys",
        sa.Column("mxid", sa.Text, sa.ForeignKey("logins.mxid", ondelete="CASCADE"), primary_key=True),
        sa.Column("key_id", sa.Integer, primary_key=True),
        sa.Column("record", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "signal_sessions",
        sa.Column("mxid", sa.Text, sa.ForeignKey("logins.mxid", ondelete="CASCADE"), primary_key=True),
        sa.Column("address", sa.Text, primary_key=True),
        sa.Column("record", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "signal_identities",
        sa.Column("mxid", sa.Text, sa.ForeignKey("logins.mxid", ondelete="CASCADE"), primary_key=True),
        sa.Column("address", sa.Text, primary_key=True),
        sa.Column("identity_key", sa.LargeBinary, nullable=False),
        sa.Column("changed_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "signal_sender_keys",
        sa.Column("mxid", sa.Text, sa.ForeignKey("logins.mxid", ondelete="CASCADE"), primary_key=True),
        sa.Column("sender", sa.Text, primary_key=True),
        sa.Column("distribution_id", sa.Text, primary_key=True),
        sa.Column("record", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "puppets",
        sa.Column("iid", sa.Text, primary_key=True),
        sa.Column("uvid", sa.Text, nullable=False),
        sa.Column("mxid", sa.Text, nullable=False, unique=True),
        sa.Column("displayname", sa.Text, nullable=False),
    )
    op.create_table(
        "portals",
        sa.Column("receiver", sa.Text, sa.ForeignKey("logins.mxid", ondelete="CASCADE"), primary_key=True),
        sa.Column("peer", sa.Text, primary_key=True),
        sa.Column("room_id", sa.Text, nullable=True, unique=True),
        sa.Column("encrypted", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "messages",
        sa.Column("receiver", sa.Text, primary_key=True),
        sa.Column("peer", sa.Text, primary_key=True),
        sa.Column("gk_id", sa.Text, primary_key=True),
        sa.Column("from_me", sa.Boolean, nullable=False),
        sa.Column("room_id", sa.Text, nullable=False),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
        sa.ForeignKeyConstraint(["receiver", "peer"], ["portals.receiver", "portals.peer"], ondelete="CASCADE"),
        sa.UniqueConstraint("room_id", "event_id", name="messages_event"),
    )
    op.create_table(
        "reactions",
        sa.Column("room_id", sa.Text, primary_key=True),
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("receiver", sa.Text, nullable=False),
        sa.Column("peer", sa.Text, nullable=False),
        sa.Column("target_gk_id", sa.Text, nullable=False),
        sa.Column("from_me", sa.Boolean, nullable=False),
        sa.Column("emoji", sa.Text, nullable=False),
        sa.ForeignKeyConstraint(["receiver", "peer"], ["portals.receiver", "portals.peer"], ondelete="CASCADE"),
    )
    op.create_table(
        "receipts",
        sa.Column("receiver", sa.Text, primary_key=True),
        sa.Column("peer", sa.Text, primary_key=True),
        sa.Column("gk_id", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, primary_key=True),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
        sa.ForeignKeyConstraint(["receiver", "peer"], ["portals.receiver", "portals.peer"], ondelete="CASCADE"),
        sa.CheckConstraint("kind IN ('delivered', 'read')", name="receipts_kind"),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("receiver", sa.Text, sa.ForeignKey("logins.mxid", ondelete="CASCADE"), nullable=False),
        sa.Column("peer", sa.Text, nullable=False),
        sa.Column("gk_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("room_id", sa.Text, nullable=False),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("receiver", "gk_id", name="outbox_gk_id"),
        sa.UniqueConstraint("room_id", "event_id", name="outbox_event"),
        sa.CheckConstraint("state IN ('pending', 'sent', 'failed')", name="outbox_state"),
    )
    op.create_index("outbox_pending", "outbox", ["receiver", "state", "id"])
    op.create_table(
        "inbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("receiver", sa.Text, sa.ForeignKey("logins.mxid", ondelete="CASCADE"), nullable=False),
        sa.Column("sender", sa.Text, nullable=False),
        sa.Column("gk_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("event_id", sa.Text, nullable=True),
        sa.Column("received_at", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("receiver", "sender", "gk_id", name="inbox_message"),
        sa.CheckConstraint("state IN ('pending', 'posted', 'failed')", name="inbox_state"),
    )
    op.create_index("inbox_pending", "inbox", ["receiver", "state", "id"])


def downgrade() -> None:
    for table in (
        "inbox",
        "outbox",
        "receipts",
        "reactions",
        "messages",
        "portals",
        "puppets",
        "signal_sender_keys",
        "signal_identities",
        "signal_sessions",
        "signal_signed_pre_keys",
        "signal_pre_keys",
        "logins",
    ):
        op.drop_table(table)
