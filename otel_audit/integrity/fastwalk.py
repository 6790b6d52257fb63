"""The verifier's fast path: which rows of a batch match their hash, and the walk over
runs of rows that need nothing but that.

:func:`verify_flags` takes a batch of source rows (:mod:`.sources`) and returns one byte
per row: bit :data:`VERIFIED` when the row's content matches its stored hash, bit
:data:`LINKED` when the row follows the row before it in the batch (same stream, next
``seq``, its ``prev_hash`` that row's hash). A row not verified here is no finding: it
then takes the walk's exact check (``content_ok``, :func:`~.canonical.chain_hash`),
which decides. So a row is verified here only where the payload built here is byte for
byte the one ``chain_hash`` builds: rows of a format named in :func:`payload_plans`,
not erased, of plain values (text, integers, NULL), JSON documents this code reads
exactly as Python does. Rows with personal JSON keys (``pii`` ``{"k": [...]}``) of
formats 2 and 3 are verified here too: the values under those keys are masked as
``canonical._mask`` masks them (``"$pii"`` in the hashed text, the values collected in
its order into the personal digest), for keys of printable ASCII without a quote or a
backslash; other such rows, and format 1's, take the exact check.

Two layouts, by source: on SQLite the database builds the payload's JSON arrays
(:data:`SQLITE`), elsewhere the source row carries the whole chain row and the format
tag (:data:`FULL`), and JSON documents are put in canonical form here (PostgreSQL's
``JSONB`` text has spaces and its own key order). A SQLite row with personal JSON keys
carries its whole chain row as a JSON array: it is checked in the full layout
(:func:`_sqlite_personal`).

The compiled form (``otel_audit._speedups.verify_flags``, C, hashing with the GIL
released) and :func:`python_verify_flags` give the same bytes; the tests hold them to
it. :meth:`~.walk.Walker.run` uses the flags: a run of rows that verify, follow each
other in one stream and link to each other is counted in one step.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from hashlib import sha256
from typing import Any

from ..record import JSON_FIELDS
from .canonical import (
    CHAIN_ROW_COLUMNS,
    EXACT_VERSION,
    PII_MARK,
    PUBLIC_VERSION,
    _mask,
    format_tag,
    hash_payload,
    hashed_fields,
    personal_fields,
    pii_info,
    row_mac,
)
from .canonical_json import canonical_json, encode_exact, parse_exact, payload_dumps

__all__ = [
    "FULL",
    "LINKED",
    "SQLITE",
    "VERIFIED",
    "Plan",
    "payload_plans",
    "python_verify_flags",
    "verify_flags",
]

#: Row layouts: SQLite's payload arrays (``HEADER, salt, personal array, payload prefix,
#: whole row array, mac``), and ``HEADER, *chain row, format tag`` (PostgreSQL, DuckDB).
SQLITE, FULL = 0, 1

#: Flag bits: the row's content matches its hash; it links to the row before it.
VERIFIED, LINKED = 1, 2

_HEADER = 6
#: Where the SQLite layout carries ``mac``.
SQLITE_MAC = 10

#: How one format's payload is built from a source row: ``(hash key, mac key, body
#: positions, personal positions, JSON positions, salt position, pii position, mac
#: position)``; the hash key is ``None`` for SHA-256, the mac key ``None`` when no
#: ``mac`` is checked.
Plan = tuple[bytes | None, bytes | None, tuple[int, ...], tuple[int, ...], tuple[int, ...],
             int, int, int]


def _versions() -> tuple[int, ...]:
    return (1, EXACT_VERSION, PUBLIC_VERSION)


def payload_plans(key: bytes | None, layout: int) -> dict[str, Plan]:
    """``format tag -> Plan`` for the formats the fast path verifies in ``layout``.

    On SQLite the stored texts are hashed as stored (each format's sealer stored the text
    it hashed), so every format can take the fast path; from the whole chain row only
    the exact formats can (format 1 compares numbers as doubles). A format-3 hash is
    SHA-256 whatever the key; with a key its ``mac`` must match too (:func:`row_mac`).
    """
    at = {name: _HEADER + i for i, name in enumerate(CHAIN_ROW_COLUMNS)}
    plans: dict[str, Plan] = {}
    for version in _versions():
        if layout == FULL and version < EXACT_VERSION:
            continue
        public = version >= PUBLIC_VERSION
        plans[format_tag(version)] = (
            None if public else key, key if public else None,
            tuple(at[name] for name in hashed_fields(version)),
            tuple(at[name] for name in personal_fields(version)),
            tuple(at[name] for name in JSON_FIELDS),
            at["pii_salt"], at["pii"], at["mac"] if layout == FULL else SQLITE_MAC)
    return plans


def python_verify_flags(rows: Sequence[tuple[Any, ...]], layout: int,
                        plans: dict[str, Plan]) -> bytes:
    """The flags of ``rows`` (see the module): the pure-Python form."""
    check = _sqlite_ok if layout == SQLITE else _full_ok
    out = bytearray(check(row, plans) for row in rows)
    for i in range(1, len(rows)):
        if _links(rows[i - 1], rows[i]):
            out[i] |= LINKED
    if layout == SQLITE:
        _sqlite_personal(rows, plans, out, _python_full)
    return bytes(out)


def _python_full(rows: Sequence[tuple[Any, ...]], layout: int,
                 plans: dict[str, Plan]) -> bytes:
    return bytes(_full_ok(row, plans) for row in rows)


#: Where the full layout carries ``mac``.
_FULL_MAC = _HEADER + CHAIN_ROW_COLUMNS.index("mac")


def _sqlite_personal(rows: Sequence[tuple[Any, ...]], plans: dict[str, Plan],
                     out: bytearray, check: Callable[..., bytes]) -> None:
    """Set :data:`VERIFIED` in ``out`` for the SQLite rows with personal JSON keys that
    verify: each row's whole chain row (a JSON array) checked in the :data:`FULL` layout
    by ``check`` (compiled or pure), under the plans of the exact formats."""
    picked = [i for i, row in enumerate(rows)
              if type(row) is tuple and len(row) > SQLITE_MAC and type(row[5]) is str
              and type(row[9]) is str and type(row[8]) is str
              and row[5].startswith('{"k": [')]
    if not picked:
        return
    full_plans = {tag: (*plan[:7], _FULL_MAC) for tag, plan in plans.items()
                  if tag != format_tag(1)}
    flags = check([_as_full(rows[i]) for i in picked], FULL, full_plans)
    for i, flag in zip(picked, flags, strict=True):
        out[i] |= flag & VERIFIED


def _as_full(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A SQLite source row as a :data:`FULL` one: header, chain row (from the JSON
    array it carries), format tag (from the payload prefix); ``()`` if unreadable."""
    prefix = row[8]
    end = prefix.find('"', 2)
    if not prefix.startswith('["') or end < 0:
        return ()
    try:
        chain = json.loads(row[9])
    except (ValueError, RecursionError):
        return ()
    if type(chain) is not list or len(chain) != len(CHAIN_ROW_COLUMNS):
        return ()
    return (*row[:_HEADER], *chain, prefix[2:end])


