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

Two layouts, by source: on SQLite the database writes the format tag and the chain row
as one JSON array (``json_array``, :data:`SQLITE`) whose elements are copied as they
are into the payload's arrays (:func:`sqlite_payload`), elsewhere the source row
carries the whole chain row and the format tag (:data:`FULL`), and JSON documents are
put in canonical form here (PostgreSQL's ``JSONB`` text has spaces and its own key
order). A SQLite row with personal JSON keys is checked in the full layout, its chain
row read from that array (:func:`_sqlite_personal`).

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
    "sqlite_elements",
    "sqlite_payload",
    "verify_flags",
]

#: Row layouts: ``HEADER, JSON array [format tag, *chain row]`` (SQLite's json_array),
#: and ``HEADER, *chain row, format tag`` (PostgreSQL, DuckDB).
SQLITE, FULL = 0, 1

#: Flag bits: the row's content matches its hash; it links to the row before it.
VERIFIED, LINKED = 1, 2

_HEADER = 6

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
            at["pii_salt"], at["pii"], at["mac"])
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
        _sqlite_personal(rows, plans, out, _python_full, _personal_rows(rows))
    return bytes(out)


def _python_full(rows: Sequence[tuple[Any, ...]], layout: int,
                 plans: dict[str, Plan]) -> bytes:
    return bytes(_full_ok(row, plans) for row in rows)


def _personal_rows(rows: Sequence[tuple[Any, ...]]) -> list[int]:
    """Where the SQLite rows with personal JSON keys are (the compiled form's flag 4)."""
    return [i for i, row in enumerate(rows)
            if type(row) is tuple and len(row) > _HEADER and type(row[5]) is str
            and type(row[6]) is str and row[5].startswith('{"k": [')]


def _sqlite_personal(rows: Sequence[tuple[Any, ...]], plans: dict[str, Plan],
                     out: bytearray, check: Callable[..., bytes],
                     picked: list[int]) -> None:
    """Set :data:`VERIFIED` in ``out`` for the SQLite rows with personal JSON keys (at
    ``picked``) that verify: each row's whole chain row (from its JSON array) checked in
    the :data:`FULL` layout by ``check`` (compiled or pure), under the plans of the
    exact formats."""
    if not picked:
        return
    full_plans = {tag: plan for tag, plan in plans.items() if tag != format_tag(1)}
    flags = check([_as_full(rows[i]) for i in picked], FULL, full_plans)
    for i, flag in zip(picked, flags, strict=True):
        out[i] |= flag & VERIFIED


