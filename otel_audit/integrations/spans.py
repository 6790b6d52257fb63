"""Spans as audit records: :class:`AuditSpanProcessor` and :class:`AuditSampler`.

A span that carries ``audit.action`` becomes one record when it ends; each span event
named ``audit`` becomes one record. Events carrying ``audit.record_id`` are the
back-links the trail adds to the current span (``trail.record()`` inside a span; one per
span by default, see the ``span_backlink`` setting) and are never recorded a second time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, StatusCode
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from .._internal import is_suppressed
from ..mapping import AUDIT_EVENT_NAME, attributes_to_fields
from ..record import AuditRecord
from ..trail import AuditTrail
from ._convert import build_from_fields, resolve_trail

__all__ = ["AuditSampler", "AuditSpanProcessor"]

_ACTION = "audit.action"
_RECORD_ID = "audit.record_id"
# identity and request attributes a span event inherits from its span (who acted, how
# they authenticated and on whose behalf, from where)
_INHERITED = ("user.id", "enduser.id", "user.email", "client.address", "user_agent.original",
              "http.request.method", "url.path", "http.route", "audit.team.id",
              "audit.auth.method", "audit.acting_as", "audit.delegation_chain")


class AuditSpanProcessor(SpanProcessor):
    """Turn audit spans and ``audit`` span events into records when a span ends.

    ``AuditSpanProcessor(trail=None)`` writes to ``trail`` or the default trail.
    Register it with ``tracer_provider.add_span_processor(...)``. Attribute mapping:
    :mod:`otel_audit.mapping`. Span status ERROR gives ``success=False`` and an
    ``error_message`` from the status description or the ``exception`` event, unless
    ``audit.success`` / ``audit.error_message`` say otherwise.
    """

    def __init__(self, trail: AuditTrail | None = None) -> None:
        self._trail = trail

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Nothing to do when a span starts."""

    def on_end(self, span: ReadableSpan) -> None:
        """Record the span and its ``audit`` events (cheap exit for every other span)."""
        attrs = span.attributes
        events = span.events
        is_audit_span = bool(attrs) and _ACTION in attrs  # type: ignore[operator]
        if not is_audit_span and not any(e.name == AUDIT_EVENT_NAME for e in events):
            return
        if is_suppressed():
            return
        trail = resolve_trail(self._trail)
        if not trail.enabled or span.context is None:
            return
        # mapping and building happen on the trail's worker: a ended span is immutable
        trail.submit_deferred(partial(_span_records, trail, span, is_audit_span))

    def shutdown(self) -> None:
        """Flush the trail (the trail itself belongs to the application)."""
        self.force_flush()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Wait until every record submitted so far is committed."""
        return resolve_trail(self._trail).flush(timeout_millis / 1000)


def _span_records(trail: AuditTrail, span: ReadableSpan, is_audit_span: bool
                  ) -> list[AuditRecord]:
    """The records of one ended span: the span itself (if audited) and its audit events."""
    ctx = span.context
    assert ctx is not None
    attrs = span.attributes
    events = span.events
    resource = span.resource.attributes if span.resource is not None else None
    records = []
    if is_audit_span:
        fields = attributes_to_fields(attrs, resource)
        if span.status.status_code is StatusCode.ERROR:
            fields.setdefault("success", False)
            if "error_message" not in fields:
                fields["error_message"] = _error_message(span.status.description, events)
        records.append(build_from_fields(trail, fields, default_action=span.name,
                                         trace_id=ctx.trace_id, span_id=ctx.span_id,
                                         timestamp_ns=span.end_time))
    for event in events:
        event_attrs = event.attributes
        if event.name != AUDIT_EVENT_NAME or (event_attrs and _RECORD_ID in event_attrs):
            continue
        fields = attributes_to_fields(_inherit(attrs, event_attrs), resource)
        records.append(build_from_fields(trail, fields, default_action=span.name,
                                         trace_id=ctx.trace_id, span_id=ctx.span_id,
                                         timestamp_ns=event.timestamp))
    return records


def _error_message(description: str | None, events: Sequence[Any]) -> str | None:
    if description:
        return description
    for event in events:
        if event.name == "exception" and event.attributes:
            message = event.attributes.get("exception.message")
            kind = event.attributes.get("exception.type")
            if message is not None or kind is not None:
                return f"{kind}: {message}" if kind else str(message)
    return None


def _inherit(span_attrs: Attributes, event_attrs: Attributes) -> Mapping[str, Any]:
    merged: dict[str, Any] = {}
    if span_attrs:
        for name in _INHERITED:
            if name in span_attrs:
                merged[name] = span_attrs[name]
    if event_attrs:
        merged.update(event_attrs)
    return merged


class AuditSampler(Sampler):
    """Wrap a sampler so that spans started with ``audit.action`` are never lost.

    When the delegate would drop such a span, the decision becomes ``RECORD_ONLY``: the
    span is recorded (processors, including :class:`AuditSpanProcessor`, see it) but
    not sampled, so trace exporters still leave it out. The attribute must be passed
    when the span starts (``start_as_current_span(name, attributes={...})``): samplers
    never see attributes set later.
    """

    def __init__(self, delegate: Sampler) -> None:
        self.delegate = delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        """The delegate's decision, with DROP turned into RECORD_ONLY for audit spans."""
        result = self.delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )
        if result.decision is Decision.DROP and attributes and _ACTION in attributes:
            # the SDK builds the span's attributes from the result, so pass them on
            return SamplingResult(Decision.RECORD_ONLY, attributes, result.trace_state)
        return result

    def get_description(self) -> str:
        """``AuditSampler{<delegate description>}``."""
        return f"AuditSampler{{{self.delegate.get_description()}}}"
