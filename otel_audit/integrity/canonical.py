"""The canonical serialisation of a chained record and its hash (``docs/integrity.md``).

Writers (the chain sealer) and readers (verify, archives) build the same *chain row* — a
tuple in :data:`CHAIN_ROW_COLUMNS` order with the timestamp as text, booleans as 0/1 and
JSON documents as text — and hand it to :func:`chain_hash`. One function on both sides
means the two can never disagree about the format.

Personal fields are not hashed directly: the hash covers one salted digest of them
(:func:`personal_digest`), so erasing the values (and the salt) while keeping the digest
leaves every hash valid.

Three row formats exist, chosen by the row's ``schema_version`` (which the hash covers):
rows of version 1 are hashed under ``otel-audit/1`` (numbers compared as doubles, as
sealed before exact numbers), rows of version 2 under ``otel-audit/2``: every number
hashed by its exact value in one canonical spelling, and a stored JSON object with a
duplicate key matches no hash (SQLite and DuckDB read the first of two equal keys,
Python and PostgreSQL the last: no reader may see a value that is not the hashed one).
Rows of version 3 (every row this release seals) are hashed under ``otel-audit/3``:
the numbers of format 2, the fields of layout 3 (``auth_method``; ``acting_as`` and
``delegation_chain`` through the personal digest), and a ``hash`` that is always plain
SHA-256, so anyone can verify the chain; a chain's HMAC key yields a separate ``mac``
(:func:`row_mac`) over the hash. Rows of versions 1 and 2 keep their keyed hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import operator
import re
from collections.abc import Iterator, Sequence
from itertools import accumulate, repeat
from typing import Any

from ..record import JSON_FIELDS
from ..store.schema import (
    HASHED_FIELDS,
    LEGACY_HASHED_FIELDS,
    LEGACY_PERSONAL_FIELDS,
    PERSONAL_FIELDS,
    ROW_COLUMNS,
)
from .canonical_json import (  # the JSON texts of each format; re-exported names below
    EXACT_VERSION,
    PAYLOAD_OPTIONS,
    RISKY_NUMBER,
    _canonical_text,
    _dumps,  # noqa: F401 - imported from here by tests of the pipeline
    _encode_exact,
    _exact_text,
    _parse_exact,
    _plain_bytes,
    _v1_json,
    canonical_json,
    canonical_number,
    canonical_stored_json,
    payload_dumps,
    rewrite_json,
)

__all__ = [
    "CHAIN_ROW_COLUMNS",
    "EXACT_FORMAT",
    "EXACT_VERSION",
    "FORMAT",
    "GENESIS_HASH",
    "HASHED_FIELDS",
    "LEGACY_HASHED_FIELDS",
    "LEGACY_PERSONAL_FIELDS",
    "PAYLOAD_OPTIONS",
    "PERSONAL_FIELDS",
    "PUBLIC_FORMAT",
    "PUBLIC_VERSION",
    "RISKY_NUMBER",
    "canonical_json",
    "canonical_number",
    "canonical_stored_json",
    "chain_hash",
    "format_tag",
    "hash_payload",
    "hashed_fields",
    "mac_ok",
    "payload_parts",
    "personal_digest",
    "personal_fields",
    "pii_info",
    "plain_chain_hashes",
    "rewrite_json",
    "row_mac",
    "row_version",
    "seal_digest",
    "stored_hash",
    "stored_mac",
    "v1_float_spellings",
]

#: First element of the payload of rows sealed under the first rules (schema_version 1);
#: also the prefix of checkpoint signatures, which did not change.
FORMAT = "otel-audit/1"

#: First element of the payload of rows of schema_version >= EXACT_VERSION: exact
#: numbers, no duplicate keys (``docs/integrity.md``).
EXACT_FORMAT = "otel-audit/2"


#: The record ``schema_version`` sealed under :data:`PUBLIC_FORMAT` (this release's).
PUBLIC_VERSION = 3

#: First element of the payload of rows of ``schema_version`` 3: format 2's numbers, the
#: fields of layout 3, ``hash`` always SHA-256 (the HMAC apart, in ``mac``).
PUBLIC_FORMAT = "otel-audit/3"

#: ``prev_hash`` of the first record of every stream.
GENESIS_HASH = "0" * 64

#: Layout of a chain row: what readers select and the sealer builds (the store's row).
CHAIN_ROW_COLUMNS = ROW_COLUMNS

_N = len(LEGACY_HASHED_FIELDS)
_BODY = slice(3, 3 + _N)  # formats 1 and 2: the row's own order
_PERSONAL = slice(3 + _N, 3 + _N + len(LEGACY_PERSONAL_FIELDS))
_SALT, _PII, _HASH = (ROW_COLUMNS.index(name) for name in ("pii_salt", "pii", "hash"))
_MAC = ROW_COLUMNS.index("mac")
#: the JSON documents of the body (masked for personal JSON keys): the same positions in
#: the body of every format
_BODY_JSON = tuple(name for name in JSON_FIELDS if name not in PERSONAL_FIELDS)
_JSON_POS = tuple(LEGACY_HASHED_FIELDS.index(name) for name in _BODY_JSON)
assert tuple(HASHED_FIELDS.index(name) for name in _BODY_JSON) == _JSON_POS
_VERSION_POS = ROW_COLUMNS.index("schema_version")
#: format 3: where the row holds each hashed and each personal field
_BODY3_POS = tuple(ROW_COLUMNS.index(name) for name in HASHED_FIELDS)
_PERSONAL3_POS = tuple(ROW_COLUMNS.index(name) for name in PERSONAL_FIELDS)
#: format 3: the personal fields holding a JSON document (hashed as canonical text)
_PERSONAL3_JSON = tuple(i for i, name in enumerate(PERSONAL_FIELDS) if name in JSON_FIELDS)
#: Replaces a personal value inside a JSON document in the hashed text.
PII_MARK = "$pii"


_BARE_INTEGER = re.compile(r"-?[0-9]{1,16}")


def v1_float_spellings(row: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
    """Variants of a format-1 row whose bare integer JSON documents (``0``) are written
    as the float a SQLite store from before migration 0004 may have turned into that
    integer (``0.0``, ``-0.0``'s format-1 form; ``5.0``).

    A JSON column then had NUMERIC affinity: the sealed text ``0.0`` was stored as the
    INTEGER 0, and the migration could only write it back as ``0``. Under format 1
    numbers are compared as doubles, so ``0`` and ``0.0`` are the same value. Nothing
    for rows of later formats (their stores keep the text).
    """
    if row_version(row) >= EXACT_VERSION:
        return
    positions = [3 + pos for pos in _JSON_POS
                 if isinstance(row[3 + pos], str) and _BARE_INTEGER.fullmatch(row[3 + pos])]
    for chosen in range(1, 1 << len(positions)):
        variant = list(row)
        for bit, pos in enumerate(positions):
            if chosen >> bit & 1:
                variant[pos] = repr(float(int(variant[pos])))
        yield tuple(variant)


def row_version(row: Sequence[Any]) -> int:
    """The rules a chain row is hashed under: :data:`PUBLIC_VERSION` for rows of
    ``schema_version`` 3 and later, :data:`EXACT_VERSION` for 2, else 1."""
    try:
        version = int(row[_VERSION_POS])
    except (TypeError, ValueError):
        return 1
    if version >= PUBLIC_VERSION:
        return PUBLIC_VERSION
    return EXACT_VERSION if version >= EXACT_VERSION else 1


def format_tag(version: int) -> str:
    """The payload's first element for rows hashed under the rules of ``version``
    (:func:`row_version`)."""
    if version >= PUBLIC_VERSION:
        return PUBLIC_FORMAT
    return EXACT_FORMAT if version >= EXACT_VERSION else FORMAT


def hashed_fields(version: int) -> tuple[str, ...]:
    """The fields a row of ``version``'s rules (:func:`row_version`) hashes as stored, in
    payload order."""
    return HASHED_FIELDS if version >= PUBLIC_VERSION else LEGACY_HASHED_FIELDS


def personal_fields(version: int) -> tuple[str, ...]:
    """The fields a row of ``version``'s rules (:func:`row_version`) hashes only through
    its personal digest (what an erasure may replace), in digest order."""
    return PERSONAL_FIELDS if version >= PUBLIC_VERSION else LEGACY_PERSONAL_FIELDS


def _mask(value: Any, keys: frozenset[str], found: list[Any]) -> Any:
    """Replace values under personal ``keys`` by :data:`PII_MARK`, collecting them in order."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key in sorted(value):
            item = value[key]
            if key in keys:
                found.append(item)
                out[key] = PII_MARK
            else:
                out[key] = _mask(item, keys, found)
        return out
    if isinstance(value, list):
        return [_mask(item, keys, found) for item in value]
    return value


def personal_digest(salt: str, personal: Sequence[Any], json_values: Sequence[Any], *,
                    version: int = 1) -> str:
    """SHA-256 of ``salt`` and the personal values of one record (fields, then JSON values).

    ``json_values`` come from :func:`personal_json_values` with the same ``version``
    (the row's, :func:`row_version`).
    """
    items = [*personal, list(json_values)]
    if version >= EXACT_VERSION and json_values:  # numbers as _Number objects
        return hashlib.sha256(f"{salt}\x00{_encode_exact(items)}".encode()).hexdigest()
    if json_values:  # any JSON value, floats included: the canonical text
        return hashlib.sha256(f"{salt}\x00{_canonical_text(items)}".encode()).hexdigest()
    return hashlib.sha256(b"%s\x00%s" % (salt.encode(), _plain_bytes(items))).hexdigest()


def personal_json_values(texts: Sequence[str | None], keys: Sequence[str], *,
                         version: int = 1) -> list[Any]:
    """The values under personal ``keys`` in JSON ``texts``, in hashing order."""
    found: list[Any] = []
    frozen = frozenset(keys)
    for text in texts:
        if text is not None:
            if version >= EXACT_VERSION:
                _mask(_parse_exact(text, marked=False, strict=True), frozen, found)
            else:
                _mask(json.loads(text), frozen, found)
    return found


def chain_hash(row: Sequence[Any], key: bytes | None, *, canonicalise: bool = True,
               unique_keys: bool = False) -> str:
    """Return the hash of one chain row (``CHAIN_ROW_COLUMNS`` order; ``hash`` is ignored).

    The row's ``schema_version`` chooses the rules (:func:`row_version`); ``key`` keys the
    hash of rows of formats 1 and 2 only (a format-3 hash is always SHA-256: its MAC is
    :func:`row_mac`). ``canonicalise=False`` trusts that JSON texts are already canonical
    (the sealer's own output, SQLite's stored text); readers retry with ``True`` before
    reporting a change. ``unique_keys`` skips the duplicate-key check for texts that
    cannot hold one (what PostgreSQL's ``JSONB`` returns).
    """
    parts = payload_parts(row, canonicalise, unique_keys)
    if parts is None:
        return INVALID
    if parts[0] == PUBLIC_FORMAT:
        key = None
    return hash_payload(_plain_bytes(parts), key)


def row_mac(hash_hex: str, key: bytes) -> str:
    """The ``mac`` of a format-3 row: HMAC-SHA256 with the chain's ``key`` over its
    ``hash`` (the 64 hex characters, ASCII), hex. The hash commits to the whole payload,
    so the MAC authenticates the row as a MAC over the payload would, at the cost of one
    64-byte HMAC."""
    # HMAC-SHA256 through hash_payload's cached pads: a third of hmac.new's time here
    return hash_payload(hash_hex.encode("ascii", "replace"), key)


def mac_ok(row: Sequence[Any], key: bytes | None) -> bool:
    """Whether a chain row verified with the chain's ``key`` carries the ``mac`` of its
    stored hash: rows of format 3 must (:func:`row_mac`); older rows, and any row
    verified without a key, need none (their keyed hash is the check)."""
    if key is None or row_version(row) < PUBLIC_VERSION:
        return True
    mac, digest = stored_mac(row), stored_hash(row)
    return (isinstance(mac, str) and isinstance(digest, str)
            and hmac.compare_digest(mac, row_mac(digest, key)))


def stored_mac(row: Sequence[Any]) -> str | None:
    """The ``mac`` a chain row carries (``None``: none, or a row of an older layout)."""
    if len(row) <= _MAC:
        return None
    value: str | None = row[_MAC]
    return value


def seal_digest(row: Sequence[Any]) -> str | None:
    """The personal digest a chain row's hash covers (``None``: the row is malformed).

    With the row's ``pii`` keys it stands for the row's personal values in the erased
    form ``{"k": keys, "d": digest}`` (``docs/integrity.md``).
    """
    parts = payload_parts(row, False, False)
    return None if parts is None else str(parts[-1])


def payload_parts(row: Sequence[Any], canonicalise: bool = True,
                  unique_keys: bool = False) -> list[Any] | None:
    """The elements of a chain row's payload (``docs/integrity.md``), or ``None`` for a
    row no hash can match: format tag, ``stream``, ``seq``, ``prev_hash``, the
    :func:`hashed_fields` of the row's format, the personal JSON keys and the personal
    digest. ``canonicalise`` and ``unique_keys`` as for :func:`chain_hash`."""
    version = row_version(row)
    if version >= PUBLIC_VERSION:
        if len(row) != len(ROW_COLUMNS):
            return None
        body = [row[pos] for pos in _BODY3_POS]
        personal = [row[pos] for pos in _PERSONAL3_POS]
    else:
        body = list(row[_BODY])
        personal = list(row[_PERSONAL])
    keys: list[str] | None = None
    erased: str | None = None
    if row[_PII] is not None:
        parsed = pii_info(row[_PII])
        if parsed is None:
            return None
        keys, erased = parsed
    exact = version >= EXACT_VERSION
    found: list[Any] = []
    try:
        if exact:
            _exact_body(body, keys, canonicalise, found, unique_keys)
            if version >= PUBLIC_VERSION and erased is None:
                for pos in _PERSONAL3_JSON:  # delegation_chain: its canonical text
                    text = personal[pos]
                    if text is not None:
                        if not isinstance(text, str):
                            raise TypeError(type(text).__name__)
                        if canonicalise:
                            personal[pos] = _exact_text(text, strict=True,
                                                        unique_keys=unique_keys)
        elif keys:
            frozen = frozenset(keys)
            for pos in _JSON_POS:
                text = body[pos]
                if text is not None:
                    body[pos] = _canonical_text(_mask(json.loads(text), frozen, found))
        elif canonicalise:
            for pos in _JSON_POS:
                text = body[pos]
                if text is not None:
                    body[pos] = _v1_json(text)
    except (ValueError, TypeError, RecursionError):
        return None  # not JSON, a duplicate key (a tampered row): matches no hash
    if erased is not None:
        digest = erased
    else:
        salt = row[_SALT]
        digest = personal_digest("" if salt is None else salt, personal, found,
                                 version=EXACT_VERSION if exact else 1)
    return [format_tag(version), row[0], row[1], row[2], *body, keys, digest]


def _exact_body(body: list[Any], keys: list[str] | None, canonicalise: bool,
                found: list[Any], unique_keys: bool = False) -> None:
    """Format 2: JSON texts of ``body`` in canonical form, personal values masked (into
    ``found``, as _Number objects for numbers)."""
    if keys:
        frozen = frozenset(keys)
        for pos in _JSON_POS:
            text = body[pos]
            if text is not None:
                if not isinstance(text, str):
                    raise TypeError(type(text).__name__)
                body[pos] = _encode_exact(_mask(_parse_exact(
                    text, marked=False, strict=True, unique_keys=unique_keys), frozen, found))
    elif canonicalise:
        for pos in _JSON_POS:
            text = body[pos]
            if text is not None:
                if not isinstance(text, str):
                    raise TypeError(type(text).__name__)
                body[pos] = _exact_text(text, strict=True, unique_keys=unique_keys)


def plain_chain_hashes(
    stream: str,
    seqs: Sequence[int],
    prev_hash: str,
    bodies: Sequence[tuple[Any, ...]],
    personals: Sequence[tuple[Any, ...]],
    salts: Sequence[str],
    key: bytes | None,
) -> tuple[list[str], list[str]]:
    """The hashes (and MACs) of consecutive chain rows, computed a batch at a time.

    Rows are sealed under :data:`PUBLIC_FORMAT` (``schema_version`` 3): for rows without
    personal JSON keys (``pii`` NULL) whose JSON texts are canonical, each hash equals
    :func:`chain_hash` of the row with ``canonicalise=False``; the tests hold the two to
    that. ``bodies`` are the :data:`HASHED_FIELDS` of each row, ``personals`` its
    :data:`PERSONAL_FIELDS` (JSON documents as their canonical text). The hashes are
    SHA-256; with ``key`` the second list holds each row's :func:`row_mac` (else it is
    empty). Serialising and digesting run through C-level ``map`` and ``zip``; only the
    chaining itself (each payload holds the previous hash) is a Python step per row.
    Raises ``TypeError`` for a value orjson refuses (the caller takes the row-by-row
    path).
    """
    dumps = payload_dumps
    salted = map(str.encode, map(str.__add__, salts, repeat("\x00")))
    items = map(dumps, map(tuple.__add__, personals, repeat(((),))))
    digests = list(map(_HEXDIGEST, map(hashlib.sha256, map(bytes.__add__, salted, items))))
    # payload = [FORMAT, stream, seq, "prev", *body, null, "digest"], split around prev
    head = (b"[%s,%s," % (dumps(PUBLIC_FORMAT), dumps(stream))).replace(b"%", b"%%") + b'%d,"'
    tails = map(dumps, map(tuple.__add__, bodies, zip(repeat(None), digests)))
    after = map(bytes.__add__, repeat(b'",'), map(_AFTER_BRACKET, tails))
    parts = zip(map(head.__mod__, seqs), after, strict=False)

    def link(prev: str, part: tuple[bytes, bytes]) -> str:
        return hashlib.sha256(b"".join((part[0], prev.encode(), part[1]))).hexdigest()

    hashes = list(accumulate(parts, link, initial=prev_hash))[1:]
    if key is None:
        return hashes, []
    return hashes, [row_mac(h, key) for h in hashes]


_HEXDIGEST = operator.methodcaller("hexdigest")
_AFTER_BRACKET = operator.itemgetter(slice(1, None))


#: What :func:`chain_hash` returns for a row it cannot read; no stored hash equals it.
INVALID = "invalid"

_HEX64 = re.compile(r"[0-9a-f]{64}")


def pii_info(text: str) -> tuple[list[str] | None, str | None] | None:
    """``(personal JSON keys, erased digest)`` of a ``pii`` value; ``None`` if malformed."""
    try:
        info = json.loads(text)
    except ValueError:
        return None
    if not isinstance(info, dict) or not set(info) <= {"k", "d"}:
        return None
    keys = info.get("k")
    digest = info.get("d")
    if keys is not None and not (isinstance(keys, list) and keys
                                 and all(isinstance(k, str) for k in keys)):
        return None
    if digest is not None and not (isinstance(digest, str) and _HEX64.fullmatch(digest)):
        return None
    if keys is None and digest is None:
        return None
    if json.dumps(info) != text:  # only the exact text the sealer or an erasure writes
        return None
    return keys, digest


_pads: dict[bytes, tuple[Any, Any]] = {}


def hash_payload(payload: bytes, key: bytes | None) -> str:
    """SHA-256 of ``payload``, or HMAC-SHA256 with ``key`` (RFC 2104, pads precomputed)."""
    if key is None:
        return hashlib.sha256(payload).hexdigest()
    pads = _pads.get(key)
    if pads is None:
        block = hashlib.sha256(key).digest() if len(key) > 64 else key
        block = block.ljust(64, b"\0")
        pads = (hashlib.sha256(bytes(b ^ 0x36 for b in block)),
                hashlib.sha256(bytes(b ^ 0x5C for b in block)))
        _pads[key] = pads
    inner = pads[0].copy()
    inner.update(payload)
    outer = pads[1].copy()
    outer.update(inner.digest())
    return str(outer.hexdigest())


def stored_hash(row: Sequence[Any]) -> str | None:
    """The ``hash`` a chain row carries."""
    value: str | None = row[_HASH]
    return value
