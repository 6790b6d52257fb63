"""Create audit_trails with its five indexes.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "audit_trails",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("correlation_id", sa.String(64)),
        sa.Column("request_id", sa.String(64)),
        sa.Column("trace_id", sa.String(32)),
        sa.Column("span_id", sa.String(16)),
        sa.Column("action", sa.String(100), nullable=False),
        sa.Column("resource_type", sa.String(100)),
        sa.Column("resource_id", sa.String(255)),
        sa.Column("resource_name", sa.String(500)),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("user_email", sa.String(255)),
        sa.Column("team_id", sa.String(36)),
        sa.Column("client_ip", sa.String(45)),
        sa.Column("user_agent", sa.Text()),
        sa.Column("request_path", sa.String(500)),
        sa.Column("request_method", sa.String(10)),
        sa.Column("old_values", _JSON),
        sa.Column("new_values", _JSON),
        sa.Column("changes", _JSON),
        sa.Column("data_classification", sa.String(50)),
        sa.Column("requires_review", sa.Boolean(), nullable=False),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.Column("error_message", sa.Text()),
        sa.Column("context", _JSON),
        sa.Column("service_name", sa.String(255)),
        sa.Column("acting_as", sa.String(255)),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("stream", sa.String(128)),
        sa.Column("seq", sa.BigInteger()),
        sa.Column("prev_hash", sa.String(64)),
        sa.Column("hash", sa.String(64)),
    )
    op.create_index("ix_audit_trails_timestamp", "audit_trails", ["timestamp"])
    op.create_index(
        "ix_audit_trails_resource", "audit_trails", ["resource_type", "resource_id", "timestamp"]
    )
    op.create_index("ix_audit_trails_user", "audit_trails", ["user_id", "timestamp"])
    op.create_index("ix_audit_trails_trace", "audit_trails", ["trace_id"])
    op.create_index(
        "ux_audit_trails_stream_seq", "audit_trails", ["stream", "seq"], unique=True
    )


def downgrade() -> None:
    op.drop_table("audit_trails")
