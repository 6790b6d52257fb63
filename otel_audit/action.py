"""``with trail.action(...) as a:`` — one record when the block exits, with its outcome.

:meth:`AuditTrail.action <otel_audit.trail.AuditTrail.action>` returns an
:class:`ActionScope`; the fields set on it are recorded through the trail's
:meth:`~otel_audit.trail.AuditTrail.record`, ``success``/``error_message`` from the
block.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .errors import AuditWriteError
from .fields import CALLER_FIELDS

if TYPE_CHECKING:
    from .trail import AuditTrail

__all__ = ["ActionScope"]


class ActionScope:
    """The object bound by ``with trail.action(...) as a``; set fields on it to record them."""

    #: the fields a caller sets (otel_audit.fields)
    _FIELDS = CALLER_FIELDS

    def __init__(self, trail: AuditTrail, action: str, mode: str | None,
                 fields: Mapping[str, Any]) -> None:
        unknown = set(fields) - self._FIELDS
        if unknown:
            raise TypeError(f"unknown audit field(s): {', '.join(sorted(unknown))}")
        object.__setattr__(self, "_trail", trail)
        object.__setattr__(self, "_action", action)
        object.__setattr__(self, "_mode", mode)
        object.__setattr__(self, "_fields", dict(fields))
        object.__setattr__(self, "record", None)

    def __getattr__(self, name: str) -> Any:
        fields = object.__getattribute__(self, "_fields")
        if name in ActionScope._FIELDS:
            return fields.get(name)
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._FIELDS:
            raise AttributeError(f"{name!r} is not an audit field")
        self._fields[name] = value

    def __enter__(self) -> ActionScope:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        fields = dict(self._fields)
        if exc is not None:
            fields["success"] = False
            if fields.get("error_message") is None:
                fields["error_message"] = f"{type(exc).__name__}: {exc}"
        try:
            rec = self._trail.record(self._action, mode=self._mode, **fields)
        except AuditWriteError:
            if exc is None:
                raise
            rec = None  # never mask the block's own exception
        object.__setattr__(self, "record", rec)
