"""A drop-in ``AuditTrailService`` with the seed service's names, parameters and defaults.

Behaviour kept from the seed: ``None`` when auditing is disabled
(``OTEL_AUDIT_ENABLED=false``); ``details``/``metadata`` nested under ``context``; the
review rules; the UPDATE diff; classification by resource type; ``log_data_access``
records ``READ`` by default; ``log_audit``'s description goes to
``context["description"]``.

The upstream service's later columns ``auth_method``, ``acting_as`` and
``delegation_chain`` are keyword parameters of the same names of :meth:`log_action`
(the other methods pass them through ``**kwargs``, as the seed does).

Defects fixed: every method returns the :class:`~otel_audit.record.AuditRecord` it
recorded; the correlation ID is the trace ID when a trace is active; UPDATE diffs
descend into nested mappings (``{"cfg.timeout": {"old": 1, "new": 2}}``);
``get_audit_trail`` sees the caller's own writes (it flushes first), orders newest
first with ``id`` as a stable tiebreak and offers keyset pagination (``after=``);
``log_audit`` no longer mutates the caller's ``context`` dict.

The ``db`` argument is accepted for compatibility. The seed committed the caller's
session as a side effect; here writes always go through the trail's pipeline, and
``get_audit_trail(db=session)`` reads through that session's connection (so it also
sees rows the session has written but not committed).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from ._internal import log_internal_error
from .errors import AuditWriteError
from .policy import REVIEW_REQUIRED_ACTIONS
from .record import AuditAction, AuditRecord, DataClassification
from .store.reader import query_records
from .trail import AuditTrail, get_trail

__all__ = [
    "REVIEW_REQUIRED_ACTIONS",
    "AuditAction",
    "AuditTrailService",
    "DataClassification",
    "diff_values",
    "get_audit_trail_service",
]

_MISSING = object()


def diff_values(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Return ``{path: {"old": a, "new": b}}`` for every value that differs.

    Nested mappings are compared key by key and reported with dotted paths; a key on
    one side only is reported with ``None`` on the other.
    """
    changes: dict[str, Any] = {}
    for key in sorted(set(old) | set(new), key=str):
        path = f"{prefix}{key}"
        a = old.get(key, _MISSING)
        b = new.get(key, _MISSING)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changes.update(diff_values(a, b, f"{path}."))
        elif a != b:
            changes[path] = {
                "old": None if a is _MISSING else a,
                "new": None if b is _MISSING else b,
            }
    return changes