def _as_full(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A SQLite source row as a :data:`FULL` one: header, chain row and format tag
    (from the JSON array it carries); ``()`` if unreadable."""
    try:
        array = json.loads(row[6])
    except (ValueError, RecursionError):
        return ()
    if (type(array) is not list or len(array) != 1 + len(CHAIN_ROW_COLUMNS)
            or type(array[0]) is not str):
        return ()
    return (*row[:_HEADER], *array[1:], array[0])


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


#: An element of SQLite's ``json_array`` text: a string (a backslash escapes the next
#: byte) or a bare number or null (split_array in the compiled form).
_ELEMENT = re.compile(rb'"(?:[^"\\]|\\.)*"|[^",\[\]{}]+', re.S)
#: The most elements the compiled form reads from such an array.
MAX_ELEMENTS = 64


def sqlite_elements(text: bytes) -> list[bytes] | None:
    """The top-level elements of a JSON array as SQLite's ``json_array`` writes it, each
    as written (strings with their quotes and escapes); ``None`` for any other text
    (nested arrays or objects too, which an array of columns never holds)."""
    n = len(text)
    if n < 2 or text[:1] != b"[" or text[-1:] != b"]":
        return None
    out: list[bytes] = []
    if n == 2:
        return out
    i = 1
    while True:
        found = _ELEMENT.match(text, i)
        if found is None:
            return None
        i = found.end()
        if len(out) >= MAX_ELEMENTS or i >= n:
            return None
        out.append(found.group())
        if text[i] == 0x5D:  # ]
            return out if i == n - 1 else None
        if text[i] != 0x2C:  # ,
            return None
        i += 1


def _plain_string(element: bytes) -> bytes | None:
    """The text inside a string element without escapes (a salt, a mac), or ``None``."""
    if (len(element) < 2 or element[:1] != b'"' or element[-1:] != b'"'
            or b"\\" in element[1:-1]):
        return None
    return element[1:-1]


def sqlite_payload(row: Any, plans: dict[str, Plan], *, any_salt: bool = False,
                   ) -> tuple[Plan, bytes, bytes, bytes | None] | None:
    """``(plan, personal digest input, payload, mac)`` of a :data:`SQLITE` row without
    personal JSON keys, built from the elements of its array as SQLite wrote them:
    ``salt NUL [personal..., []]`` and ``[tag, stream, seq, prev_hash, body..., null,
    "<digest>"]``, the bytes the sealer hashed when SQLite escapes as it did (the mac:
    the text of its element, when the plan checks one); ``None`` when the row is not
    one to build (the exact check decides it). With ``any_salt`` (the walk's check of a
    row the compiled form refused), a salt with escapes is decoded and an integer salt
    taken as written, as the sealer's text of it."""
    if type(row) is not tuple or len(row) <= _HEADER or row[5] is not None:
        return None
    if type(row[3]) is not str or type(row[6]) is not str:
        return None
    try:
        text = row[6].encode()
    except UnicodeEncodeError:
        return None
    elements = sqlite_elements(text)
    if not elements:
        return None
    tag = elements[0]
    plan = plans.get(tag[1:-1].decode()) if _plain_string(tag) is not None else None
    if plan is None or len(elements) < 4:
        return None
    body_at, personal_at, salt_at, mac_at = plan[2], plan[3], plan[5], plan[7]
    if max(salt_at, mac_at, *body_at, *personal_at) - 5 >= len(elements):
        return None
    salt_element = elements[salt_at - 5]
    salt = b"" if salt_element == b"null" else _plain_string(salt_element)
    if salt is None and any_salt:
        salt = _any_salt(salt_element)
    mac = None
    if plan[1] is not None:
        mac = _plain_string(elements[mac_at - 5])
        if mac is None:
            return None
    if salt is None:
        return None
    personal = b"%s\x00[%s[]]" % (salt, b"".join(elements[at - 5] + b"," for at in personal_at))
    payload = b"[" + b",".join([*elements[:4], *(elements[at - 5] for at in body_at)])
    return plan, personal, payload, mac


def _any_salt(element: bytes) -> bytes | None:
    """A salt element's text: a string's (escapes decoded), an integer's digits."""
    if re.fullmatch(rb"-?[0-9]+", element):
        return element
    if element[:1] != b'"':
        return None
    try:
        text = json.loads(element)
        return text.encode() if type(text) is str else None
    except (ValueError, UnicodeEncodeError):
        return None


def _sqlite_ok(row: tuple[Any, ...], plans: dict[str, Plan]) -> bool:
    built = sqlite_payload(row, plans)
    if built is None:
        return False
    plan, personal, payload, mac = built
    if len(row[3].encode()) != 64:
        return False
    digest = sha256(personal).hexdigest()
    if hash_payload(b'%s,null,"%s"]' % (payload, digest.encode()), plan[0]) != row[3]:
        return False
    return plan[1] is None or (mac is not None and mac.decode() == row_mac(row[3], plan[1]))


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


#: The compiled form's flag of a SQLite row with personal JSON keys (layout 0 only),
#: found with a pattern and cleared with a table.
_PERSONAL = re.compile(b"[\x04-\x07]")
_PERSONAL_OFF = bytes(b & ~4 for b in range(256))

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
        picked = [found.start() for found in _PERSONAL.finditer(flags)]
        if not picked:
            return bytes(flags)
        out = bytearray(flags.translate(_PERSONAL_OFF))
        _sqlite_personal(listed, plans, out, _compiled, picked)
        return bytes(out)