def _links(before: Any, row: Any) -> bool:
    """Whether ``row`` follows ``before`` in one stream (next seq, linked hashes)."""
    if type(row) is not tuple or type(before) is not tuple or len(row) < 4 or len(before) < 4:
        return False
    seq, seq0 = row[1], before[1]
    return (type(seq) is int and type(seq0) is int and -(1 << 63) <= seq0 < (1 << 63) - 1
            and seq == seq0 + 1 and type(row[0]) is str and type(before[0]) is str
            and type(row[2]) is str and type(before[3]) is str
            and row[0] == before[0] and row[2] == before[3])


def _mac_ok(row: tuple[Any, ...], plan: Plan) -> bool:
    """Whether the row carries the mac ``plan`` asks for (or none is asked for)."""
    mac_key, at = plan[1], plan[7]
    if mac_key is None:
        return True
    mac = row[at] if at < len(row) else None
    return type(mac) is str and mac == row_mac(row[3], mac_key)


def _sqlite_ok(row: tuple[Any, ...], plans: dict[str, Plan]) -> bool:
    if type(row) is not tuple or len(row) <= SQLITE_MAC or row[5] is not None:
        return False
    stored, salt, personal, prefix = row[3], row[6], row[7], row[8]
    if (type(stored) is not str or len(stored) != 64 or type(personal) is not str
            or type(prefix) is not str or not (salt is None or type(salt) is str)):
        return False
    if len(prefix) < 4 or not prefix.startswith('["') or not prefix.endswith("]"):
        return False
    end = prefix.find('"', 2)
    plan = plans.get(prefix[2:end]) if end >= 0 and "\\" not in prefix[2:end] else None
    if plan is None:
        return False
    if plan[1] is not None and type(row[plan[7]]) is not str:
        return False
    try:
        digest = sha256(f"{'' if salt is None else salt}\x00{personal}".encode())
        payload = f'{prefix[:-1]},null,"{digest.hexdigest()}"]'.encode()
    except UnicodeEncodeError:
        return False
    return hash_payload(payload, plan[0]) == stored and _mac_ok(row, plan)


def _plain(value: Any) -> bool:
    return value is None or type(value) is str or (type(value) is int
                                                   and -(1 << 63) <= value < 1 << 63)


def _text(value: Any) -> bool:
    return value is None or type(value) is str


