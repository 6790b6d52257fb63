"""Exporters: one class per destination behind one contract (:mod:`.base`).

The pipeline hands each batch of :class:`~otel_audit.prepared.PreparedRecord` to an
:class:`AuditExporter`; the store exporters write to SQLite, PostgreSQL or any other
SQLAlchemy database, the forwarding exporters to OTLP and syslog, and
:class:`otel_audit.testing.InMemoryAuditExporter` keeps them in memory for tests.
"""

from ..prepared import PreparedRecord
from .base import AuditExporter, ExportResult, ExportStatus

__all__ = ["AuditExporter", "ExportResult", "ExportStatus", "PreparedRecord"]
