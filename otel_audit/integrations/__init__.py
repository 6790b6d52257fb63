"""Capture paths: Python logging, OpenTelemetry spans and logs, web request context.

* :mod:`otel_audit.integrations.logging` — :class:`AuditLogHandler` (``extra={"audit": ...}``).
* :mod:`otel_audit.integrations.log_context` — :class:`AuditContextFilter`: the log
  call's context stamped on the record, for a handler behind a ``QueueHandler``.
* :mod:`otel_audit.integrations.spans` — span processor and sampler (public in
  :mod:`otel_audit.otel`).
* :mod:`otel_audit.integrations.otel_logs` — Logs SDK processor and the emitter of
  audit records as OpenTelemetry log records (public in :mod:`otel_audit.otel`).
* :mod:`otel_audit.integrations.asgi` / :mod:`otel_audit.integrations.wsgi` — request
  context middleware.

Every path maps attributes with :mod:`otel_audit.mapping` and hands records to a trail;
none of them talks to the store.
"""