def _full_ok(row: tuple[Any, ...], plans: dict[str, Plan]) -> bool:
    if type(row) is not tuple or len(row) < 10:
        return False
    tag = row[-1]
    plan = plans.get(tag) if type(tag) is str else None
    if plan is None:
        return False
    key, mac_key, body_at, personal_at, json_at, salt_at, pii_at, mac_at = plan
    if max(salt_at, pii_at, *body_at, *personal_at) >= len(row):
        return False
    keys = None if row[pii_at] is None else _personal_keys(row[pii_at])
    if row[pii_at] is not None and keys is None:
        return False
    stored, stream, seq, prev, salt = row[3], row[6], row[7], row[8], row[salt_at]
    body = [row[at] for at in body_at]
    personal = [row[at] for at in personal_at]
    json_set = set(json_at)
    if (type(stored) is not str or type(stream) is not str or type(seq) is not int
            or not _plain(seq) or type(prev) is not str or not _text(salt)
            or not all(map(_text, personal)) or not all(map(_plain, body))
            or not all(_text(row[at]) for at in (*body_at, *personal_at) if at in json_set)
            or (mac_key is not None and (mac_at >= len(row) or type(row[mac_at]) is not str))):
        return False
    found: list[Any] = []
    frozen = frozenset(() if keys is None else keys)
    try:
        for values, where in ((body, body_at), (personal, personal_at)):
            for i, at in enumerate(where):
                text = values[i]
                if at in json_set and text is not None:
                    masked = keys is not None and values is body
                    if _too_deep(text, MASK_DEPTH if masked else MAX_DEPTH):
                        return False
                    if masked:  # canonical._exact_body
                        values[i] = encode_exact(_mask(parse_exact(
                            text, marked=False, strict=True), frozen, found))
                    else:
                        values[i] = canonical_json(text, strict=True)
        salted = f"{'' if salt is None else salt}\x00"
        if found:  # canonical.personal_digest of format 2
            digest = sha256(f"{salted}{encode_exact([*personal, found])}".encode())
        else:
            digest = sha256(salted.encode() + payload_dumps([*personal, []]))
        payload = payload_dumps([tag, stream, seq, prev, *body, keys, digest.hexdigest()])
        if len(stored.encode()) != 64:
            return False
    except (ValueError, TypeError, RecursionError):  # not JSON, a duplicate key, a
        return False  # number not in canonical spelling, a string UTF-8 cannot hold
    return hash_payload(payload, key) == stored and _mac_ok(row, plan)


#: The personal JSON keys the fast path masks: printable ASCII, no quote or backslash
#: (each key its own JSON text).
_SIMPLE_KEY = re.compile(r'[ !#-\[\]-~]*')


def _personal_keys(pii: Any) -> list[str] | None:
    """The personal JSON keys of a ``pii`` value the fast path masks, or ``None``: an
    erasure, a malformed value, a key outside :data:`_SIMPLE_KEY`, or a text holding
    ``"d"`` (the walk counts such a row as erased)."""
    if type(pii) is not str or '"d"' in pii:
        return None
    info = pii_info(pii)
    if info is None or info[0] is None or info[1] is not None:
        return None
    keys = info[0]
    return keys if all(_SIMPLE_KEY.fullmatch(key) for key in keys) else None


assert PII_MARK == "$pii"  # what the compiled form writes

#: The compiled form reads JSON documents nested up to this depth (deeper: 0).
MAX_DEPTH = 500
#: ... and documents it masks for personal keys up to this one: the exact check masks
#: and writes those by Python recursion (``canonical._mask``, ``encode_exact``).
MASK_DEPTH = 100


def _too_deep(text: str | None, limit: int = MAX_DEPTH) -> bool:
    """Whether ``text`` nests deeper than ``limit`` (counting brackets outside
    strings; a text that is not JSON fails the exact check either way)."""
    if text is None or text.count("[") + text.count("{") <= limit:
        return False
    depth = top = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            top = max(top, depth)
        elif ch in "]}":
            depth -= 1
    return top > limit + 1


verify_flags: Callable[[Sequence[tuple[Any, ...]], int, dict[str, Plan]], bytes]
try:
    from .._accel import verify_flags as _compiled
except ImportError:  # pragma: no cover - depends on the build
    verify_flags = python_verify_flags
else:
    def verify_flags(rows: Sequence[tuple[Any, ...]], layout: int,
                     plans: dict[str, Plan]) -> bytes:
        """The flags of ``rows`` (see the module), in compiled code."""
        listed = rows if type(rows) is list else list(rows)
        flags = _compiled(listed, layout, plans)
        if layout != SQLITE:
            return bytes(flags)
        out = bytearray(flags)
        _sqlite_personal(listed, plans, out, _compiled)
        return bytes(out)
