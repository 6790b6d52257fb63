"""audit_forward_cursors and audit_forward_rejects: forwarding the committed trail.

``otel-audit forward`` keeps, per destination and stream, the last chain position the
destination acknowledged (and, in the row of stream ``''``, the destination's lease and
health), and the records a destination refused permanently (``docs/forwarding.md``).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_forward_cursors",
        sa.Column("destination", sa.String(128), primary_key=True),
        sa.Column("stream", sa.String(128), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True)),
        sa.Column("gap_seq", sa.BigInteger()),
        sa.Column("gap_since", sa.DateTime(timezone=True)),
        sa.Column("holder", sa.String(255)),
        sa.Column("lease_until", sa.DateTime(timezone=True)),
        sa.Column("last_success", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text()),
        sa.Column("last_error_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "audit_forward_rejects",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("destination", sa.String(128), nullable=False),
        sa.Column("stream", sa.String(128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("record_id", sa.String(36), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_audit_forward_rejects_destination", "audit_forward_rejects",
                    ["destination", "id"])


def downgrade() -> None:
    op.drop_index("ix_audit_forward_rejects_destination", table_name="audit_forward_rejects")
    op.drop_table("audit_forward_rejects")
    op.drop_table("audit_forward_cursors")
