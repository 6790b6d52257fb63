"""The audit record, its enums, and the normalisation every record goes through.

:class:`AuditRecord` is an immutable, slotted value (a ``NamedTuple``: building one costs
about a microsecond, a frozen dataclass of the same width costs five). The caller's
thread only builds it; :func:`normalise` runs on the pipeline's worker and turns
whatever the caller passed into something every store accepts: JSON-safe, NUL-free,
valid UTF-8, no longer than its column, no larger than the record cap. Every change it
makes is written down in ``context["_normalised"]`` so nothing is altered silently.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import json
import math
import operator
import re
import uuid
from collections.abc import Callable, Mapping
from itertools import chain, repeat
from json.encoder import c_encode_basestring, c_make_encoder  # type: ignore[attr-defined]
from operator import length_hint
from typing import Any, NamedTuple

import orjson

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

_MAX_DEPTH = 32
_PREVIEW_CHARS = 1024
_REPLACEMENT = "\ufffd"


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


# --------------------------------------------------------------------------- JSON safety


class _Notes:
    """Collects the normalisations applied to one record."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, field: str, kind: str, **detail: Any) -> None:
        self.items.append({"field": field, "kind": kind, **detail})


def _clean_str(value: str, notes: _Notes | None, path: str) -> str:
    """Replace NUL characters and lone surrogates (PostgreSQL rejects both)."""
    if "\x00" in value:
        value = value.replace("\x00", _REPLACEMENT)
        if notes is not None:
            notes.add(path, "nul_replaced")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = _replace_surrogates(value)
            if notes is not None:
                notes.add(path, "surrogate_replaced")
    return value


def _replace_surrogates(value: str) -> str:
    return "".join(_REPLACEMENT if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in value)


def _safe_repr(value: object) -> str:
    try:
        text = repr(value)
    except Exception:  # any user __repr__ may raise; the record must survive it
        return f"<unrepresentable {type(value).__name__}>"
    return text if isinstance(text, str) else f"<unrepresentable {type(value).__name__}>"


def json_safe(value: Any, notes: _Notes | None = None, path: str = "$") -> Any:
    """Return a JSON-safe copy of ``value`` following the documented normalisation.

    ================================  ===========================================
    input                             stored as
    ================================  ===========================================
    ``str``                           itself; NUL and lone surrogates -> U+FFFD
    ``float`` NaN / +-Infinity        the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``
    ``datetime`` / ``date`` / ``time`` ISO 8601 string
    ``Decimal``, ``UUID``             ``str(value)``
    ``bytes`` / ``bytearray``         base64 string
    ``set`` / ``frozenset``           list (sorted when the items allow it)
    ``tuple`` / ``list``              list
    ``Enum``                          its value
    mapping                           dict with ``str`` keys
    dataclass                         dict of its fields
    anything else                     ``repr(value)`` (or ``<unrepresentable T>``)
    cycles / depth > 32               ``"<cycle>"`` / ``"<max depth>"``
    ================================  ===========================================
    """
    return _json_safe(value, notes, path, 0, set())


def _json_safe(value: Any, notes: _Notes | None, path: str, depth: int, seen: set[int]) -> Any:
    if value is None or isinstance(value, bool | int):
        if isinstance(value, enum.Enum):  # IntEnum / IntFlag
            return value.value
        return value
    if isinstance(value, str):
        if isinstance(value, enum.Enum):
            value = value.value
        return _clean_str(value, notes, path)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        text = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        if notes is not None:
            notes.add(path, "non_finite_float", stored=text)
        return text
    if depth >= _MAX_DEPTH:
        if notes is not None:
            notes.add(path, "max_depth")
        return "<max depth>"
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        marker = id(value)
        if marker in seen:
            if notes is not None:
                notes.add(path, "cycle")
            return "<cycle>"
        seen.add(marker)
        try:
            return _container(value, notes, path, depth, seen)
        finally:
            seen.discard(marker)
    converted: Any
    kind = "converted"
    if isinstance(value, dt.datetime | dt.date | dt.time):
        converted = value.isoformat()
    elif isinstance(value, decimal.Decimal | uuid.UUID):
        converted = str(value)
    elif isinstance(value, bytes | bytearray | memoryview):
        converted = base64.b64encode(bytes(value)).decode("ascii")
    elif isinstance(value, enum.Enum):
        return _json_safe(value.value, notes, path, depth + 1, seen)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        try:
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        except Exception:
            converted, kind = _safe_repr(value), "repr"
        else:
            if notes is not None:
                notes.add(path, "converted", type=type(value).__name__)
            return _json_safe(fields, notes, path, depth + 1, seen)
    else:
        converted, kind = _clean_str(_safe_repr(value), None, path), "repr"
    if notes is not None:
        notes.add(path, kind, type=type(value).__name__)
    return converted


