"""``AuditTrail``: the direct API — ``record()``, ``action()``, ``flush()``, ``shutdown()``.

The caller's thread builds an :class:`~otel_audit.record.AuditRecord` (timestamp, a
time-ordered ID, the current trace context, classification and review flags) and
hands it to a bounded queue. Everything else — normalisation, redaction, chaining (on
the trail's worker thread) and the store write (on its store thread) — happens in the
background, except in ``sync`` mode, where the call
returns after the commit and raises :class:`~otel_audit.errors.AuditWriteError`
(fail-closed).
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime as dt
import logging
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Unpack

from opentelemetry._logs import LoggerProvider

from ._backlink import SpanLinker, linker
from ._internal import log_internal_error
from .action import ActionScope
from .config import AuditConfig, TrailSettings, resolve_config
from .errors import AuditWriteError, StoreError
from .exporters.adapter import ExporterWriter
from .exporters.base import AuditExporter
from .integrity.install import install_chain
from .integrity.periodic_seals import install_seals
from .pipeline.batch import AuditStats, DeferredRecords
from .pipeline.delivery import ModeChooser, build_pipeline, check_same_store, current_session
from .policy import AuditPolicy
from .record import AuditRecord
from .record_builder import RecordFields, build, storable_name
from .store.reader import query_records
from .store.writer import StoreWriter

__all__ = ["ActionScope", "AuditTrail", "RecordFields", "configure", "get_trail", "set_trail"]

_queued_copy: Callable[[AuditRecord], AuditRecord] | None
try:  # compiled (optional); the pure path queues the record itself (Python code cannot
    # take an object out of the cycle collector)
    from ._accel import queued_copy as _queued_copy
except ImportError:  # pragma: no cover - depends on the build
    _queued_copy = None

class AuditTrail:
    """An audit trail writing to one store.

    ``AuditTrail(url=None, *, service_name=None, mode="async", batch_size=...,
    flush_interval=..., queue_size=..., **settings)``: every setting of
    :mod:`otel_audit.config` is a typed keyword (:class:`~otel_audit.config.TrailSettings`);
    any setting left ``None`` comes from the ``OTEL_AUDIT_*`` environment, then the
    defaults.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        policy: AuditPolicy | None = None,
        logger_provider: LoggerProvider | None = None,
        exporter: AuditExporter | None = None,
        **settings: Unpack[TrailSettings],
    ) -> None:
        # every setting is a typed keyword (config.TrailSettings, one per config.SETTINGS
        # entry); an unknown name is still a ConfigError for untyped callers
        self.config: AuditConfig = resolve_config({"url": url, **settings})
        storable = storable_name(self.config.service_name)
        if storable != self.config.service_name:
            # the stream name and every record carry it: the store must take it
            log_internal_error("service_name", logging.WARNING,
                               "audit service name holds NUL or lone surrogates; "
                               "using %r", storable)
            self.config = dataclasses.replace(self.config, service_name=storable)
        self.policy = policy if policy is not None else AuditPolicy()
        self.enabled = self.config.enabled
        self.service_name = self.config.service_name
        # an exporter takes the batches instead of the store (otel_audit.exporters)
        self.writer = StoreWriter(self.config.url, auto_migrate=self.config.auto_migrate) \
            if exporter is None else ExporterWriter(exporter, self.config.url,
                                                    auto_migrate=self.config.auto_migrate)
        self.pipeline = build_pipeline(self.config, self.writer)
        if self.config.emit_otel_logs:
            # imported only when asked for; runs on the worker after normalisation
            from .integrations.otel_emit import OtelLogEmitter

            self.pipeline.on_written.append(OtelLogEmitter(logger_provider))
        #: this writer's hash chain (see otel_audit.integrity)
        self.chain = install_chain(self.config, self.writer, self.pipeline)
        #: seals of that chain's head: on a schedule while writing, and at shutdown
        self.seals = install_seals(self.config, self.writer, self.pipeline, self.chain)
        # record() queues a copy of its record outside the cycle collector when every
        # value is (queued_copy in _speedups.c): thousands may wait for the worker, each
        # traversed by every collection meanwhile, and promoted into the oldest
        # generation, calling for full collections. Only while nothing but the library's
        # code sees queued records (pipeline.own_code_only(), asked at each call: a stage
        # added later counts). The record returned stays in the collector.
        self._queue_copy = _queued_copy is not None
        self._sync = self.config.mode == "sync"
        self._choose_mode = ModeChooser(self.config)
        # the hot path skips mode resolution when nothing can change the trail's mode
        self._plain_async = self.config.mode == "async" and not self._choose_mode.has_rules
        # how a recording span points back at the rows made in it (otel_audit._backlink)
        self._link_span: SpanLinker | None = linker(self.config.span_backlink)
        self._closed = False
        ref = weakref.ref(self)

        def _at_exit() -> None:
            trail = ref()
            if trail is not None:
                trail.shutdown()

        atexit.register(_at_exit)

    def __repr__(self) -> str:
        url = self.writer.url.render_as_string(hide_password=True)
        return f"AuditTrail(url={url!r}, mode={self.config.mode!r})"

    # ------------------------------------------------------------------ recording

    def build_record(
        self,
        action: str,
        *,
        user_id: str | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        resource_name: str | None = None,
        user_email: str | None = None,
        team_id: str | None = None,
        client_ip: str | None = None,
        user_agent: str | None = None,
        request_path: str | None = None,
        request_method: str | None = None,
        request_id: str | None = None,
        old_values: Any = None,
        new_values: Any = None,
        changes: Any = None,
        data_classification: str | None = None,
        requires_review: bool | None = None,
        success: bool = True,
        error_message: str | None = None,
        context: Any = None,
        acting_as: str | None = None,
        auth_method: str | None = None,
        delegation_chain: Any = None,
        timestamp: dt.datetime | None = None,
        trace_id: str | None = None,
        span_id: str | None = None,
        service_name: str | None = None,
        apply_policy: bool = True,
    ) -> AuditRecord:
        """Build (but do not submit) a record with IDs, trace context and policy applied.

        ``trace_id``/``span_id`` override the current span (ingest of records made
        elsewhere); otherwise the current span context is captured, sampled or not.
        The record is a snapshot of this call (:func:`otel_audit.record.snapshot`): its
        dicts and lists are copies, so later changes to the caller's objects never
        reach it.
        """
        return self._build(
            action, user_id, resource_type, resource_id, resource_name, user_email, team_id,
            client_ip, user_agent, request_path, request_method, request_id, old_values,
            new_values, changes, data_classification, requires_review, success,
            error_message, context, acting_as, timestamp, trace_id, span_id, service_name,
            apply_policy, auth_method, delegation_chain)

    #: :meth:`build_record` with every field positional (no keyword matching on the hot
    #: path: :meth:`record` calls it directly); see otel_audit.record_builder
    _build = build

    def record(
        self,
        action: str,
        *,
        mode: str | None = None,
        session: Any = None,
        user_id: str | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        resource_name: str | None = None,
        user_email: str | None = None,
        team_id: str | None = None,
        client_ip: str | None = None,
        user_agent: str | None = None,
        request_path: str | None = None,
        request_method: str | None = None,
        request_id: str | None = None,
        old_values: Any = None,
        new_values: Any = None,
        changes: Any = None,
        data_classification: str | None = None,
        requires_review: bool | None = None,
        success: bool = True,
        error_message: str | None = None,
        context: Any = None,
        acting_as: str | None = None,
        auth_method: str | None = None,
        delegation_chain: Any = None,
        timestamp: dt.datetime | None = None,
        trace_id: str | None = None,
        span_id: str | None = None,
        service_name: str | None = None,
        apply_policy: bool = True,
    ) -> AuditRecord | None:
        """Record one audit entry and return it (``None`` when the trail is disabled).

        The keyword arguments are the record's fields (``user_id``, ``resource_type``,
        ``resource_id``, ``old_values``, ``new_values``, ``success``, ... — the keys of
        :class:`RecordFields`, and :meth:`build_record`'s ``trace_id``, ``span_id``,
        ``service_name`` and ``apply_policy``; an unknown name is a ``TypeError``, as in
        any call, while any *value* is accepted and normalised). In ``async`` mode this
        never raises for a value and does no I/O:
        the record is queued. In ``sync`` mode (the trail's, or ``mode="sync"`` for this
        call) it returns after the store commit and raises :class:`AuditWriteError`
        on failure; ``durable`` returns once the record is in the local journal.
        ``session`` (a SQLAlchemy ``Session`` or ``Connection`` on the trail's store)
        writes the row inside the caller's transaction — it commits or rolls back with
        the caller's work (the transactional outbox; see also :meth:`in_transaction`).
        """
        if not self.enabled:
            return None
        try:
            # every field positional: keyword matching costs the caller twice otherwise
            rec = self._build(
                action, user_id, resource_type, resource_id, resource_name, user_email,
                team_id, client_ip, user_agent, request_path, request_method, request_id,
                old_values, new_values, changes, data_classification, requires_review, success,
                error_message, context, acting_as, timestamp, trace_id, span_id, service_name,
                apply_policy, auth_method, delegation_chain)
        except Exception:  # never break the caller in async mode
            if mode == "sync" or (mode is None and self._sync):
                raise
            log_internal_error("build", logging.ERROR, "could not build audit record",
                               exc_info=True)
            return None
        if mode is None and session is None and self._plain_async and current_session.get() is None:
            # the default path, without submit()'s dispatch
            pipeline = self.pipeline
            if self._queue_copy and pipeline.own_code_only():
                pipeline.submit(_queued_copy(rec))  # type: ignore[misc]
            else:
                pipeline.submit(rec)
        else:
            self.submit(rec, mode=mode, session=session)
        if rec.span_id is not None and self._link_span is not None:
            # the span processor recognises audit.record_id and never records it again
            self._link_span(rec.id, rec.trace_id, rec.span_id)  # type: ignore[arg-type]
        return rec

    def link_to_span(self, record: AuditRecord) -> None:
        """Point the current recording span at ``record``'s row, as the trail's
        ``span_backlink`` setting says (``record()`` does it; for capture paths that
        build and submit records themselves). Nothing happens unless the current span
        is the one the record was made in."""
        if record.span_id is not None and record.trace_id is not None \
                and self._link_span is not None:
            self._link_span(record.id, record.trace_id, record.span_id)

    def submit(self, record: AuditRecord, *, mode: str | None = None,
               session: Any = None) -> AuditRecord:
        """Submit a built record in the trail's mode (or ``mode`` for this call).

        ``session`` (or an enclosing :meth:`in_transaction`) writes it in the caller's
        transaction instead.
        """
        if session is None:
            scoped = current_session.get()
            if scoped is not None and scoped[0] == id(self):
                session = scoped[1]
        if session is not None:
            try:
                connection = check_same_store(session, self.writer)
                self.pipeline.write_in_transaction([record], connection)
            except StoreError as exc:
                raise AuditWriteError(str(exc)) from exc
            return record
        if mode is None and self._plain_async:
            self.pipeline.submit(record)
            return record
        chosen = self._choose_mode(record, mode)
        if chosen == "async":
            self.pipeline.submit(record)
        elif chosen == "durable":
            self.pipeline.submit_durable(record)
        else:
            self.pipeline.write_now([record])
        return record

    def submit_deferred(self, build: Callable[[], Sequence[AuditRecord]]) -> None:
        """Queue records that the worker builds later by calling ``build()``.

        For capture paths nobody waits on (span processors): in plain ``async`` mode the
        caller's thread only queues ``build``. In any other mode (``sync``, ``durable``,
        mode rules, an open :meth:`in_transaction`) the records are built and submitted
        now, so each keeps its mode's guarantee.
        """
        if not self.enabled:
            return
        if self._plain_async and current_session.get() is None:
            self.pipeline.submit(DeferredRecords(build))
            return
        for record in build():
            self.submit(record)

    @contextmanager
    def in_transaction(self, session: Any) -> Iterator[Any]:
        """Write every record made inside the block in ``session``'s transaction.

        ::

            with Session(engine) as session, session.begin():
                session.add(invoice)
                with trail.in_transaction(session):
                    trail.record("CREATE", resource_type="invoice", ...)
            # audit row and invoice commit together (or neither does)

        ``session`` must use the trail's store; otherwise :class:`ConfigError`.
        """
        check_same_store(session, self.writer)
        token = current_session.set((id(self), session))
        try:
            yield session
        finally:
            current_session.reset(token)

    def action(
        self,
        action: str,
        *,
        mode: str | None = None,
        **fields: Any,
    ) -> ActionScope:
        """Record one entry when the block exits, with its outcome.

        ::

            with trail.action("delete_tool", resource_type="tool", resource_id=tid,
                              user_id=user) as a:
                a.old_values = tool.as_dict()
                delete(tool)

        ``success``/``error_message`` come from the block (an exception sets
        ``success=False`` and propagates unchanged). Attributes set on the scope
        (``a.new_values = ...``) are recorded too.
        """
        return ActionScope(self, action, mode, fields)

    # ------------------------------------------------------------------ lifecycle

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every record submitted so far is committed (or ``timeout``)."""
        return self.pipeline.flush(timeout)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Flush (bounded by ``timeout``) and stop the worker. Idempotent."""
        if self._closed:
            return True
        self._closed = True
        drained = self.pipeline.shutdown(timeout)
        self.seals.close(drained)  # the final seal names only what was committed
        noted = getattr(self.chain, "duplicates", None) if self.chain is not None else None
        if noted is not None:
            noted.close()  # the duplicate check's own connection
        return drained

    def stats(self) -> AuditStats:
        """Counters: enqueued, written, retried, failed, dropped, queue depth.

        ``duplicates`` counts records the store already held (an ``id`` submitted again),
        which ``written`` does not count.
        """
        stats = self.pipeline.stats()
        noted = getattr(self.chain, "duplicates", None) if self.chain is not None else None
        if noted is None or not noted.count:
            return stats
        return dataclasses.replace(stats, written=stats.written - noted.count,
                                   duplicates=noted.count)

    def records(self, **filters: Any) -> list[AuditRecord]:
        """Return stored records, newest first, after flushing this trail's own writes.

        Filters: ``resource_type``, ``resource_id``, ``user_id``, ``action``,
        ``trace_id``, ``start_time``, ``end_time``, ``limit`` (100), ``offset`` (0) and
        ``after`` (keyset pagination: the last record of the previous page).
        """
        self.flush(self.config.shutdown_timeout)
        self.writer.ensure_schema()
        return query_records(self.writer.engine, **filters)


