"""Internal helpers: self-instrumentation suppression and once-only error logging."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from opentelemetry import context as otel_context

__all__ = ["is_suppressed", "log_internal_error", "logger", "suppress_instrumentation"]

#: The library's own diagnostics. Its handlers never capture records from this logger.
logger = logging.getLogger("otel_audit")

_suppressed: ContextVar[bool] = ContextVar("otel_audit_suppressed", default=False)
_SUPPRESS_KEY = "suppress_instrumentation"  # the key OpenTelemetry instrumentations honour


@contextmanager
def suppress_instrumentation() -> Iterator[None]:
    """Mark the current context as otel_audit's own work.

    Capture paths (logging handler, processors) ignore anything produced while this
    is active, and OpenTelemetry instrumentations (SQLAlchemy, HTTP clients) skip it,
    so writing the trail never records itself.
    """
    token = _suppressed.set(True)
    otel_token = otel_context.attach(otel_context.set_value(_SUPPRESS_KEY, True))
    try:
        yield
    finally:
        otel_context.detach(otel_token)
        _suppressed.reset(token)


def is_suppressed() -> bool:
    """Return whether the current context is otel_audit's own work."""
    return _suppressed.get() or bool(otel_context.get_value(_SUPPRESS_KEY))


class _RateLimitedLog:
    """Log the first occurrence of a problem and then at most once per ``interval``."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, level: int, message: str, *args: object,
                 exc_info: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last[key] = now
            skipped = self._suppressed.pop(key, 0)
        if skipped:
            message += f" ({skipped} similar messages suppressed)"
        with suppress_instrumentation():
            logger.log(level, message, *args, exc_info=exc_info)


#: Rate-limited internal logging: ``log_internal_error(key, level, msg, *args)``.
log_internal_error = _RateLimitedLog()