def _container(value: Any, notes: _Notes | None, path: str, depth: int, seen: set[int]) -> Any:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        try:
            items = list(value.items())
        except Exception:
            if notes is not None:
                notes.add(path, "repr", type=type(value).__name__)
            return _safe_repr(value)
        for key, item in items:
            if isinstance(key, str):
                skey = _clean_str(key, notes, f"{path}.<key>")
            else:
                plain = isinstance(key, int | float | bool) or key is None
                skey = _clean_str(json.dumps(key) if plain else _safe_repr(key), None, path)
                if notes is not None:
                    notes.add(f"{path}.{skey}", "key_converted", type=type(key).__name__)
            out[skey] = _json_safe(item, notes, f"{path}.{skey}", depth + 1, seen)
        return out
    items_list = list(value)
    if isinstance(value, set | frozenset):
        if notes is not None:
            notes.add(path, "converted", type=type(value).__name__)
        try:
            items_list = sorted(items_list)
        except TypeError:
            items_list = sorted(items_list, key=_safe_repr)
    return [_json_safe(item, notes, f"{path}[{i}]", depth + 1, seen)
            for i, item in enumerate(items_list)]


def _reject(value: object) -> Any:
    raise TypeError(type(value).__name__)


# Stored JSON is canonical: compact, UTF-8, keys sorted. The integrity chain hashes this
# text as it is (see docs/integrity.md), so it must equal what parsing and re-encoding
# it would give; non-string keys would sort differently once they are strings, so a
# text with a key that looks numeric is rebuilt through json_safe (string keys first).
_NUMERIC_KEY = re.compile(r'[{,]"-?[0-9]')

if c_make_encoder is not None:
    # one C encoder for the process: JSONEncoder.encode() builds a new one per call
    _c_encoder = c_make_encoder(None, _reject, c_encode_basestring, None, ":", ",",
                                True, False, False)

    _encode = _c_encoder

    def _dumps(value: Any) -> str:
        return "".join(_c_encoder(value, 0))
else:  # pragma: no cover - CPython always ships the C accelerator
    _ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                                sort_keys=True)

    def _dumps(value: Any) -> str:
        return _ENCODER.encode(value)

    def _encode(value: Any, _level: int) -> tuple[str]:
        return (_ENCODER.encode(value),)


def _json_text(value: Any, notes: _Notes, field: str) -> tuple[Any, str]:
    """Serialise one JSON field: fast path for plain data, full walk otherwise."""
    try:
        text = _dumps(value)
    except (TypeError, ValueError, RecursionError):
        pass
    else:
        clean = "\x00" not in text and "\\u0000" not in text and not _NUMERIC_KEY.search(text)
        if clean and (text.isascii() or _utf8_ok(text)) and isinstance(
            value, dict | list | str | int | float | bool
        ):
            return value, text
    safe = _json_safe(value, notes, field, 0, set())
    return safe, _dumps(safe)


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --------------------------------------------------------------------------- normalise


