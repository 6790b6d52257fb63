"""Normalisation: what every record goes through on the pipeline's worker before a
store sees it (:func:`normalise`), and the batch fast path for records that need none
(:func:`plain_texts`). Public through :mod:`otel_audit.record`.
"""

from __future__ import annotations

import datetime as dt
import enum
import operator
from collections.abc import Callable
from itertools import chain, repeat
from operator import length_hint
from typing import Any

import orjson
from uuid_utils import uuid7

from ._jsonsafe import (
    _NUMERIC_KEY,
    _TZINFO_OF,
    _clean_str,
    _dumps,
    _encode,
    _json_text,
    _Notes,
    _safe_repr,
    _type_name,
    _utc_timestamp,
    _utf8_ok,
)
from .delegation import as_delegation_chain, conforming_chain
from .record_model import (
    _ACTION,
    _BOUNDED,
    _FIELD_POS,
    _ID,
    _JSON_POS,
    _NO_LIMIT,
    _PREVIEW_CHARS,
    _REVIEW,
    _SCHEMA,
    _SUCCESS,
    _TEXT_POS,
    _TIMESTAMP,
    _USER_ID,
    COLUMN_LIMITS,
    JSON_FIELDS,
    MAX_SCHEMA_VERSION,
    NORMALISATION_KEY,
    SCHEMA_VERSION,
    TEXT_FIELDS,
    AuditRecord,
)

__all__ = ["normalise", "plain_texts"]

_DELEGATION = _FIELD_POS["delegation_chain"]
_DELEGATION_OF = operator.itemgetter(_DELEGATION)


def _fast_texts(record: AuditRecord, cap: int) -> dict[str, str | None] | None:
    """JSON texts of a record that needs no normalisation, or ``None`` (take the slow path).

    The common case — short ASCII/UTF-8 strings, plain JSON data, an aware UTC
    timestamp — is checked with a handful of C-level operations per record.
    """
    parts: list[str] = []
    for pos, limit in _BOUNDED:
        value = record[pos]
        if value is None:
            continue
        if type(value) is not str or len(value) > limit:
            return None
        parts.append(value)
    if not record[_ACTION] or not record[_USER_ID] or not record[_ID]:
        return None
    schema = record[_SCHEMA]
    if type(schema) is not int or not 0 <= schema <= MAX_SCHEMA_VERSION:
        return None
    for pos in _TEXT_POS:
        value = record[pos]
        if value is not None:
            if type(value) is not str:
                return None
            parts.append(value)
    if type(record[_REVIEW]) is not bool or type(record[_SUCCESS]) is not bool:
        return None
    ts = record[_TIMESTAMP]
    if type(ts) is not dt.datetime or ts.tzinfo is not dt.UTC:
        return None
    delegation = record[_DELEGATION]
    if delegation is not None and not conforming_chain(delegation):
        return None
    texts: dict[str, str | None] = {}
    for name, pos in _JSON_POS:
        value = record[pos]
        if value is None:
            texts[name] = None
            continue
        if type(value) is not dict and type(value) is not list:
            return None
        try:
            text = _dumps(value)
        except Exception:  # the slow path says what is wrong
            return None
        if _NUMERIC_KEY.search(text):
            return None
        texts[name] = text
        parts.append(text)
    joined = "".join(parts)
    if "\x00" in joined or "\\u0000" in joined:
        return None
    if not joined.isascii() and not _utf8_ok(joined):
        return None
    if len(joined) + 2048 > cap // 4 and len(joined.encode("utf-8")) + 2048 > cap:
        return None
    return texts


_compiled_plain_texts: Callable[..., list[dict[str, str | None]] | None] | None
try:  # the compiled form of plain_texts (optional: built where a C compiler is)
    from ._accel import plain_texts as _compiled_plain_texts
except ImportError:  # pragma: no cover - depends on the build
    _compiled_plain_texts = None

#: orjson.dumps options giving the canonical text (the compiled plain_texts uses orjson
#: only for trees of str, int, bool and None, where its bytes are the stdlib encoder's)
_ORJSON_TEXT = (orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_SUBCLASS
                | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS)
_STR_OR_NONE = frozenset({str, type(None)})
_JSON_TYPES = frozenset({dict, list, type(None)})
_TZINFO = operator.attrgetter("tzinfo")
_STRING_POS = tuple(pos for pos, _ in _BOUNDED) + _TEXT_POS


