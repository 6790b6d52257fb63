"""The stored shape of a delegation chain: a list of ``{"principal": str, "via": str}``
(the principals a request was delegated through, in order), and what normalisation
makes of any other value given as one (:mod:`otel_audit.normalisation`).
"""

from __future__ import annotations

from typing import Any

from ._jsonsafe import _dumps, _Notes, _safe_repr
from .record_model import _PREVIEW_CHARS

__all__ = ["as_delegation_chain", "conforming_chain"]


#: The keys of the marker the record cap leaves in place of a JSON value too large to keep.
_CAP_MARKER_KEYS = frozenset({"_truncated", "original_bytes", "preview"})


def conforming_chain(value: Any) -> bool:
    """Whether ``value`` is a delegation chain as stored: a list of
    ``{"principal": str, "via": str}`` (exactly these two keys), or the marker the record
    cap leaves in place of a chain too large to keep (``{"_truncated": true, ...}``, so
    normalising a stored record again changes nothing)."""
    if type(value) is not list:
        return (type(value) is dict and value.keys() == _CAP_MARKER_KEYS
                and value.get("_truncated") is True)
    for link in value:
        if (type(link) is not dict or len(link) != 2 or type(link.get("principal")) is not str
                or type(link.get("via")) is not str):
            return False
    return True


def _link_text(value: Any) -> str:
    """One member of a delegation link as a string (total): a JSON-safe value as its
    JSON text, ``None`` as ``""``."""
    if type(value) is str:
        return value
    if value is None:
        return ""
    try:
        return _dumps(value)
    except Exception:  # a JSON-safe value always serialises; guard against a bug
        return _safe_repr(value)


def as_delegation_chain(value: Any, notes: _Notes) -> list[dict[str, str]]:
    """A JSON-safe value that is not a delegation chain, made one (total), noted as
    ``nonconforming`` with the original's JSON text (the first 1,024 characters): a
    non-list is a chain of one link; a link that is not an object is its principal (via
    ``""``); a link's ``principal`` and ``via`` become strings (``""`` if missing), and
    its other keys are dropped (the note keeps them)."""
    try:
        original = _dumps(value)
    except Exception:
        original = _safe_repr(value)
    notes.add("delegation_chain", "nonconforming", original=original[:_PREVIEW_CHARS])
    links = value if type(value) is list else [value]
    out: list[dict[str, str]] = []
    for link in links:
        if type(link) is dict:
            out.append({"principal": _link_text(link.get("principal")),
                        "via": _link_text(link.get("via"))})
        else:
            out.append({"principal": _link_text(link), "via": ""})
    return out
