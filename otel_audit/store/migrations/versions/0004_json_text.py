"""SQLite: JSON columns become TEXT, so a document is stored exactly as the chain hashed it.

A column declared ``JSON`` has NUMERIC affinity on SQLite: a bare number document
(``12``, ``1.5``, ``1e+16``) was converted to an INTEGER or REAL and lost its text. The
table is rebuilt (Alembic batch mode) with ``TEXT`` columns; every stored document keeps
its value, and a number SQLite had converted is written back as text (an integer in
decimal, a REAL in Python's shortest round-trip spelling: the verifier of rows sealed
under format ``otel-audit/1`` accepts those spellings, see ``docs/integrity.md``).
PostgreSQL keeps ``JSONB``.

Revision ID: 0004
Revises: 0003_seals
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003_seals"
branch_labels = None
depends_on = None

_COLUMNS = ("old_values", "new_values", "changes", "context")


def _number_text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    converted: dict[str, list[tuple[str, str]]] = {}
    for name in _COLUMNS:
        rows = bind.exec_driver_sql(
            f'SELECT id, "{name}" FROM audit_trails '
            f"WHERE typeof(\"{name}\") IN ('integer', 'real')").fetchall()
        converted[name] = [(_number_text(value), row_id) for row_id, value in rows]
    with op.batch_alter_table("audit_trails", recreate="always") as batch:
        for name in _COLUMNS:
            batch.alter_column(name, type_=sa.Text(), existing_type=sa.JSON(),
                               existing_nullable=True)
    for name, values in converted.items():
        if values:
            bind.exec_driver_sql(f'UPDATE audit_trails SET "{name}" = ? WHERE id = ?',
                                 values)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    with op.batch_alter_table("audit_trails", recreate="always") as batch:
        for name in _COLUMNS:
            batch.alter_column(name, type_=sa.JSON(), existing_type=sa.Text(),
                               existing_nullable=True)
