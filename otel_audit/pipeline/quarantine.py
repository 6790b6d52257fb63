"""The last resort for a record the store refuses: a safe form, then a quarantine file.

When the store rejects a record for its content (a value out of a column's range, text
it cannot encode, a value its driver refuses), the pipeline first retries it in a
*safe form* (:func:`safe_record`): every field rebuilt from plain strings, numbers and
JSON documents by a conversion that cannot raise, with what changed noted under
``context["_normalised"]``. Only a record that cannot be stored even so is counted in
``failed``, logged at ERROR and appended here.

The quarantine directory (``<spool_dir>/../quarantine`` by default: next to the spool)
holds segments in the spool's format (:func:`~.spool.encode_record` frames, each with
an extra ``"q"`` key giving the reason). It is owner-only (0700, files 0600) and never
replayed automatically: an operator inspects it (``decode_record`` reads the frames)
and decides.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import threading
import uuid
from typing import Any

from ..prepared import PreparedRecord
from ..record import COLUMN_LIMITS, JSON_FIELDS, NORMALISATION_KEY, SCHEMA_VERSION, AuditRecord
from .segments import Segment, SegmentDir, encode_frame
from .spool import encode_record

__all__ = ["Quarantine", "quarantine_dir_for", "safe_record", "safe_texts"]

#: The range of the ``schema_version`` column (a 32-bit INTEGER on every store).
INT32 = (-(2**31), 2**31 - 1)

_MAX_DEPTH = 32
_FIELDS = AuditRecord._fields
_BOOLS = {"requires_review": False, "success": True}
_TEXTS = ("user_agent", "error_message")
_REPLACEMENT = "\ufffd"


def quarantine_dir_for(spool_dir: str) -> str:
    """The quarantine directory that goes with ``spool_dir`` (a sibling of it)."""
    parent = os.path.dirname(os.path.abspath(spool_dir.rstrip(os.sep) or os.sep))
    return os.path.join(parent, "quarantine")


def _repr(value: object) -> str:
    try:
        text = repr(value)
    except BaseException:  # a user __repr__ may raise anything; the record must survive
        return f"<unrepresentable {_type_name(value)}>"
    return _clean(text) if isinstance(text, str) else f"<unrepresentable {_type_name(value)}>"


def _type_name(value: object) -> str:
    try:
        return str(type(value).__name__)
    except BaseException:  # pragma: no cover - a metaclass whose __name__ raises
        return "object"


def _clean(text: str) -> str:
    """``text`` as an exact ``str``, NUL-free and encodable as UTF-8."""
    text = str.__str__(text)
    if "\x00" in text:
        text = text.replace("\x00", _REPLACEMENT)
    if not text.isascii():
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        text = "".join(_REPLACEMENT if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    return text


def _text(value: object, limit: int | None) -> str | None:
    if value is None:
        return None
    text = _clean(value) if isinstance(value, str) else _repr(value)
    return text if limit is None else text[:limit]


def _plain(value: Any, depth: int, seen: set[int]) -> Any:
    """A JSON-safe copy of ``value`` made only of dict, list, str, int, float, bool, None."""
    if value is None or type(value) is bool:
        return value
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, int) and not isinstance(value, bool):
        number = int.__int__(value)
        return number if -(2**53) <= number <= 2**53 else _repr(number)
    if isinstance(value, float):
        real = float.__float__(value)
        return real if math.isfinite(real) else _repr(real)
    if depth >= _MAX_DEPTH:
        return "<max depth>"
    if isinstance(value, dict | list | tuple):
        marker = id(value)
        if marker in seen:
            return "<cycle>"
        seen.add(marker)
        try:
            if isinstance(value, dict):
                out: dict[str, Any] = {}
                for key, item in list(dict.items(value)):
                    out[_clean(key) if isinstance(key, str) else _repr(key)] = _plain(
                        item, depth + 1, seen)
                return out
            return [_plain(item, depth + 1, seen) for item in list(value)]
        except BaseException:  # mutated while read, or a subclass that misbehaves
            return _repr(value)
        finally:
            seen.discard(marker)
    return _repr(value)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, sort_keys=True,
                      separators=(",", ":"))


def _timestamp(value: object, notes: list[dict[str, Any]]) -> dt.datetime:
    if isinstance(value, dt.datetime):
        try:
            if value.tzinfo is None or value.utcoffset() is None:
                return value.replace(tzinfo=dt.UTC)
            return value.astimezone(dt.UTC)
        except BaseException:
            pass
    notes.append({"field": "timestamp", "kind": "invalid", "stored": "now",
                  "original": _repr(value)[:200]})
    return dt.datetime.now(dt.UTC)


def safe_record(item: AuditRecord | PreparedRecord, reason: str) -> AuditRecord:
    """A storable copy of ``item`` (its record, if prepared), built without raising.

    Bounded columns become clean strings cut to their limits, booleans plain booleans,
    ``schema_version`` an integer in the column's range, JSON fields documents of plain
    values; ``reason`` and what changed are noted in ``context["_normalised"]``. The
    result still needs redaction (if ``item`` was not redacted yet) and
    :func:`safe_texts`.
    """
    record = item[0] if isinstance(item, PreparedRecord) else item
    values = list(tuple.__iter__(record)) if isinstance(record, tuple) else []
    values += [None] * (len(_FIELDS) - len(values))
    notes: list[dict[str, Any]] = [{"field": "record", "kind": "safe_form",
                                    "reason": _text(reason, 500)}]
    out: dict[str, Any] = {}
    for name, value in zip(_FIELDS, values, strict=False):
        if name in COLUMN_LIMITS:
            out[name] = _text(value, COLUMN_LIMITS[name])
        elif name in _TEXTS:
            out[name] = _text(value, None)
        elif name in _BOOLS:
            out[name] = value if type(value) is bool else _BOOLS[name]
            if type(value) is not bool:
                notes.append({"field": name, "kind": "converted", "stored": out[name],
                              "original": _repr(value)[:200]})
        elif name in JSON_FIELDS:
            out[name] = _plain(value, 0, set())
    out["timestamp"] = _timestamp(values[_FIELDS.index("timestamp")], notes)
    version = values[_FIELDS.index("schema_version")]
    if type(version) is int and INT32[0] <= version <= INT32[1]:
        out["schema_version"] = version
    else:
        out["schema_version"] = SCHEMA_VERSION
        notes.append({"field": "schema_version", "kind": "out_of_range",
                      "stored": SCHEMA_VERSION, "original": _repr(version)[:200]})
    for name in ("id", "action", "user_id"):
        if not out[name]:
            out[name] = uuid.uuid4().hex if name == "id" else "unknown"
            notes.append({"field": name, "kind": "missing", "stored": out[name]})
    context = out["context"]
    if not isinstance(context, dict):
        context = {} if context is None else {"value": context}
    prior = context.get(NORMALISATION_KEY)
    context[NORMALISATION_KEY] = ([*prior] if isinstance(prior, list) else []) + notes
    out["context"] = context
    return AuditRecord(**out)


def safe_texts(record: AuditRecord) -> PreparedRecord:
    """``record`` (from :func:`safe_record`, redacted) with its JSON texts, unsealed."""
    texts: dict[str, str | None] = {}
    values: dict[str, Any] = {}
    for name in JSON_FIELDS:
        value = _plain(getattr(record, name), 0, set())
        values[name] = value
        texts[name] = None if value is None else _json(value)
    return PreparedRecord(record._replace(**values), texts)


def _payload(item: PreparedRecord | AuditRecord, reason: str) -> bytes:
    """The spool-format document of ``item`` plus the reason; falls back to the safe form
    (then to a bare note) for a record the spool's encoder cannot write."""
    doc: dict[str, Any]
    try:
        if isinstance(item, PreparedRecord):
            doc = json.loads(encode_record(item))
            doc["q"] = reason
            return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    except BaseException:
        pass
    try:
        safe = safe_texts(safe_record(item, reason))
        chain = list(item[2:9]) if isinstance(item, PreparedRecord) else [None] * 7
        doc = json.loads(encode_record(safe))
        doc["c"] = [_plain(value, 0, set()) for value in chain]
        doc["q"] = reason
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    except BaseException:
        return json.dumps({"q": reason, "repr": _repr(item)[:65536]}).encode()


class Quarantine:
    """Append-only, owner-only segments of records the store could not take."""

    def __init__(self, directory: str) -> None:
        self.dir = SegmentDir(directory, "quarantine")
        self._lock = threading.Lock()
        self._current: Segment | None = None
        self.records = 0

    @property
    def directory(self) -> str:
        """Where the segments live."""
        return self.dir.directory

    def append(self, item: PreparedRecord | AuditRecord, reason: str) -> bool:
        """Keep ``item`` with ``reason``; False (never raises) if the disk refuses."""
        try:
            data = encode_frame(_payload(item, _text(reason, 2000) or ""))
            with self._lock:
                if self._current is None:
                    self._current = self.dir.create()
                os.write(self._current.fd, data)
                self.records += 1
            return True
        except OSError:
            return False

    def close(self) -> None:
        """Release the current segment (it stays on disk)."""
        with self._lock:
            if self._current is not None:
                self._current.close()
                self._current = None
