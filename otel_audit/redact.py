"""Secret redaction, applied to every record before it is written, spooled or journalled.

Keys that look like secrets, at any depth of ``old_values``, ``new_values``,
``changes`` and ``context``, have their values replaced by ``"[REDACTED]"`` (``mask``)
or by a keyed HMAC-SHA256 of the value (``hmac``: two equal secrets give the same
digest, so equality can still be tested, but the value cannot be read back without
the key). A key is secret-like when its lower-cased name, with ``-`` and ``_``
removed, *contains* one of :data:`DEFAULT_SECRET_KEYS` (so ``X-Api-Key``,
``db_password`` and ``refresh_token`` all match) or one of the configured additions;
names in the allow list are never redacted.

Redaction must never fail open: anything the walker cannot inspect safely (a mapping
whose ``items()`` raises, nesting deeper than the normaliser keeps) is replaced
whole, never passed through.
"""

from __future__ import annotations

import hashlib
import hmac
import operator
from collections.abc import Callable, Iterable, Mapping
from itertools import chain
from typing import Any

from .record import AuditRecord, json_safe

__all__ = ["DEFAULT_SECRET_KEYS", "REDACTED", "Redactor"]

#: Key fragments treated as secrets by default (matched after lower-casing and
#: removing ``-`` and ``_``).
DEFAULT_SECRET_KEYS: tuple[str, ...] = (
    "password", "passwd", "secret", "token", "api_key", "apikey", "authorization",
    "cookie", "set-cookie", "private_key", "credential",
)

#: What a masked value becomes.
REDACTED = "[REDACTED]"

_FIELDS = ("old_values", "new_values", "changes", "context")
_MAX_DEPTH = 64  # deeper than the normaliser keeps (32): nothing below it is ever stored
_CACHE_LIMIT = 4096
_SCALARS = frozenset({str, int, float, bool, type(None)})
#: Field value types __call__ leaves alone or checks with _plainly_clean (dict).
_SKIPPED = frozenset({type(None), str, int, float, bool, dict})
_POSITIONS = tuple(AuditRecord._fields.index(name) for name in _FIELDS)
_JSON_VALUES = operator.itemgetter(*_POSITIONS)

_redact_clean: Callable[[list[AuditRecord], tuple[int, ...], dict[str, bool]], bool] | None
try:  # the compiled first look of _batch_clean (optional: built where a C compiler is)
    from ._accel import redact_clean as _redact_clean
except ImportError:  # pragma: no cover - depends on the build
    _redact_clean = None