def plain_texts(records: list[AuditRecord], cap: int = 65536, *,
                compiled: bool = True) -> list[dict[str, str | None]] | None:
    """The JSON texts of a batch in which no record needs normalising, else ``None``.

    The check of :func:`normalise`'s fast path over a whole batch — in compiled code
    when the extension is built, else column by column with C-level ``map``/``zip``
    passes: for each record the texts are exactly what ``normalise(record)`` returns
    (the tests compare both paths with it). ``None`` only means "normalise record by
    record".
    """
    if not records:
        return []
    delegations = list(map(_DELEGATION_OF, records))
    if any(map(operator.is_not, delegations, repeat(None))) and not all(
            v is None or conforming_chain(v) for v in delegations):
        return None  # normalise() makes a delegation chain conform, with a note
    if compiled and _compiled_plain_texts is not None:
        try:
            return _compiled_plain_texts(list(records), cap, _BOUNDED, _TEXT_POS, _JSON_POS,
                                         _encode, dt.UTC, orjson.dumps, _ORJSON_TEXT)
        except Exception:  # a value's own code ran (a str subclass's __lt__): record by record
            return None
    try:
        return _python_plain_texts(records, cap)
    except Exception:
        return None


def _python_plain_texts(records: list[AuditRecord], cap: int) -> list[dict[str, str | None]] | None:
    """:func:`plain_texts` with C-level passes over columns (no compiled module)."""
    columns = list(zip(*records, strict=True))
    longest = 0  # the longest value of each field, added up: a bound on any record's size
    for pos, limit in _BOUNDED:
        column = columns[pos]
        if not _STR_OR_NONE.issuperset(map(type, column)):
            return None
        most = max(map(len, filter(None, column)), default=0)
        if most > limit:
            return None
        longest += most
    if not all(columns[_ACTION]) or not all(columns[_USER_ID]) or not all(columns[_ID]):
        return None
    schemas = columns[_SCHEMA]
    if ({int} != set(map(type, schemas)) or min(schemas) < 0
            or max(schemas) > MAX_SCHEMA_VERSION):
        return None
    for pos in _TEXT_POS:
        if not _STR_OR_NONE.issuperset(map(type, columns[pos])):
            return None
        longest += max(map(len, filter(None, columns[pos])), default=0)
    if {bool} != set(map(type, columns[_REVIEW])) or {bool} != set(map(type, columns[_SUCCESS])):
        return None
    stamps = columns[_TIMESTAMP]
    if {dt.datetime} != set(map(type, stamps)) or {dt.UTC} != set(map(_TZINFO, stamps)):
        return None
    json_columns: list[list[str | None]] = []
    for _name, pos in _JSON_POS:
        column = columns[pos]
        if not _JSON_TYPES.issuperset(map(type, column)):
            return None
        try:
            if None not in column:
                texts: list[str | None] = list(map("".join, map(_encode, column, repeat(0))))
            elif column.count(None) == len(column):
                texts = [None] * len(column)
            else:
                texts = [None if value is None else _dumps(value) for value in column]
        except Exception:  # TypeError, ValueError, RecursionError, a key's own __lt__
            return None
        json_columns.append(texts)
        longest += max(map(len, filter(None, texts)), default=0)
    documents = "\x1e".join(filter(None, chain.from_iterable(json_columns)))
    if _NUMERIC_KEY.search(documents):
        return None
    strings = "".join(filter(None, chain.from_iterable(columns[pos] for pos in _STRING_POS)))
    for text in (documents, strings):
        if "\x00" in text or "\\u0000" in text or not (text.isascii() or _utf8_ok(text)):
            return None
    if longest + 2048 > cap // 4:  # not every record surely fits: add up each one's
        sizes = map(sum, zip(*(map(length_hint, c) for c in (*json_columns, *(
            columns[pos] for pos in _STRING_POS))), strict=True))
        if max(sizes) + 2048 > cap // 4:
            return None  # large records: the exact (byte) check of normalise()
    return list(map(dict, map(zip, repeat(JSON_FIELDS), zip(*json_columns, strict=True))))


def normalise(
    record: AuditRecord, *, max_record_bytes: int = 65536
) -> tuple[AuditRecord, dict[str, str | None]]:
    """Return ``(record as it will be stored, JSON text of each JSON field)``.

    Never raises, whatever the fields hold. Every change is listed under
    ``context["_normalised"]`` as ``{"field", "kind", ...}`` entries.
    """
    try:
        fast = _fast_texts(record, max_record_bytes)
    except Exception:  # a value's own code ran (a str subclass's __lt__): the slow path
        fast = None
    if fast is not None:
        return record, fast
    try:
        return _normalise(record, max_record_bytes)
    except Exception:  # every step of _normalise is total; this only guards against a bug
        return _salvage(record)


