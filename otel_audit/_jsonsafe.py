"""JSON safety: what :func:`otel_audit.record.normalise` and the call's snapshot turn any
value into, the notes of what changed, and the canonical JSON encoder.

Every function here is total: a value whose own code raises (``__repr__``,
``__iter__``, ``__class__``, a metaclass's ``__hash__`` ...) becomes a safe string and a
note, never an exception. Public through :mod:`otel_audit.record` (``json_safe``).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import json
import math
import re
import uuid
from collections.abc import Mapping
from typing import Any

__all__ = ["canonical_dumps", "json_safe"]

_MAX_DEPTH = 32
_REPLACEMENT = "\ufffd"
_MAX_NOTES = 64  # notes kept per record (then one "notes_omitted" note): ~16 KiB at most
_NOTE_CHARS = 200  # longest string in a note (field paths through long keys)
_SMALL_INT = 1 << 1000  # ~301 digits: below the least int_max_str_digits (640)
_PLAIN_TOP = frozenset({dict, list, str, int, float, bool})


class _Notes:
    """Collects the normalisations applied to one record.

    Notes are data too: every string in one is made storable (a type name or key may
    hold a NUL or a lone surrogate), and a record keeps at most ``_MAX_NOTES`` of them
    (a value with a million odd items must not make its notes a million times larger).
    """

    __slots__ = ("items", "omitted")

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.omitted = 0

    def add(self, field: str, kind: str, **detail: Any) -> None:
        if len(self.items) >= _MAX_NOTES:
            self.omitted += 1
            return
        note: dict[str, Any] = {"field": _note_text(field), "kind": kind}
        for key, value in detail.items():
            note[key] = _note_text(value) if type(value) is str else value
        self.items.append(note)

    def finished(self) -> list[dict[str, Any]]:
        """The notes, with one more saying how many were left out (if any)."""
        if not self.omitted:
            return self.items
        return [*self.items, {"field": "*", "kind": "notes_omitted", "count": self.omitted}]


def _note_text(text: str) -> str:
    """A string of a note: storable and short (paths of long keys are cut)."""
    text = _clean_str(text, None, "")
    return text if len(text) <= _NOTE_CHARS else text[:_NOTE_CHARS] + "..."


def _type_name(value: object) -> str:
    """The name of ``value``'s type, whatever its metaclass does (never raises)."""
    try:
        name = _TYPE_NAME(type(value))
    except Exception:  # a metaclass can make anything of its attributes
        return "object"
    return name if type(name) is str else "object"


_TYPE_NAME = type.__dict__["__name__"].__get__  # type's own getter: no metaclass override


def _clean_str(value: str, notes: _Notes | None, path: str) -> str:
    """Replace NUL characters and lone surrogates (PostgreSQL rejects both).

    A ``str`` subclass becomes a plain ``str`` first (its data, not its methods: an
    override of ``replace`` or ``encode`` is never called)."""
    if type(value) is not str:
        value = str.__str__(value)
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
    """``repr(value)``, or ``<unrepresentable T>`` when that raises or is not a string."""
    try:
        text = repr(value)
    except Exception:  # any user __repr__ may raise; the record must survive it
        return f"<unrepresentable {_type_name(value)}>"
    return text if isinstance(text, str) else f"<unrepresentable {_type_name(value)}>"


def _int_value(value: int, notes: _Notes | None, path: str) -> int | str:
    """An int as a JSON number, or as its decimal string when the interpreter's limit on
    int-to-text conversion (``sys.set_int_max_str_digits``) would refuse to write it."""
    if type(value) is not int:
        value = int.__int__(value)  # a subclass's own __int__ is never called
    if -_SMALL_INT < value < _SMALL_INT:
        return value
    try:
        int.__repr__(value)
    except ValueError:
        # Decimal converts an int exactly and its text has no such limit
        text = str(decimal.Decimal(value))
        if notes is not None:
            notes.add(path, "large_int", digits=len(text.lstrip("-")))
        return text
    return value


def _unrepresentable(value: object, notes: _Notes | None, path: str) -> str:
    """The last resort for a value whose conversion raised: a safe string, noted."""
    name = _type_name(value)
    if notes is not None:
        notes.add(path, "unrepresentable", type=name)
    return _clean_str(f"<unrepresentable {name}>", None, path)


def json_safe(value: Any, notes: _Notes | None = None, path: str = "$") -> Any:
    """Return a JSON-safe copy of ``value`` following the documented normalisation.

    ================================  ===========================================
    input                             stored as
    ================================  ===========================================
    ``str``                           itself; NUL and lone surrogates -> U+FFFD
    ``int``                           itself; its decimal string when Python would
                                      refuse to write it (``large_int``)
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

    Never raises: a value whose conversion raises (a hostile ``__eq__``, ``__iter__``,
    ``__class__`` ...) is stored as ``"<unrepresentable T>"`` and noted. The result
    holds only ``dict`` (``str`` keys), ``list``, ``str``, ``int``, finite ``float``,
    ``bool`` and ``None``.
    """
    return _json_safe(value, notes, path, 0, set())


def _json_safe(value: Any, notes: _Notes | None, path: str, depth: int, seen: set[int]) -> Any:
    try:
        return _json_value(value, notes, path, depth, seen)
    except Exception:  # last resort: any step above may run the value's own code
        return _unrepresentable(value, notes, path)


