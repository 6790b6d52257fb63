"""Erased rows: their locations, what of them the hash covers, and their content digest.

An erasure (:mod:`otel_audit.integrity.erasures`) lists each value it erased as a
*location*, ``[column]`` or ``[column, key or index, ...]`` inside a JSON column. A row
whose hash no longer proves it (a value the row's format hashes as stored was erased,
or personal values are kept next to erased ones) is bound to its erasure entry by
:func:`content_digest` instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from ..record import JSON_FIELDS
from ..store.schema import PERSONAL_FIELDS
from .canonical import (
    CHAIN_ROW_COLUMNS,
    FORMAT,
    INVALID,
    canonical_json,
    chain_hash,
    personal_digest,
    personal_json_values,
    pii_info,
    row_version,
    seal_digest,
)

__all__ = [
    "ERASED",
    "PRINCIPAL_KEYS",
    "content_digest",
    "covered_columns",
    "location_text",
    "personal_leftovers",
    "pii_parts",
    "value_at",
    "with_values",
]

#: What an erased personal value reads as.
ERASED = "[erased]"
#: Keys of a personal JSON column's own structure holding the personal values.
PRINCIPAL_KEYS: dict[str, frozenset[str]] = {"delegation_chain": frozenset({"principal"})}
#: Tag of :func:`content_digest`'s hashed text.
_ROW_TAG = f"{FORMAT}/erasure/row"

_POS = {name: i for i, name in enumerate(CHAIN_ROW_COLUMNS)}
_SALT, _PII = _POS["pii_salt"], _POS["pii"]
#: A location that no longer exists in a row (never equal to ``ERASED``).
_MISSING = object()


def location_text(location: Sequence[str | int]) -> str:
    """``new_values.owner``, ``delegation_chain[0].principal``: a location as text."""
    out = str(location[0])
    for part in location[1:]:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def value_at(row: Sequence[Any], location: Sequence[Any]) -> Any:
    """The value at ``location`` of a chain row (a JSON path inside a JSON column)."""
    name = location[0] if location else None
    if not isinstance(name, str) or name not in _POS:
        return _MISSING
    value = row[_POS[name]]
    if len(location) == 1:
        return value
    try:
        value = json.loads(value)
    except (TypeError, ValueError):
        return _MISSING
    for part in location[1:]:
        in_dict = isinstance(value, dict) and isinstance(part, str) and part in value
        in_list = isinstance(value, list) and type(part) is int and 0 <= part < len(value)
        if not (in_dict or in_list):
            return _MISSING
        value = value[part]
    return value


def with_values(row: Sequence[Any], values: dict[str, Any]) -> tuple[Any, ...]:
    """A copy of the chain ``row`` with the columns named in ``values`` replaced."""
    out = list(row)
    for name, value in values.items():
        out[_POS[name]] = value
    return tuple(out)


def pii_parts(row: Sequence[Any]) -> tuple[list[str], str | None]:
    """``(personal JSON keys, kept digest)`` of a chain row's ``pii`` (empty, ``None``)."""
    info = pii_info(row[_PII]) if isinstance(row[_PII], str) else None
    return ((info[0] or []), info[1]) if info else ([], None)


def covered_columns(row: Sequence[Any]) -> list[str]:
    """The personal columns a chain row's hash covers only through the personal digest.

    The row's format decides (``acting_as`` and ``delegation_chain`` from layout 3 on):
    found by changing each column of the row with its digest kept and comparing hashes,
    once per format (``schema_version`` rules) a readable row shows it.
    """
    version = row_version(row)
    known = _COVERED.get(version)
    if known is not None:
        return list(known)
    keys, kept = pii_parts(row)
    digest = kept if kept is not None else seal_digest(row)
    if digest is None:
        return []
    pii = json.dumps({"k": keys, "d": digest} if keys else {"d": digest})
    base = with_values(row, {"pii": pii})
    reference = chain_hash(base, None, canonicalise=True)
    if reference == INVALID:
        return []
    out = []
    for name in PERSONAL_FIELDS:
        probe = '"~probe~"' if name in JSON_FIELDS else "~probe~"
        if chain_hash(with_values(base, {name: probe}), None, canonicalise=True) == reference:
            out.append(name)
    _COVERED[version] = tuple(out)
    return out


#: ``row_version -> covered personal columns`` (the format's, the same for every row).
_COVERED: dict[int, tuple[str, ...]] = {}


def _under(value: Any, keys: frozenset[str], out: list[Any]) -> None:
    """Collect the values under ``keys`` (any depth) of a parsed JSON value."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in keys:
                out.append(item)
            else:
                _under(item, keys, out)
    elif isinstance(value, list):
        for item in value:
            _under(item, keys, out)


def personal_leftovers(row: Sequence[Any], covered: Sequence[str] | None = None) -> list[str]:
    """What of a row's digest-covered personal data is not erased: column names, and
    ``"key"`` for a value under one of the row's personal JSON keys."""
    covered = covered_columns(row) if covered is None else covered
    out = []
    for name in covered:
        value = row[_POS[name]]
        if value is None or value == ERASED:
            continue
        if name in JSON_FIELDS:
            try:
                parsed = json.loads(value)
            except (TypeError, ValueError):
                out.append(name)
                continue
            found: list[Any] = []
            principal = PRINCIPAL_KEYS.get(name)
            if principal is None:
                found.append(parsed)
            else:
                _under(parsed, principal, found)
            if any(v not in (None, ERASED) for v in found):
                out.append(name)
        else:
            out.append(name)
    keys = frozenset(pii_parts(row)[0])
    if keys:
        values: list[Any] = []
        for name in JSON_FIELDS:
            if name not in PERSONAL_FIELDS and row[_POS[name]] is not None:
                try:
                    _under(json.loads(row[_POS[name]]), keys, values)
                except (TypeError, ValueError):
                    values.append(None)
        if any(v != ERASED for v in values):
            out.append("key")
    return out


def content_digest(row: Sequence[Any]) -> str:
    """SHA-256 of an erased chain row's whole content (``h`` of its erasure entry).

    It covers the row's chain payload (without key: verifiable with public keys only) and
    its personal values under its salt: so a row that keeps personal values next to
    erased ones, or whose directly hashed values an erasure rewrote, is bound to the
    signed erasure document instead of its chain hash. The salt (random, dropped when
    the row's last personal value is erased) keeps the digest from confirming a guess.
    """
    body = chain_hash(row, None, canonicalise=True)
    version = row_version(row)
    keys = pii_parts(row)[0]
    salt = row[_SALT]
    try:
        personal = [canonical_json(v) if n in JSON_FIELDS and isinstance(v, str) else v
                    for n, v in ((n, row[_POS[n]]) for n in PERSONAL_FIELDS)]
        values = personal_json_values([row[_POS[n]] for n in JSON_FIELDS], keys,
                                      version=version) if keys else []
        digest = personal_digest("" if salt is None else str(salt), personal, values,
                                 version=version)
    except (ValueError, TypeError, RecursionError):
        digest = "invalid"
    text = f"{_ROW_TAG}\x00{body}\x00{digest}"
    return hashlib.sha256(text.encode()).hexdigest()