def _normalise(record: AuditRecord, cap: int) -> tuple[AuditRecord, dict[str, str | None]]:
    notes = _Notes()
    changes: dict[str, Any] = {}

    for field, limit in COLUMN_LIMITS.items():
        value = record[_FIELD_POS[field]]
        if value is None:
            continue
        cleaned = _clean_str(_column_text(field, value, notes), notes, field)
        if len(cleaned) > limit:
            notes.add(field, "truncated", original_length=len(cleaned), limit=limit)
            cleaned = cleaned[:limit]
        if cleaned is not value:
            changes[field] = cleaned

    for field in ("id", "action", "user_id"):
        value = changes.get(field, record[_FIELD_POS[field]])
        if value is None or value == "":  # a str (or None) by now
            stored = uuid7().hex if field == "id" else "unknown"
            notes.add(field, "missing", stored=stored)
            changes[field] = stored

    for field in TEXT_FIELDS:
        value = record[_FIELD_POS[field]]
        if value is None:
            continue
        cleaned = _clean_str(_column_text(field, value, notes), notes, field)
        if cleaned is not value:
            changes[field] = cleaned

    for field in ("requires_review", "success"):
        value = record[_FIELD_POS[field]]
        flag = _flag(field, value, notes)
        if flag is not value:
            changes[field] = flag

    timestamp = _utc_timestamp(record.timestamp, notes)
    if timestamp is not record.timestamp:
        changes["timestamp"] = timestamp

    version = _schema_version(record.schema_version, notes)
    if version is not record.schema_version:
        changes["schema_version"] = version

    texts: dict[str, str | None] = {}
    values: dict[str, Any] = {}
    for field in JSON_FIELDS:
        value = record[_FIELD_POS[field]]
        if value is None:
            texts[field] = None
            values[field] = None
            continue
        safe, text = _json_text(value, notes, field)
        if field == "delegation_chain" and not conforming_chain(safe):
            safe = as_delegation_chain(safe, notes)
            text = _dumps(safe)
        values[field] = safe
        texts[field] = text
        if safe is not value:
            changes[field] = safe

    # notes made earlier (by the snapshot at the call) are set aside: a context the cap
    # replaces keeps them
    prior: list[Any] | None = None
    context = values["context"]
    if type(context) is dict and type(context.get(NORMALISATION_KEY)) is list:
        prior = context[NORMALISATION_KEY]
        values["context"] = {k: v for k, v in context.items() if k != NORMALISATION_KEY}
        texts["context"] = _dumps(values["context"])

    _apply_cap(record, changes, values, texts, notes, cap)

    if notes.items or notes.omitted or prior is not None:
        context = _with_notes(values["context"], notes, prior)
        changes["context"] = context
        texts["context"] = _dumps(context)

    if changes:
        record = record._replace(**changes)
    return record, texts


def _with_notes(context: Any, notes: _Notes, earlier: list[Any] | None = None
                ) -> dict[str, Any]:
    """``context`` with ``notes`` added to its ``_normalised`` list, after ``earlier``
    ones (a context that is not a dict is kept under ``"value"``; notes already in it
    are kept)."""
    out: dict[str, Any] = (dict(context) if type(context) is dict
                           else {} if context is None else {"value": context})
    prior = out.get(NORMALISATION_KEY, earlier)
    if type(prior) is list:
        earlier = [*prior]
    elif prior is None:
        earlier = []
    else:  # something else under the key: kept, as a note
        earlier = [{"field": f"context.{NORMALISATION_KEY}", "kind": "kept", "value": prior}]
    out[NORMALISATION_KEY] = earlier + notes.finished()
    return out


def _column_text(field: str, value: Any, notes: _Notes) -> str:
    """A string column's value as a ``str`` (total). An enum is stored as its value
    without a note (``AuditAction.CREATE`` is expected input); anything else that is
    not a string becomes its ``repr``, noted as ``converted``."""
    if type(value) is str:
        return value
    try:
        if isinstance(value, enum.Enum):
            inner = value.value
            return inner if type(inner) is str else str(inner)
        if isinstance(value, str):
            return str.__str__(value)
    except Exception:  # an enum whose value's __str__ raises, a hostile __class__
        pass
    notes.add(field, "converted", type=_type_name(value))
    return _safe_repr(value)