class AuditTrailService:
    """Service for managing audit trails and compliance logging (seed-compatible)."""

    def __init__(self, trail: AuditTrail | None = None) -> None:
        """Use ``trail``, or the process-wide default trail (:func:`otel_audit.get_trail`)."""
        self._trail = trail

    @property
    def trail(self) -> AuditTrail:
        """The trail this service writes to."""
        return self._trail if self._trail is not None else get_trail()

    def log_action(
        self,
        action: str,
        resource_type: str,
        resource_id: str,
        user_id: str,
        user_email: str | None = None,
        team_id: str | None = None,
        resource_name: str | None = None,
        client_ip: str | None = None,
        user_agent: str | None = None,
        request_path: str | None = None,
        request_method: str | None = None,
        old_values: dict[str, Any] | None = None,
        new_values: dict[str, Any] | None = None,
        changes: dict[str, Any] | None = None,
        data_classification: str | None = None,
        requires_review: bool | None = None,
        success: bool = True,
        error_message: str | None = None,
        context: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        db: Any = None,
        *,
        auth_method: str | None = None,
        acting_as: str | None = None,
        delegation_chain: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> AuditRecord | None:
        """Log an audit trail entry; returns the record, or ``None`` when disabled.

        ``auth_method``: how the caller authenticated; ``acting_as``: the user a service
        acts for; ``delegation_chain``: the principals the caller's authority was
        delegated through, ``[{"principal": ..., "via": ...}, ...]``. Inside a request
        (the middleware's context) each one left out is taken from the request. Other
        keyword arguments (``request_id``) are passed to the record.
        """
        trail = self.trail
        if not trail.enabled:
            return None
        context_payload: dict[str, Any] = dict(context) if context else {}
        if details:
            context_payload["details"] = details
        if metadata:
            context_payload["metadata"] = metadata
        review = self._determine_requires_review(action, data_classification, requires_review)
        try:
            record = trail.build_record(
                action,
                user_id=user_id,
                resource_type=resource_type,
                resource_id=resource_id,
                resource_name=resource_name,
                user_email=user_email,
                team_id=team_id,
                client_ip=client_ip,
                user_agent=user_agent,
                request_path=request_path,
                request_method=request_method,
                old_values=old_values,
                new_values=new_values,
                changes=changes,
                data_classification=data_classification,
                requires_review=review,
                success=success,
                error_message=error_message,
                context=context_payload or None,
                auth_method=auth_method,
                acting_as=acting_as,
                delegation_chain=delegation_chain,
                apply_policy=False,
                **kwargs,
            )
            return trail.submit(record)
        except AuditWriteError:
            raise  # sync mode is fail-closed by choice
        except Exception:
            log_internal_error("compat", logging.ERROR, "failed to log audit trail",
                               exc_info=True)
            return None

    def _determine_requires_review(
        self,
        action: str | None,
        data_classification: str | None,
        requires_review_param: bool | None,
    ) -> bool:
        """Resolve whether an audit entry should require review (explicit flag wins)."""
        return self.trail.policy.requires_review(
            action, data_classification, None, requires_review_param
        )

    def log_crud_operation(
        self,
        operation: str,
        resource_type: str,
        resource_id: str,
        user_id: str,
        user_email: str | None = None,
        team_id: str | None = None,
        resource_name: str | None = None,
        old_values: dict[str, Any] | None = None,
        new_values: dict[str, Any] | None = None,
        success: bool = True,
        error_message: str | None = None,
        db: Any = None,
        **kwargs: Any,
    ) -> AuditRecord | None:
        """Log a CRUD operation with change tracking (UPDATE diff, classification, review)."""
        policy = self.trail.policy
        changes = None
        if operation == "UPDATE" and old_values and new_values:
            changes = diff_values(old_values, new_values)
        data_classification = policy.classify(resource_type)
        requires_review = data_classification == DataClassification.CONFIDENTIAL.value or (
            operation == "DELETE" and resource_type in policy.review_delete_resource_types
        )
        return self.log_action(
            action=operation,
            resource_type=resource_type,
            resource_id=resource_id,
            user_id=user_id,
            user_email=user_email,
            team_id=team_id,
            resource_name=resource_name,
            old_values=old_values,
            new_values=new_values,
            changes=changes,
            data_classification=data_classification,
            requires_review=requires_review,
            success=success,
            error_message=error_message,
            db=db,
            **kwargs,
        )

    def log_data_access(
        self,
        resource_type: str,
        resource_id: str,
        user_id: str,
        access_type: str = "READ",
        user_email: str | None = None,
        team_id: str | None = None,
        resource_name: str | None = None,
        data_classification: str | None = None,
        db: Any = None,
        **kwargs: Any,
    ) -> AuditRecord | None:
        """Log data access (``READ`` by default) for compliance tracking."""
        requires_review = data_classification in (
            DataClassification.CONFIDENTIAL.value,
            DataClassification.RESTRICTED.value,
        )
        return self.log_action(
            action=access_type,
            resource_type=resource_type,
            resource_id=resource_id,
            user_id=user_id,
            user_email=user_email,
            team_id=team_id,
            resource_name=resource_name,
            data_classification=data_classification,
            requires_review=requires_review,
            success=True,
            db=db,
            **kwargs,
        )

    def log_audit(
        self,
        user_id: str,
        resource_type: str,
        resource_id: str,
        action: str,
        user_email: str | None = None,
        description: str | None = None,
        db: Any = None,
        **kwargs: Any,
    ) -> AuditRecord | None:
        """Convenience method: ``description`` goes to ``context["description"]``."""
        context = dict(kwargs.pop("context", None) or {})
        if description:
            context["description"] = description
        return self.log_action(
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            user_id=user_id,
            user_email=user_email,
            context=context or None,
            db=db,
            **kwargs,
        )

    def get_audit_trail(
        self,
        resource_type: str | None = None,
        resource_id: str | None = None,
        user_id: str | None = None,
        action: str | None = None,
        start_time: dt.datetime | None = None,
        end_time: dt.datetime | None = None,
        limit: int = 100,
        offset: int = 0,
        db: Any = None,
        *,
        after: AuditRecord | None = None,
    ) -> list[AuditRecord]:
        """Query entries newest first (``id`` breaks ties); ``after=`` for keyset pages."""
        filters: dict[str, Any] = {
            "resource_type": resource_type,
            "resource_id": resource_id,
            "user_id": user_id,
            "action": action,
            "start_time": start_time,
            "end_time": end_time,
            "limit": limit,
            "offset": offset,
            "after": after,
        }
        if db is None:
            return self.trail.records(**filters)
        self.trail.flush(self.trail.config.shutdown_timeout)
        return query_records(db.connection(), **filters)


_audit_trail_service: AuditTrailService | None = None


def get_audit_trail_service() -> AuditTrailService:
    """Get or create the singleton service (writing to the default trail)."""
    global _audit_trail_service
    if _audit_trail_service is None:
        _audit_trail_service = AuditTrailService()
    return _audit_trail_service
