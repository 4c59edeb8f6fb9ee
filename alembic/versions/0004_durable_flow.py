"""The durable flow: Matrix transactions stored before the 200, every gatekeeper event that
must reach a portal in the inbox, ciphertexts kept with the outbox, retry-receipt counts.

- ``matrix_events``: each event of an appservice transaction (room events, read
  receipts, to-device events, device-list changes), stored sealed before the homeserver
  hears 200; a resent transaction conflicts on (txn_id, seq) and changes nothing.
- ``inbox``: also receipts and notices from the gatekeeper (``kind``), the bare peer (the
  portal it belongs to), the gatekeeper's time, attempts; unique per kind.
- ``outbox``: the prepared stanza (one ciphertext per device, sealed) stored with the
  advanced Signal sessions before it is sent, so a resend reuses it; the payload is kept
  (sealed) a while after sending, to answer retry receipts.
- ``retry_receipts``: how often we asked a peer to resend a message, across reconnects.
- ``kv``: small durable values (the bot's to-device sync position).
- ``to_device_seen``: digests of handled to-device events (they arrive pushed and synced).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "matrix_events",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("txn_id", sa.Text, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("room_id", sa.Text, nullable=True),
        sa.Column("event_id", sa.Text, nullable=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("done_at", sa.BigInteger, nullable=True),
        sa.UniqueConstraint("txn_id", "seq", name="matrix_events_txn"),
        sa.CheckConstraint("state IN ('pending', 'done', 'failed')", name="matrix_events_state"),
    )
    op.create_index("matrix_events_pending", "matrix_events", ["state", "id"])
    # One row per room event: catch-up may find an event that a transaction then brings.
    op.create_index("matrix_events_event", "matrix_events", ["event_id"], unique=True)
    with op.batch_alter_table("inbox") as batch:
        batch.add_column(sa.Column("peer", sa.Text, nullable=True))
        batch.add_column(sa.Column("sent_at", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("last_error", sa.Text, nullable=True))
        batch.add_column(sa.Column("done_at", sa.BigInteger, nullable=True))
        batch.drop_constraint("inbox_message", type_="unique")
        batch.create_unique_constraint("inbox_message", ["receiver", "sender", "kind", "gk_id"])
    op.execute("UPDATE inbox SET peer = sender")
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("prepared", sa.LargeBinary, nullable=True))
        batch.add_column(sa.Column("sent_at", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("done_at", sa.BigInteger, nullable=True))
    op.create_index("inbox_done", "inbox", ["state", "done_at"])
    op.create_index("outbox_done", "outbox", ["state", "done_at"])
    op.create_index("receipts_age", "receipts", ["timestamp"])
    op.create_table(
        "retry_receipts",
        sa.Column("receiver", sa.Text, sa.ForeignKey("logins.mxid", ondelete="CASCADE"), primary_key=True),
        sa.Column("sender", sa.Text, primary_key=True),
        sa.Column("gk_id", sa.Text, primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "kv",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "to_device_seen",
        sa.Column("digest", sa.Text, primary_key=True),
        sa.Column("seen_at", sa.BigInteger, nullable=False),
    )
    op.create_index("to_device_seen_age", "to_device_seen", ["seen_at"])


def downgrade() -> None:
    op.drop_table("to_device_seen")
    op.drop_table("kv")
    op.drop_table("retry_receipts")
    op.drop_index("receipts_age", "receipts")
    op.drop_index("outbox_done", "outbox")
    op.drop_index("inbox_done", "inbox")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("done_at")
        batch.drop_column("sent_at")
        batch.drop_column("prepared")
    with op.batch_alter_table("inbox") as batch:
        batch.drop_constraint("inbox_message", type_="unique")
        batch.create_unique_constraint("inbox_message", ["receiver", "sender", "gk_id"])
        batch.drop_column("done_at")
        batch.drop_column("last_error")
        batch.drop_column("attempts")
        batch.drop_column("sent_at")
        batch.drop_column("peer")
    op.drop_index("matrix_events_event", "matrix_events")
    op.drop_index("matrix_events_pending", "matrix_events")
    op.drop_table("matrix_events")