def _json_value(value: Any, notes: _Notes | None, path: str, depth: int, seen: set[int]) -> Any:
    kind = type(value)
    if value is None or kind is bool:
        return value
    if kind is str:
        return _clean_str(value, notes, path)
    if kind is int:
        return _int_value(value, notes, path)
    if isinstance(value, enum.Enum):  # before int and str: IntEnum, StrEnum
        return _json_safe(value.value, notes, path, depth + 1, seen)
    if isinstance(value, int):
        return _int_value(value, notes, path)
    if isinstance(value, str):
        return _clean_str(value, notes, path)
    if isinstance(value, float):
        number = float.__float__(value)
        if math.isfinite(number):
            return number
        text = "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")
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
    note = "converted"
    # the classes' own methods: a subclass's overrides are never called
    if isinstance(value, dt.datetime):
        converted = dt.datetime.isoformat(value)
    elif isinstance(value, dt.date):
        converted = dt.date.isoformat(value)
    elif isinstance(value, dt.time):
        converted = dt.time.isoformat(value)
    elif isinstance(value, decimal.Decimal):
        converted = decimal.Decimal.__str__(value)
    elif isinstance(value, uuid.UUID):
        converted = uuid.UUID.__str__(value)
    elif isinstance(value, bytes | bytearray | memoryview):
        converted = base64.b64encode(bytes(value)).decode("ascii")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        try:
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        except Exception:
            converted, note = _safe_repr(value), "repr"
        else:
            if notes is not None:
                notes.add(path, "converted", type=_type_name(value))
            return _json_safe(fields, notes, path, depth + 1, seen)
    else:
        converted, note = _safe_repr(value), "repr"
    if notes is not None:
        notes.add(path, note, type=_type_name(value))
    return _clean_str(converted, None, path)


def _key_text(key: Any, notes: _Notes | None, path: str) -> str:
    """A mapping key as a string: itself (cleaned), JSON for numbers, bools and None
    (``1`` -> ``"1"``, ``True`` -> ``"true"``), ``repr`` for anything else; noted."""
    try:
        if isinstance(key, str):
            return _clean_str(key, notes, f"{path}.<key>")
        if key is None or isinstance(key, bool | float):
            text = json.dumps(key)
        elif isinstance(key, int):
            number = _int_value(key, None, path)
            text = number if type(number) is str else int.__repr__(number)
        else:
            text = _safe_repr(key)
        text = _clean_str(text, None, path)
    except Exception:  # a key whose __class__ or float conversion raises
        text = f"<unrepresentable {_type_name(key)}>"
    if notes is not None:
        notes.add(f"{path}.{text}", "key_converted", type=_type_name(key))
    return text


def _container(value: Any, notes: _Notes | None, path: str, depth: int, seen: set[int]) -> Any:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        try:
            items = list(value.items())
        except Exception:
            # an unreadable mapping: its repr could show what redaction never saw
            if notes is not None:
                notes.add(path, "unreadable", type=_type_name(value))
            return f"<unreadable {_type_name(value)}>"
        for key, item in items:
            skey = _key_text(key, notes, path)
            if skey in out:  # two keys with one text ({1: .., "1": ..}): keep both
                n = 2
                while f"{skey}#{n}" in out:
                    n += 1
                if notes is not None:
                    notes.add(f"{path}.{skey}", "key_collision", stored_as=f"{skey}#{n}")
                skey = f"{skey}#{n}"
            out[skey] = _json_safe(item, notes, f"{path}.{skey}", depth + 1, seen)
        return out
    items_list = list(value)
    if isinstance(value, set | frozenset):
        if notes is not None:
            notes.add(path, "converted", type=_type_name(value))
        try:
            items_list = sorted(items_list)
        except Exception:  # unorderable items (mixed types, Decimal NaN): by their JSON
            safe = [_json_safe(item, notes, f"{path}[]", depth + 1, seen)
                    for item in items_list]
            return sorted(safe, key=_dumps)
    return [_json_safe(item, notes, f"{path}[{i}]", depth + 1, seen)
            for i, item in enumerate(items_list)]


def _reject(value: object) -> Any:
    raise TypeError(type(value).__name__)


# Stored JSON is canonical: compact, UTF-8, keys sorted. The integrity chain hashes this
# text as it is (see docs/integrity.md), so it must equal what parsing and re-encoding
# it would give; non-string keys would sort differently once they are strings, so a
# text with a key that looks numeric, or like the text of True, False, None or a
# non-finite float, is rebuilt through json_safe (string keys first).
_NUMERIC_KEY = re.compile(r'[{,]"(?:-?[0-9]|(?:true|false|null|NaN|-?Infinity)")')

# One encoder for the process, through the public json API (json.dumps builds a new one
# per call with these options): compact, UTF-8, keys sorted, no NaN, no circular check
# (json_safe has already cut cycles, and a cycle in plain data fails the fast path with
# RecursionError either way). The hash format never depends on a private encoder.
_ENCODER = json.JSONEncoder(skipkeys=False, ensure_ascii=False, check_circular=False,
                            allow_nan=False, sort_keys=True, separators=(",", ":"),
                            default=_reject)

#: The canonical JSON text of a plain value (the integrity chain's payloads use it too).
canonical_dumps = _ENCODER.encode
_dumps = canonical_dumps


def _encode(value: Any, _level: int) -> tuple[str]:
    """The canonical JSON text as chunks (the compiled ``plain_texts``'s encoder argument)."""
    return (_ENCODER.encode(value),)


def _json_text(value: Any, notes: _Notes, field: str) -> tuple[Any, str]:
    """Serialise one JSON field: fast path for plain data, full walk otherwise."""
    try:
        text = _dumps(value)
    except Exception:  # TypeError, ValueError, RecursionError, or a hostile __lt__ of a key
        pass
    else:
        clean = "\x00" not in text and "\\u0000" not in text and not _NUMERIC_KEY.search(text)
        if clean and (text.isascii() or _utf8_ok(text)) and type(value) in _PLAIN_TOP:
            return value, text
    safe = _json_safe(value, notes, field, 0, set())
    return safe, _dumps(safe)


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# the record's timestamp: what normalise() and the snapshot store
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
