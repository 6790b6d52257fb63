"""Seals of every chain head and signed erasures (time-bounded sealing, authenticated forget).

Revision ID: 0003_seals
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_seals"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_seals",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("sealer", sa.String(128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heads", sa.Text(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(128)),
        sa.Column("public_key", sa.String(64)),
    )
    op.create_index("ux_audit_seals_sealer_seq", "audit_seals", ["sealer", "seq"], unique=True)
    op.create_table(
        "audit_erasures",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("signature", sa.String(128)),
        sa.Column("public_key", sa.String(64)),
    )


def downgrade() -> None:
    op.drop_table("audit_erasures")
    op.drop_index("ux_audit_seals_sealer_seq", table_name="audit_seals")
    op.drop_table("audit_seals")
