"""Delivery modes: building a trail's pipeline, picking the mode per record, the outbox.

* :func:`build_pipeline` wires the redactor, spool and journal directories into a
  :class:`~otel_audit.pipeline.batch.BatchPipeline` from the trail's settings;
* :class:`ModeChooser` resolves the mode of one record: the call's ``mode=`` >
  ``mode_by_action`` > ``mode_by_classification`` > the trail's ``mode``;
* :func:`check_same_store` refuses a transactional-outbox write when the caller's
  session does not talk to the trail's store (the row would land elsewhere).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import URL

from ..config import MODES, AuditConfig, normalise_database_url
from ..errors import ConfigError
from ..record import AuditRecord
from ..redact import redactor_from_config
from ..store.writer import StoreWriter
from .batch import BatchPipeline

__all__ = [
    "ModeChooser",
    "build_pipeline",
    "check_same_store",
    "current_session",
    "default_state_dir",
]

#: The session of the innermost ``with trail.in_transaction(session):`` block.
current_session: ContextVar[tuple[int, Any] | None] = ContextVar(
    "otel_audit_outbox_session", default=None)


def default_state_dir(url: URL) -> str:
    """Where the spool and journal live by default for the store at ``url``.

    Next to a SQLite file (``<file>.otel-audit/``); otherwise under
    ``$XDG_STATE_HOME`` (``~/.local/state``) in a directory named after a hash of the
    store URL (without its password), so trails on one store share their spool.
    """
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:" \
            and not url.database.startswith("file:"):
        return os.path.abspath(url.database) + ".otel-audit"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                             "state")
    key = hashlib.sha256(url.render_as_string(hide_password=True).encode()).hexdigest()[:16]
    return os.path.join(base, "otel_audit", key)


def build_pipeline(config: AuditConfig, writer: StoreWriter) -> BatchPipeline:
    """The pipeline of a trail with ``config``: redaction, spool and journal as configured."""
    redactor = redactor_from_config(config.redact, config.redact_keys, config.redact_allow,
                                    config.redact_hmac_key)
    state = default_state_dir(writer.url)
    return BatchPipeline(
        config,
        writer,
        redactor=redactor,
        spool_dir=config.spool_dir or os.path.join(state, "spool"),
        journal_dir=config.journal_dir or os.path.join(state, "journal"),
    )


class ModeChooser:
    """Resolves the delivery mode of each record (cheap when no rules are configured)."""

    def __init__(self, config: AuditConfig) -> None:
        self.default = config.mode
        self.by_action: Mapping[str, str] = dict(config.mode_by_action or {})
        self.by_classification: Mapping[str, str] = dict(config.mode_by_classification or {})
        self.has_rules = bool(self.by_action or self.by_classification)

    def __call__(self, record: AuditRecord | None, mode: str | None) -> str:
        """Mode for ``record``: explicit ``mode`` > action rule > classification rule."""
        if mode is not None:
            if mode not in MODES:
                raise ConfigError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
            return mode
        if self.has_rules and record is not None:
            try:
                chosen = self.by_action.get(record.action) or self.by_classification.get(
                    record.data_classification)  # type: ignore[arg-type]
            except TypeError:  # unhashable odd input: the trail's mode
                chosen = None
            if chosen:
                return chosen
        return self.default


def _identity(url: URL) -> tuple[Any, ...]:
    url = normalise_database_url(url)
    database = url.database
    if url.get_backend_name() == "sqlite" and database and not database.startswith("file:"):
        database = os.path.realpath(database) if database != ":memory:" else database
    return (url.get_backend_name(), url.host, url.port or None, database)


def check_same_store(session: Any, writer: StoreWriter) -> Any:
    """Return ``session``'s connection if it talks to the trail's store, else raise."""
    try:
        bind = session.get_bind()
    except AttributeError:
        bind = getattr(session, "engine", None)
    url = getattr(bind, "url", None)
    if url is None or _identity(url) != _identity(writer.url):
        shown = url.render_as_string(hide_password=True) if url is not None else repr(session)
        raise ConfigError(
            f"the session's database ({shown}) is not this trail's store "
            f"({writer.url.render_as_string(hide_password=True)}): the audit row cannot "
            "share its transaction; record without session= instead"
        )
    return session if isinstance(session, Connection) else session.connection()
