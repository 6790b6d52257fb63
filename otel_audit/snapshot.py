"""The call's snapshot: a record as it was when the caller made it, whatever the caller
changes afterwards (:func:`snapshot`; public through :mod:`otel_audit.record`).
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import operator
import uuid
from typing import Any

from ._jsonsafe import (
    _MAX_DEPTH,
    _json_safe,
    _Notes,
    _utc_timestamp,
)
from .normalisation import _column_text, _flag, _schema_version, _with_notes
from .record_model import (
    _FIELD_POS,
    _JSON_POS,
    _REVIEW,
    _SCHEMA,
    _SUCCESS,
    _TIMESTAMP,
    COLUMN_LIMITS,
    TEXT_FIELDS,
    AuditRecord,
)

__all__ = ["SNAPSHOT_ATOMS", "copy_plain", "snapshot"]

class _NotPlain(Exception):
    """A value :func:`_copy_plain` does not copy (the snapshot converts it instead)."""


#: Types whose instances cannot change after the call: a snapshot shares them. (The
#: compiled snapshot takes the same set; str subclasses and enum members count too.)
SNAPSHOT_ATOMS: frozenset[type] = frozenset({
    str, int, float, bool, type(None), bytes, complex, dt.datetime, dt.date, dt.time,
    dt.timedelta, dt.timezone, decimal.Decimal, uuid.UUID,
})
_STR_KEYS = frozenset({str})
_COLUMN_POS = tuple((name, _FIELD_POS[name]) for name in (*COLUMN_LIMITS, *TEXT_FIELDS))
_JSON_SET = frozenset(pos for _, pos in _JSON_POS)
#: every field but the JSON ones, in one C-level pass
_NOT_JSON = operator.itemgetter(*(pos for pos in range(len(AuditRecord._fields))
                                  if pos not in _JSON_SET))


def _snapshot_atom(value: object) -> bool:
    kind = type(value)
    try:
        # issubclass on the types: isinstance() would ask the value for its __class__
        return (kind in SNAPSHOT_ATOMS or issubclass(kind, str)
                or issubclass(type(kind), enum.EnumType))
    except Exception:  # a metaclass whose __hash__ or __eq__ raises
        return False


def _all_atoms(values: Any) -> bool:
    """Whether every value's type is one of SNAPSHOT_ATOMS (one C-level pass)."""
    try:
        return SNAPSHOT_ATOMS.issuperset(map(type, values))
    except Exception:  # a metaclass whose __hash__ or __eq__ raises
        return False


def _copy_plain(value: Any, depth: int) -> Any:
    """A copy of plain data (exact dict with str keys, list, tuple) sharing its atoms;
    :class:`_NotPlain` for anything else or nesting deeper than normalise keeps."""
    kind = type(value)
    if kind is dict:
        if depth >= _MAX_DEPTH:
            raise _NotPlain
        out = dict(value)  # one C call: another thread cannot change it half-way
        if _STR_KEYS.issuperset(map(type, out)) and _all_atoms(out.values()):
            return out  # flat: the copy is the snapshot
        for key, item in out.items():
            if type(key) is not str:
                raise _NotPlain
            out[key] = _copy_plain(item, depth + 1)
        return out
    if kind is list or kind is tuple:
        if depth >= _MAX_DEPTH:
            raise _NotPlain
        items = list(value)
        copies = [_copy_plain(item, depth + 1) for item in items]
        if kind is list:
            return copies
        same = all(map(operator.is_, copies, items))
        return value if same else tuple(copies)
    if _snapshot_atom(value):
        return value
    raise _NotPlain


def snapshot(record: AuditRecord) -> AuditRecord:
    """The record as it was at the call, whatever the caller changes afterwards.

    Runs on the caller's thread (:meth:`~otel_audit.trail.AuditTrail.build_record`).
    Values that cannot change are shared (strings, numbers, datetimes, ``Decimal``,
    ``UUID``, enum members); plain JSON data (dicts with ``str`` keys, lists, tuples)
    is copied; anything else is converted now, as :func:`normalise` would convert it on
    the worker (``json_safe`` for JSON fields, ``repr`` for columns, the truth of
    ``success``), with the same notes, kept in ``context["_normalised"]``. Never raises.
    """
    try:
        return _snapshot(record)
    except Exception:  # every conversion is total; only a bug lands here, and then the
        return record  # record goes as it is (normalise on the worker still takes it)


def _snapshot(record: AuditRecord) -> AuditRecord:
    notes = _Notes()
    changes: dict[str, Any] = {}
    for name, pos in _JSON_POS:
        value = record[pos]
        if _snapshot_atom(value):
            continue
        try:
            copied = _copy_plain(value, 0)
        except Exception:  # _NotPlain, RecursionError: converted now
            copied = _json_safe(value, notes, name, 0, set())
        if copied is not value:
            changes[name] = copied
    if (not notes.items and _all_atoms(_NOT_JSON(record))
            and type(record[_TIMESTAMP]) is dt.datetime):  # the common record: done
        if not changes:
            return record
        values = list(record)
        for name, copied in changes.items():
            values[_FIELD_POS[name]] = copied
        return tuple.__new__(type(record), values)
    for name, pos in _COLUMN_POS:
        value = record[pos]
        if not _snapshot_atom(value):
            changes[name] = _column_text(name, value, notes)
    for name, pos in (("requires_review", _REVIEW), ("success", _SUCCESS)):
        value = record[pos]
        if not _snapshot_atom(value):
            changes[name] = _flag(name, value, notes)
    if type(record[_TIMESTAMP]) is not dt.datetime:
        changes["timestamp"] = _utc_timestamp(record[_TIMESTAMP], notes)
    if not _snapshot_atom(record[_SCHEMA]):
        changes["schema_version"] = _schema_version(record[_SCHEMA], notes)
    if notes.items:
        changes["context"] = _with_notes(changes.get("context", record.context), notes)
    return record._replace(**changes) if changes else record


#: Plain data copied as the snapshot copies it (the logging context uses it too).
copy_plain = _copy_plain
