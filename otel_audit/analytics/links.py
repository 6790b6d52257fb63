"""Links from an audit record to its trace in a trace viewer (``OTEL_AUDIT_TRACE_URL``)."""

from __future__ import annotations

from ..config import resolve_config

__all__ = ["trace_link"]


def trace_link(trace_id: str | None, template: str | None = None) -> str | None:
    """Return ``template`` (default ``OTEL_AUDIT_TRACE_URL``) with ``{trace_id}`` filled in.

    ``None`` when there is no trace ID or no template, e.g. with
    ``OTEL_AUDIT_TRACE_URL=http://jaeger:16686/trace/{trace_id}``.
    """
    if not trace_id:
        return None
    if template is None:
        template = resolve_config().trace_url
    if not template:
        return None
    return template.replace("{trace_id}", trace_id)