def _squash(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


class Redactor:
    """Replaces secret-like values in a record's JSON fields; a pipeline transform.

    ``Redactor(mode="mask"|"hmac", extra_keys=(), allow=(), hmac_key=None)``. Calling
    it on an :class:`AuditRecord` returns the record with redacted copies of the
    JSON fields (the caller's objects are never modified), or the same record when
    nothing needed redacting.
    """

    def __init__(
        self,
        mode: str = "mask",
        *,
        extra_keys: Iterable[str] = (),
        allow: Iterable[str] = (),
        hmac_key: str | bytes | None = None,
    ) -> None:
        if mode not in ("mask", "hmac"):
            raise ValueError(f"mode must be 'mask' or 'hmac'; got {mode!r}")
        if mode == "hmac" and not hmac_key:
            raise ValueError("hmac mode needs a key")
        self.mode = mode
        self.fragments = tuple(sorted({_squash(k) for k in (*DEFAULT_SECRET_KEYS, *extra_keys)}))
        self.allow = frozenset(_squash(k) for k in allow)
        key = hmac_key.encode() if isinstance(hmac_key, str) else hmac_key
        self._key = key or b""
        self._decisions: dict[str, bool] = {}

    def is_secret(self, key: str) -> bool:
        """Return whether values under ``key`` are redacted."""
        decision = self._decisions.get(key)
        if decision is None:
            squashed = _squash(key)
            decision = squashed not in self.allow and any(f in squashed for f in self.fragments)
            if len(self._decisions) < _CACHE_LIMIT:
                self._decisions[key] = decision
        return decision

    def replacement(self, value: Any) -> str:
        """What a secret ``value`` is stored as."""
        if self.mode == "mask":
            return REDACTED
        import json

        text = json.dumps(json_safe(value), sort_keys=True, ensure_ascii=False,
                          separators=(",", ":"))
        digest = hmac.new(self._key, text.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return f"hmac-sha256:{digest.hexdigest()}"

    def __call__(self, record: AuditRecord) -> AuditRecord:
        """Return ``record`` with secret-like values redacted."""
        changes: dict[str, Any] = {}
        for name in _FIELDS:
            value = getattr(record, name)
            if value is None or isinstance(value, str | int | float):
                continue
            redacted = self.redact_value(value)
            if redacted is not value:
                changes[name] = redacted
        return record._replace(**changes) if changes else record

    def redact_batch(self, records: list[AuditRecord]) -> list[AuditRecord]:
        """:meth:`__call__` on each record; a batch with nothing to redact is checked
        column by column (a few C-level passes) and returned as it is."""
        if self._batch_clean(records):
            return records
        return [self(record) for record in records]

    def _batch_clean(self, records: list[AuditRecord]) -> bool:
        """Whether no record of ``records`` has anything to redact: every JSON field is
        ``None``, a scalar or a flat dict of scalars whose keys are known non-secret
        strings. ``False`` only means "look record by record".

        The compiled check answers first where it is built: ``True`` only where this one
        does (every key already decided not secret); otherwise this one decides."""
        if _redact_clean is not None and type(records) is list and _redact_clean(
                records, _POSITIONS, self._decisions):
            return True
        values = list(chain.from_iterable(map(_JSON_VALUES, records)))
        if not _SKIPPED.issuperset(map(type, values)):
            return False
        dicts = [value for value in values if type(value) is dict]
        if not _SCALARS.issuperset(map(type, chain.from_iterable(map(dict.values, dicts)))):
            return False  # nested (or odd) values: the walk decides
        decisions = self._decisions
        for key in set(chain.from_iterable(dicts)):
            if decisions.get(key) is not False and (type(key) is not str or self.is_secret(key)):
                return False
        return True

    def redact_value(self, value: Any) -> Any:
        """Return ``value`` with secret-like keys redacted at any depth (a copy if changed)."""
        try:
            if type(value) is dict and self._plainly_clean(value, 0):
                return value
            return self._walk(value, 0, set())
        except Exception:  # fail closed: an uninspectable value is never passed through
            return REDACTED

    def _plainly_clean(self, value: dict[Any, Any], depth: int) -> bool:
        """Fast path: plain nested dicts of scalars with no secret-like key.

        Anything else (lists, other types, unknown or secret keys, depth) answers
        ``False`` and the full walk decides; so does an error, as redact_value catches it.
        """
        if depth > 8:
            return False
        decisions = self._decisions
        for key, item in value.items():
            if decisions.get(key) is not False and (type(key) is not str or self.is_secret(key)):
                return False
            kind = type(item)
            if kind is dict:
                if not self._plainly_clean(item, depth + 1):
                    return False
            elif kind not in _SCALARS:
                return False
        return True

    def _walk(self, value: Any, depth: int, seen: set[int]) -> Any:
        is_mapping = isinstance(value, Mapping)
        if not is_mapping and not isinstance(value, list | tuple | set | frozenset):
            return value
        if depth >= _MAX_DEPTH:
            return REDACTED
        marker = id(value)
        if marker in seen:
            return value  # the normaliser stores "<cycle>" here
        seen.add(marker)
        try:
            if is_mapping:
                return self._walk_mapping(value, depth, seen)
            items = list(value)
            out = [self._walk(item, depth + 1, seen) for item in items]
            if all(a is b for a, b in zip(out, items, strict=True)):
                return value
            return out  # the normaliser stores every sequence and set as a list anyway
        finally:
            seen.discard(marker)

    def _walk_mapping(self, value: Mapping[Any, Any], depth: int, seen: set[int]) -> Any:
        changed: dict[Any, Any] | None = None
        for key, item in list(value.items()):
            if self.is_secret(key if isinstance(key, str) else _key_text(key)):
                new = self.replacement(item)
            else:
                new = self._walk(item, depth + 1, seen)
            if new is not item:
                if changed is None:
                    changed = {}
                changed[key] = new
        if changed is None:
            return value
        return {k: changed.get(k, v) for k, v in value.items()}


def _key_text(key: Any) -> str:
    """The text a non-string key is stored under (what the normaliser will name it)."""
    try:
        return key.decode("latin-1") if isinstance(key, bytes) else repr(key)
    except Exception:
        return ""


def redactor_from_config(mode: str, extra_keys: Iterable[str], allow: Iterable[str],
                         hmac_key: str | None) -> Redactor | None:
    """Build the trail's redactor from its settings (``None`` when ``mode`` is ``off``)."""
    if mode == "off":
        return None
    return Redactor(mode, extra_keys=extra_keys, allow=allow, hmac_key=hmac_key)
