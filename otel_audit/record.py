"""The audit record, its enums, and the normalisation every record goes through.

:class:`AuditRecord` is an immutable, slotted value (a ``NamedTuple``: building one costs
about a microsecond, a frozen dataclass of the same width costs five). The caller's
thread builds it and takes its :func:`snapshot` (plain data copied, values that cannot
change shared, anything else converted there), so later changes to the caller's objects
never reach it; :func:`normalise` runs on the pipeline's worker and turns whatever the
caller passed into something every store accepts: JSON-safe, NUL-free, valid UTF-8, no
longer than its column, no larger than the record cap. Neither raises for any value
(a value whose own code raises becomes a safe string). Every change is written down in
``context["_normalised"]`` so nothing is altered silently. What a value becomes, and the
canonical JSON encoder, are in :mod:`otel_audit._jsonsafe`.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import operator
import uuid
from collections.abc import Callable
from itertools import chain, repeat
from operator import length_hint
from typing import Any, NamedTuple

import orjson
from uuid_utils import uuid7

from ._jsonsafe import (
    _MAX_DEPTH,
    _NUMERIC_KEY,
    _clean_str,
    _dumps,
    _encode,
    _json_safe,
    _json_text,
    _Notes,
    _safe_repr,
    _type_name,
    _utf8_ok,
    json_safe,
)

__all__ = [
    "COLUMN_LIMITS",
    "JSON_FIELDS",
    "NORMALISATION_KEY",
    "SCHEMA_VERSION",
    "AuditAction",
    "AuditRecord",
    "DataClassification",
    "json_safe",
    "normalise",
    "plain_texts",
    "snapshot",
]

#: Version of the record layout written by this release (stored with every row). 2: JSON
#: numbers are kept exactly and the row is hashed under ``otel-audit/2``
#: (``docs/integrity.md``); rows of version 1 keep verifying under ``otel-audit/1``.
SCHEMA_VERSION = 2

#: Key under ``context`` where normalisations of a record are listed.
NORMALISATION_KEY = "_normalised"

#: Maximum length, in characters, of each bounded string column.
COLUMN_LIMITS: dict[str, int] = {
    "id": 36,
    "correlation_id": 64,
    "request_id": 64,
    "trace_id": 32,
    "span_id": 16,
    "action": 100,
    "resource_type": 100,
    "resource_id": 255,
    "resource_name": 500,
    "user_id": 255,
    "user_email": 255,
    "team_id": 36,
    "client_ip": 45,
    "request_path": 500,
    "request_method": 10,
    "data_classification": 50,
    "service_name": 255,
    "acting_as": 255,
}

#: Columns holding JSON documents.
JSON_FIELDS = ("old_values", "new_values", "changes", "context")

#: Unbounded text columns (only the record cap applies).
TEXT_FIELDS = ("user_agent", "error_message")

_PREVIEW_CHARS = 1024
_NO_LIMIT = 1 << 62  # the text columns' length bound (none)


class AuditAction(str, enum.Enum):
    """Audit trail action types (the seed's vocabulary; any string is accepted)."""

    CREATE = "CREATE"
    READ = "READ"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    EXECUTE = "EXECUTE"
    ACCESS = "ACCESS"
    EXPORT = "EXPORT"
    IMPORT = "IMPORT"


class DataClassification(str, enum.Enum):
    """Data classification levels."""

    PUBLIC = "public"
    INTERNAL = "internal"
    CONFIDENTIAL = "confidential"
    RESTRICTED = "restricted"


class AuditRecord(NamedTuple):
    """One audit entry: who did what to which resource, when, from where, with what outcome.

    ``id`` is a time-ordered UUIDv7 (32 hex characters) and the idempotency key of the
    store. ``trace_id``/``span_id`` are the W3C IDs of the span current when the action
    happened; when a trace was active ``correlation_id == trace_id``.
    """

    id: str
    timestamp: dt.datetime
    action: str
    user_id: str
    correlation_id: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    resource_name: str | None = None
    user_email: str | None = None
    team_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    request_path: str | None = None
    request_method: str | None = None
    request_id: str | None = None
    old_values: Any = None
    new_values: Any = None
    changes: Any = None
    data_classification: str | None = None
    requires_review: bool = False
    success: bool = True
    error_message: str | None = None
    context: Any = None
    service_name: str | None = None
    acting_as: str | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a plain ``dict`` (field name to value)."""
        return self._asdict()


# --------------------------------------------------------------------------- normalise


_FIELD_POS = {name: i for i, name in enumerate(AuditRecord._fields)}
_BOUNDED = tuple((_FIELD_POS[name], limit) for name, limit in COLUMN_LIMITS.items())
_TEXT_POS = tuple(_FIELD_POS[name] for name in TEXT_FIELDS)
_JSON_POS = tuple((name, _FIELD_POS[name]) for name in JSON_FIELDS)
_ACTION, _USER_ID, _TIMESTAMP = _FIELD_POS["action"], _FIELD_POS["user_id"], _FIELD_POS["timestamp"]
_REVIEW, _SUCCESS = _FIELD_POS["requires_review"], _FIELD_POS["success"]
_ID, _SCHEMA = _FIELD_POS["id"], _FIELD_POS["schema_version"]
#: The largest schema_version the store's INTEGER column holds.
MAX_SCHEMA_VERSION = 2**31 - 1


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


_DATETIME_PARTS = tuple(
    (dt.date if name in ("year", "month", "day") else dt.datetime).__dict__[name].__get__
    for name in ("year", "month", "day", "hour", "minute", "second", "microsecond"))
_TZINFO_OF = dt.datetime.__dict__["tzinfo"].__get__
_UTC_MIN = dt.datetime.min.replace(tzinfo=dt.UTC)
_UTC_MAX = dt.datetime.max.replace(tzinfo=dt.UTC)


def _utc_timestamp(value: Any, notes: _Notes) -> dt.datetime:
    """The record's timestamp as an aware UTC ``datetime`` (total).

    A naive one is taken as UTC (``assumed_utc``); another offset is converted, and one
    that leaves the years 1-9999 on conversion is clamped to the nearest end
    (``out_of_range``, with the original); anything else is the time of normalisation
    (``invalid``)."""
    if type(value) is dt.datetime and _TZINFO_OF(value) is dt.UTC:
        return value
    try:
        if not isinstance(value, dt.datetime):
            raise TypeError
        exact = value
        if type(value) is not dt.datetime:  # a subclass's overrides are never called
            year, month, day, hour, minute, second, micro = (
                part(value) for part in _DATETIME_PARTS)
            exact = dt.datetime(year, month, day, hour, minute, second, micro,
                                _TZINFO_OF(value))
    except Exception:
        notes.add("timestamp", "invalid", type=_type_name(value))
        return dt.datetime.now(dt.UTC)
    naive = exact.replace(tzinfo=None)
    try:
        offset = dt.datetime.utcoffset(exact)
    except Exception:  # a tzinfo whose utcoffset() raises or is out of range
        notes.add("timestamp", "assumed_utc", reason="utcoffset() failed")
        return naive.replace(tzinfo=dt.UTC)
    if offset is None:
        notes.add("timestamp", "assumed_utc")
        return naive.replace(tzinfo=dt.UTC)
    if not offset:
        return exact if exact is value else naive.replace(tzinfo=dt.UTC)
    try:
        return (naive - offset).replace(tzinfo=dt.UTC)
    except OverflowError:  # datetime(1, 1, 1, tzinfo=+05:00) is in year 0 in UTC
        stored = _UTC_MIN if offset > dt.timedelta(0) else _UTC_MAX
        notes.add("timestamp", "out_of_range", original=_safe_isoformat(exact),
                  stored=stored.isoformat())
        return stored


def _safe_isoformat(value: dt.datetime) -> str:
    try:
        return dt.datetime.isoformat(value)
    except Exception:
        return dt.datetime.isoformat(value.replace(tzinfo=None))


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


# --------------------------------------------------------------------------- snapshot


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
