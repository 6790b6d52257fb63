"""Analysis of the audit trail with DuckDB: :class:`AuditAnalytics` and the report pack.

``AuditAnalytics(url)`` attaches the store read-only (SQLite or PostgreSQL, plus the
retention's Parquet archives) and exposes the typed view ``audit_trails``;
``list_reports()`` describes the compliance reports under ``reports/*.sql``.
"""

from __future__ import annotations

from .catalog import Report, ReportParam, get_report, list_reports
from .core import AnalyticsScope, AuditAnalytics
from .links import trace_link
from .relation import AuditRelation

__all__ = ["AnalyticsScope", "AuditAnalytics", "AuditRelation", "Report", "ReportParam",
           "get_report", "list_reports", "trace_link"]