_FIELD_POS = {name: i for i, name in enumerate(AuditRecord._fields)}
_BOUNDED = tuple((_FIELD_POS[name], limit) for name, limit in COLUMN_LIMITS.items())
_TEXT_POS = tuple(_FIELD_POS[name] for name in TEXT_FIELDS)
_JSON_POS = tuple((name, _FIELD_POS[name]) for name in JSON_FIELDS)
_ACTION, _USER_ID, _TIMESTAMP = _FIELD_POS["action"], _FIELD_POS["user_id"], _FIELD_POS["timestamp"]
_REVIEW, _SUCCESS = _FIELD_POS["requires_review"], _FIELD_POS["success"]


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
    if not record[_ACTION] or not record[_USER_ID]:
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
        except (TypeError, ValueError, RecursionError):
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
    from ._speedups import plain_texts as _compiled_plain_texts
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
        return _compiled_plain_texts(list(records), cap, _BOUNDED, _TEXT_POS, _JSON_POS,
                                     _encode, dt.UTC, orjson.dumps, _ORJSON_TEXT)
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
    if not all(columns[_ACTION]) or not all(columns[_USER_ID]):
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
        except (TypeError, ValueError, RecursionError):
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

    Never raises for any field value. Every change is listed under
    ``context["_normalised"]`` as ``{"field", "kind", ...}`` entries.
    """
    fast = _fast_texts(record, max_record_bytes)
    if fast is not None:
        return record, fast
    notes = _Notes()
    changes: dict[str, Any] = {}

    for field, limit in COLUMN_LIMITS.items():
        value = getattr(record, field)
        if value is None:
            continue
        if isinstance(value, enum.Enum):  # AuditAction.CREATE and friends: expected input
            value = str(value.value)
            changes[field] = value
        elif not isinstance(value, str):
            value = _safe_repr(value)
            notes.add(field, "converted", type=type(getattr(record, field)).__name__)
            changes[field] = value
        cleaned = _clean_str(value, notes, field)
        if len(cleaned) > limit:
            notes.add(field, "truncated", original_length=len(cleaned), limit=limit)
            cleaned = cleaned[:limit]
        if cleaned is not value or field in changes:
            changes[field] = cleaned

    for field in ("action", "user_id"):
        if not getattr(record, field) and field not in changes:
            notes.add(field, "missing", stored="unknown")
            changes[field] = "unknown"

    for field in TEXT_FIELDS:
        value = getattr(record, field)
        if value is None:
            continue
        if not isinstance(value, str):
            notes.add(field, "converted", type=type(value).__name__)
            value = _safe_repr(value)
        cleaned = _clean_str(value, notes, field)
        if cleaned is not getattr(record, field):
            changes[field] = cleaned

    for field in ("requires_review", "success"):
        value = getattr(record, field)
        if not isinstance(value, bool):
            stored = bool(value) if value is not None else field == "success"
            notes.add(field, "converted", type=type(value).__name__, stored=stored)
            changes[field] = stored

    timestamp = record.timestamp
    if not isinstance(timestamp, dt.datetime):
        notes.add("timestamp", "invalid", type=type(timestamp).__name__)
        changes["timestamp"] = dt.datetime.now(dt.UTC)
    elif timestamp.tzinfo is None:
        notes.add("timestamp", "assumed_utc")
        changes["timestamp"] = timestamp.replace(tzinfo=dt.UTC)
    elif timestamp.utcoffset() != dt.timedelta(0):
        changes["timestamp"] = timestamp.astimezone(dt.UTC)

    texts: dict[str, str | None] = {}
    values: dict[str, Any] = {}
    for field in JSON_FIELDS:
        value = getattr(record, field)
        if value is None:
            texts[field] = None
            values[field] = None
            continue
        safe, text = _json_text(value, notes, field)
        values[field] = safe
        texts[field] = text
        if safe is not value:
            changes[field] = safe

    _apply_cap(record, changes, values, texts, notes, max_record_bytes)

    if notes.items:
        context = values["context"]
        if not isinstance(context, dict):
            context = {} if context is None else {"value": context}
        else:
            context = dict(context)
        prior = context.get(NORMALISATION_KEY)
        context[NORMALISATION_KEY] = ([*prior] if isinstance(prior, list) else []) + notes.items
        changes["context"] = context
        texts["context"] = _dumps(context)

    if changes:
        record = record._replace(**changes)
    return record, texts


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
