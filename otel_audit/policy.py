"""Data classification and review rules, configurable per trail.

The defaults reproduce the seed service: users, teams, tokens and credentials are
confidential; tools, servers, prompts and resources are internal; confidential and
restricted data, the actions in :data:`REVIEW_REQUIRED_ACTIONS` (case-insensitive) and
deletions of tools, servers and gateways require review. An explicit
``requires_review`` always wins.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from .record import DataClassification

__all__ = ["DEFAULT_CLASSIFICATION", "REVIEW_REQUIRED_ACTIONS", "AuditPolicy"]

#: Actions that always require review (compared case-insensitively).
REVIEW_REQUIRED_ACTIONS: frozenset[str] = frozenset(
    {
        "delete_server",
        "delete_tool",
        "delete_resource",
        "delete_gateway",
        "update_sensitive_config",
        "bulk_delete",
    }
)

#: Classification by resource type.
DEFAULT_CLASSIFICATION: Mapping[str, str] = {
    "user": DataClassification.CONFIDENTIAL.value,
    "team": DataClassification.CONFIDENTIAL.value,
    "token": DataClassification.CONFIDENTIAL.value,
    "credential": DataClassification.CONFIDENTIAL.value,
    "tool": DataClassification.INTERNAL.value,
    "server": DataClassification.INTERNAL.value,
    "prompt": DataClassification.INTERNAL.value,
    "resource": DataClassification.INTERNAL.value,
}


def _lower(values: Iterable[str]) -> frozenset[str]:
    return frozenset(v.lower() for v in values)


@dataclass(frozen=True, slots=True)
class AuditPolicy:
    """Rules that classify a record and decide whether it needs review."""

    classification_by_resource_type: Mapping[str, str] = field(
        default_factory=lambda: dict(DEFAULT_CLASSIFICATION)
    )
    review_actions: frozenset[str] = REVIEW_REQUIRED_ACTIONS
    review_classifications: frozenset[str] = frozenset(
        {DataClassification.CONFIDENTIAL.value, DataClassification.RESTRICTED.value}
    )
    review_delete_resource_types: frozenset[str] = frozenset({"tool", "server", "gateway"})
    _decide: Callable[[str | None, str | None], tuple[str | None, bool]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "review_actions", _lower(self.review_actions))
        # the common case (nothing explicit) is a pure function of two strings: cache it
        cached = functools.lru_cache(maxsize=4096)(self._decide_uncached)
        object.__setattr__(self, "_decide", cached)

    def decide(self, action: str | None, resource_type: str | None) -> tuple[str | None, bool]:
        """Return ``(classification, requires_review)`` when neither was given explicitly."""
        return self._decide(action, resource_type)

    def _decide_uncached(self, action: str | None, resource_type: str | None
                         ) -> tuple[str | None, bool]:
        classification = self.classify(resource_type)
        return classification, self.requires_review(action, classification, resource_type)

    def classify(self, resource_type: str | None) -> str | None:
        """Return the classification of ``resource_type`` (``None`` when unknown)."""
        if resource_type is None:
            return None
        return self.classification_by_resource_type.get(resource_type)

    def requires_review(
        self,
        action: str | None,
        data_classification: str | None,
        resource_type: str | None = None,
        explicit: bool | None = None,
    ) -> bool:
        """Decide review: explicit flag > classification > action list > deletions."""
        if explicit is not None:
            return explicit
        if data_classification in self.review_classifications:
            return True
        normalized = (action or "").lower() if isinstance(action, str) else ""
        if normalized in self.review_actions:
            return True
        return normalized == "delete" and resource_type in self.review_delete_resource_types