# ---------------------------------------------------------------------- default trail

_default_trail: AuditTrail | None = None
_default_lock = threading.Lock()


def configure(url: str | None = None, *, policy: AuditPolicy | None = None,
              logger_provider: LoggerProvider | None = None,
              exporter: AuditExporter | None = None,
              **settings: Unpack[TrailSettings]) -> AuditTrail:
    """Create the process-wide default trail (replacing and shutting down any previous one).

    Takes :class:`AuditTrail`'s arguments (the settings as typed keywords).
    """
    global _default_trail
    trail = AuditTrail(url, policy=policy, logger_provider=logger_provider, exporter=exporter,
                       **settings)
    with _default_lock:
        previous, _default_trail = _default_trail, trail
    if previous is not None:
        previous.shutdown()
    return trail


def set_trail(trail: AuditTrail | None) -> AuditTrail | None:
    """Install ``trail`` as the default (``None`` clears it); returns the previous one."""
    global _default_trail
    with _default_lock:
        previous, _default_trail = _default_trail, trail
    return previous


def get_trail() -> AuditTrail:
    """Return the default trail, creating it from the environment on first use."""
    global _default_trail
    trail = _default_trail
    if trail is None:
        with _default_lock:
            if _default_trail is None:
                _default_trail = AuditTrail()
            trail = _default_trail
    return trail

