"""Indexes for the audit console's first pages: action + time range, and the review queue.

The console's search reads newest first per filter; actor, resource and trace already
have indexes (``user_id, timestamp``; ``resource_type, resource_id, timestamp``;
``trace_id``) and the unfiltered page walks ``timestamp``. Two are added:

* ``ix_audit_trails_action``: ``(action, timestamp)`` for a search by action in a time
  range (otherwise a walk of the whole time index skipping other actions);
* ``ix_audit_trails_review``: ``(timestamp, id)`` of the records that require review
  only (a partial index: a record that needs no review costs it nothing on insert).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_audit_trails_action", "audit_trails", ["action", "timestamp"])
    op.create_index("ix_audit_trails_review", "audit_trails", ["timestamp", "id"],
                    sqlite_where=sa.text("requires_review = 1"),
                    postgresql_where=sa.text("requires_review"))


def downgrade() -> None:
    op.drop_index("ix_audit_trails_review", table_name="audit_trails")
    op.drop_index("ix_audit_trails_action", table_name="audit_trails")
