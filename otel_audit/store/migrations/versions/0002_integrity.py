"""Integrity and retention: personal-data digest columns, checkpoints, legal holds.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_trails") as batch:
        batch.add_column(sa.Column("pii_salt", sa.String(32)))
        batch.add_column(sa.Column("pii", sa.Text()))
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("stream", sa.String(128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("signature", sa.String(128)),
        sa.Column("public_key", sa.String(64)),
    )
    op.create_index("ix_audit_checkpoints_stream_seq", "audit_checkpoints", ["stream", "seq"])
    op.create_table(
        "audit_holds",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.String(255), nullable=False),
        sa.Column("resource_type", sa.String(100)),
        sa.Column("reason", sa.Text()),
        sa.Column("created_by", sa.String(255)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    op.drop_table("audit_holds")
    op.drop_table("audit_checkpoints")
    with op.batch_alter_table("audit_trails") as batch:
        batch.drop_column("pii")
        batch.drop_column("pii_salt")
