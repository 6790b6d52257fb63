"""Layout 3: ``auth_method`` and ``delegation_chain`` on the record, ``mac`` on the chain.

``auth_method`` (how the caller authenticated) and ``delegation_chain`` (a JSON list of
``{"principal", "via"}``: the principals a token was delegated through) are appended to
``audit_trails``; ``mac`` holds the HMAC of a format-3 row's public hash when the chain
has a key (``docs/integrity.md``), on ``audit_duplicates`` too (the mac of a duplicate's
seal). Existing rows read NULL in all three and keep
verifying under the format they were sealed with. ``delegation_chain`` is ``TEXT`` on
SQLite (a document kept exactly as hashed, as migration 0004 made the other JSON
columns) and ``JSONB`` on PostgreSQL, like the other JSON columns. Adding nullable
columns rewrites no row on either store.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    json_type: sa.types.TypeEngine[Any] = (
        JSONB() if op.get_bind().dialect.name == "postgresql" else sa.Text())
    op.add_column("audit_trails", sa.Column("auth_method", sa.String(100)))
    op.add_column("audit_trails", sa.Column("delegation_chain", json_type))
    op.add_column("audit_trails", sa.Column("mac", sa.String(64)))
    # a duplicate's seal (integrity.install.DuplicateSeals) keeps its mac too
    op.add_column("audit_duplicates", sa.Column("mac", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("audit_duplicates") as batch:
        batch.drop_column("mac")
    with op.batch_alter_table("audit_trails") as batch:
        batch.drop_column("mac")
        batch.drop_column("delegation_chain")
        batch.drop_column("auth_method")
