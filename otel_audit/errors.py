"""The exceptions otel_audit raises, under one root.

::

    AuditError
     ├── ConfigError          misconfiguration, raised at construction
     ├── AuditWriteError      a record could not be committed (``sync`` mode, fail-closed)
     ├── StoreError           the store refused or could not be reached
     ├── QueryError           an analytical query failed or tried to write
     │    └── QueryRefusedError   the read-only guard refused a statement or function
     └── IntegrityError       a chain, checkpoint or archive could not be read or trusted

Backend exceptions (SQLAlchemy, psycopg, DuckDB) are converted at the boundary with
``raise ... from exc`` so callers only ever need to catch :class:`AuditError`.
"""

from __future__ import annotations


class AuditError(Exception):
    """Root of every exception raised by otel_audit."""


class ConfigError(AuditError, ValueError):
    """A setting is invalid (bad URL, unknown mode, out-of-range number)."""


class AuditWriteError(AuditError):
    """A record could not be committed to the store (raised only in fail-closed modes)."""


class StoreError(AuditError):
    """The store could not be reached or refused a statement.

    ``transient`` tells the pipeline whether retrying can help (an outage, a lock) or
    not (the store rejects the data itself).
    """

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


class QueryError(AuditError):
    """An analytical query failed, or attempted to modify the read-only trail."""


class QueryRefusedError(QueryError):
    """Analytics refused a statement before running it: a write, a non-SELECT statement,
    more than one statement, or a function reaching outside the trail (files, other
    databases, SQL run on the store's own connection)."""


class IntegrityError(AuditError):
    """Integrity material (chain, checkpoint, archive manifest) is unreadable or untrusted."""