def _flag(field: str, value: Any, notes: _Notes) -> bool:
    """``success`` / ``requires_review`` as a bool (total). ``None`` is the field's
    default; a value whose truth cannot be read is stored as the cautious answer
    (``success=False``, ``requires_review=True``), noted as ``unrepresentable``."""
    if value is True or value is False:
        return value
    if value is None:
        stored = field == "success"
    else:
        try:
            stored = bool(value)
        except Exception:  # __bool__ / __len__ raised or returned a non-bool
            stored = field == "requires_review"
            notes.add(field, "unrepresentable", type=_type_name(value), stored=stored)
            return stored
    notes.add(field, "converted", type=_type_name(value), stored=stored)
    return stored


def _schema_version(value: Any, notes: _Notes) -> int:
    """``schema_version`` as an int the store's column holds; otherwise this release's
    version (``invalid``)."""
    if type(value) is int and 0 <= value <= MAX_SCHEMA_VERSION:
        return value
    notes.add("schema_version", "invalid", type=_type_name(value), stored=SCHEMA_VERSION)
    return SCHEMA_VERSION


def _salvage(record: Any) -> tuple[AuditRecord, dict[str, str | None]]:
    """The record kept when normalisation itself failed (a bug, never bad input): its
    plain string fields, a fresh timestamp where its own is unusable, no JSON values,
    and a note saying so. Nothing here runs a value's own code."""
    fields: dict[str, Any] = {}
    for name, pos in _FIELD_POS.items():
        try:
            value = record[pos]
        except Exception:
            value = None
        if (name in COLUMN_LIMITS or name in TEXT_FIELDS) and type(value) is str:
            fields[name] = _clean_str(value, None, name)[:COLUMN_LIMITS.get(name, _NO_LIMIT)]
    fields.setdefault("id", uuid7().hex)
    fields.setdefault("action", "unknown")
    fields.setdefault("user_id", "unknown")
    stamp = record[_TIMESTAMP] if len(record) > _TIMESTAMP else None
    if type(stamp) is not dt.datetime or _TZINFO_OF(stamp) is not dt.UTC:
        stamp = dt.datetime.now(dt.UTC)
    context = {NORMALISATION_KEY: [{"field": "*", "kind": "salvaged"}]}
    stored = AuditRecord(timestamp=stamp, context=context, **fields)
    texts: dict[str, str | None] = dict.fromkeys(JSON_FIELDS)
    texts["context"] = _dumps(context)
    return stored, texts



def _apply_cap(
    record: AuditRecord,
    changes: dict[str, Any],
    values: dict[str, Any],
    texts: dict[str, str | None],
    notes: _Notes,
    cap: int,
) -> None:
    """Shrink the largest JSON/text fields until the record fits in ``cap`` bytes."""
    sizes: dict[str, int] = {}
    total = 0
    for field in JSON_FIELDS:
        text = texts[field]
        if text is not None:
            sizes[field] = len(text)
    for field in TEXT_FIELDS:
        value = changes.get(field, getattr(record, field))
        if value is not None:
            sizes[field] = len(value)
    total = sum(sizes.values()) + 2048  # bounded columns: at most ~2 KiB together
    if total * 4 <= cap:  # even all-4-byte UTF-8 fits
        return
    for field in sizes:
        if field in JSON_FIELDS:
            source = texts[field]
        else:
            source = changes.get(field, getattr(record, field))
        sizes[field] = len(str(source).encode("utf-8"))
    total = sum(sizes.values()) + 2048
    for field in sorted(sizes, key=lambda f: sizes[f], reverse=True):
        if total <= cap:
            break
        original = sizes[field]
        if field in JSON_FIELDS:
            preview = (texts[field] or "")[:_PREVIEW_CHARS]
            marker = {"_truncated": True, "original_bytes": original, "preview": preview}
            values[field] = marker
            texts[field] = _dumps(marker)
            changes[field] = marker
            new_size = len(texts[field].encode("utf-8"))  # type: ignore[union-attr]
        else:
            keep = max(0, original - (total - cap))
            text = str(changes.get(field, getattr(record, field)))
            cut = text.encode("utf-8")[:keep].decode("utf-8", "ignore")
            changes[field] = cut
            new_size = len(cut.encode("utf-8"))
        notes.add(field, "record_truncated", original_bytes=original, cap=cap)
        total -= original - new_size


