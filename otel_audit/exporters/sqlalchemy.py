"""Any other database SQLAlchemy speaks: a batched ``INSERT`` of the IDs not yet present."""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import select

from ..prepared import PreparedRecord
from ..record import JSON_FIELDS
from ..store.schema import ROW_COLUMNS, audit_trails
from .store import StoreExporter, typed_params

__all__ = ["SQLAlchemyExporter"]


class SQLAlchemyExporter(StoreExporter):
    """Writes batches through SQLAlchemy Core; idempotent on ``id`` (present IDs are
    skipped), one transaction per batch."""

    def _write(self, batch: Sequence[PreparedRecord], encoded: bytes | None) -> None:
        ids = [p.record.id for p in batch]
        with self.engine.begin() as conn:
            present = select(audit_trails.c.id).where(audit_trails.c.id.in_(ids))
            existing = set(conn.scalars(present))
            params = []
            for p in batch:
                if p.record.id in existing:
                    continue
                row = dict(zip(ROW_COLUMNS, typed_params(p), strict=True))
                for name in JSON_FIELDS:
                    text = row[name]
                    row[name] = None if text is None else json.loads(text)
                params.append(row)
            if params:
                conn.execute(audit_trails.insert(), params)
