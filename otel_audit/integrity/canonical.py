"""The canonical serialisation of a chained record and its hash (``docs/integrity.md``).

Writers (the chain sealer) and readers (verify, archives) build the same *chain row* — a
tuple in :data:`CHAIN_ROW_COLUMNS` order with the timestamp as text, booleans as 0/1 and
JSON documents as text — and hand it to :func:`chain_hash`. One function on both sides
means the two can never disagree about the format.

Personal fields are not hashed directly: the hash covers one salted digest of them
(:func:`personal_digest`), so erasing the values (and the salt) while keeping the digest
leaves every hash valid.
"""

from __future__ import annotations

import functools
import hashlib
import json
import operator
import re
from collections.abc import Sequence
from itertools import accumulate, repeat
from json.encoder import c_encode_basestring, c_make_encoder  # type: ignore[attr-defined]
from typing import Any

import orjson

from ..record import JSON_FIELDS
from ..store.schema import HASHED_FIELDS, PERSONAL_FIELDS, ROW_COLUMNS

__all__ = [
    "CHAIN_ROW_COLUMNS",
    "FORMAT",
    "GENESIS_HASH",
    "HASHED_FIELDS",
    "PAYLOAD_OPTIONS",
    "PERSONAL_FIELDS",
    "RISKY_NUMBER",
    "canonical_json",
    "canonical_stored_json",
    "chain_hash",
    "hash_payload",
    "personal_digest",
    "pii_info",
    "plain_chain_hashes",
]

#: First element of every canonical payload (bumped if the format ever changes).
FORMAT = "otel-audit/1"

#: ``prev_hash`` of the first record of every stream.
GENESIS_HASH = "0" * 64

#: Layout of a chain row: what readers select and the sealer builds (the store's row).
CHAIN_ROW_COLUMNS = ROW_COLUMNS

_N = len(HASHED_FIELDS)
_BODY = slice(3, 3 + _N)
_PERSONAL = slice(3 + _N, 3 + _N + len(PERSONAL_FIELDS))
_SALT, _PII, _HASH = 3 + _N + 4, 3 + _N + 5, 3 + _N + 6
_JSON_POS = tuple(HASHED_FIELDS.index(name) for name in JSON_FIELDS)
#: Replaces a personal value inside a JSON document in the hashed text.
PII_MARK = "$pii"


def _reject(value: object) -> Any:
    raise TypeError(type(value).__name__)


# compact, UTF-8, sorted keys, no NaN: the one JSON dialect of every payload
_sorted_encoder = c_make_encoder(None, _reject, c_encode_basestring, None, ":", ",",
                                 True, False, False)


def _dumps(value: Any) -> str:
    return "".join(_sorted_encoder(value, 0))


# For what payloads hold (str, int, None and lists of them) orjson writes exactly the
# bytes of the encoder above, UTF-8 encoded: the same escapes, no ASCII escaping,
# compact (checked over every code point in tests/integrity). Anything else it might
# render differently (subclasses, dates, integers over 64 bits) is refused and takes
# the stdlib encoder, so the format never depends on which encoder ran.
PAYLOAD_OPTIONS = (orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATETIME
                   | orjson.OPT_PASSTHROUGH_DATACLASS)


#: The payload serialiser (refuses what it could render differently from the stdlib).
payload_dumps = functools.partial(orjson.dumps, option=PAYLOAD_OPTIONS)


def _plain_bytes(items: list[Any]) -> bytes:
    """UTF-8 of ``_dumps(items)`` for payloads without floats or JSON values."""
    try:
        return payload_dumps(items)
    except TypeError:  # orjson.JSONEncodeError included
        return _dumps(items).encode()


# Numbers a JSONB round trip rewrites: large integers or exponent floats (PostgreSQL
# prints 1e+20 as 100000000000000000000) and negative zero (numeric has none).
RISKY_NUMBER = re.compile(r"\d{16}|-0\.0(?![0-9])")


def _parse_int(text: str) -> int | float:
    number = int(text)
    if abs(number) >= 10**16:
        try:
            return float(number)
        except OverflowError:
            return number
    return number


def _parse_float(text: str) -> float:
    number = float(text)
    return 0.0 if number == 0 else number


def _canonical_text(value: Any) -> str:
    text = _dumps(value)
    if RISKY_NUMBER.search(text):
        text = _dumps(json.loads(text, parse_int=_parse_int, parse_float=_parse_float))
    return text


def canonical_stored_json(text: str) -> str:
    """Canonical form of a JSON text written by :func:`otel_audit.record.normalise`.

    normalise() already writes compact, key-sorted JSON with string keys; only numbers
    that a JSONB round trip would rewrite need the parse and re-encode.
    """
    return canonical_json(text) if RISKY_NUMBER.search(text) else text


def canonical_json(text: str) -> str:
    """Return the canonical form of a JSON document: compact, sorted keys, stable numbers."""
    return _canonical_text(json.loads(text))


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


def personal_digest(salt: str, personal: Sequence[Any], json_values: Sequence[Any]) -> str:
    """SHA-256 of ``salt`` and the personal values of one record (fields, then JSON values)."""
    items = [*personal, list(json_values)]
    if json_values:  # any JSON value, floats included: the canonical text
        return hashlib.sha256(f"{salt}\x00{_canonical_text(items)}".encode()).hexdigest()
    return hashlib.sha256(b"%s\x00%s" % (salt.encode(), _plain_bytes(items))).hexdigest()


def personal_json_values(texts: Sequence[str | None], keys: Sequence[str]) -> list[Any]:
    """The values under personal ``keys`` in JSON ``texts``, in hashing order."""
    found: list[Any] = []
    frozen = frozenset(keys)
    for text in texts:
        if text is not None:
            _mask(json.loads(text), frozen, found)
    return found


def chain_hash(row: Sequence[Any], key: bytes | None, *, canonicalise: bool = True) -> str:
    """Return the hash of one chain row (``CHAIN_ROW_COLUMNS`` order; ``hash`` is ignored).

    ``canonicalise=False`` trusts that JSON texts are already canonical (the sealer's own
    output, SQLite's stored text); readers retry with ``True`` before reporting a change.
    """
    body = list(row[_BODY])
    keys: list[str] | None = None
    erased: str | None = None
    if row[_PII] is not None:
        parsed = pii_info(row[_PII])
        if parsed is None:
            return INVALID
        keys, erased = parsed
    found: list[Any] = []
    try:
        if keys:
            frozen = frozenset(keys)
            for pos in _JSON_POS:
                text = body[pos]
                if text is not None:
                    body[pos] = _canonical_text(_mask(json.loads(text), frozen, found))
        elif canonicalise:
            for pos in _JSON_POS:
                text = body[pos]
                if text is not None:
                    body[pos] = canonical_json(text)
    except (ValueError, TypeError, RecursionError):
        return INVALID  # not JSON (a tampered row): matches no hash
    if erased is not None:
        digest = erased
    else:
        salt = row[_SALT]
        digest = personal_digest("" if salt is None else salt, row[_PERSONAL], found)
    return hash_payload(_plain_bytes([FORMAT, row[0], row[1], row[2], *body, keys, digest]), key)


def plain_chain_hashes(
    stream: str,
    seqs: Sequence[int],
    prev_hash: str,
    bodies: Sequence[tuple[Any, ...]],
    personals: Sequence[tuple[Any, ...]],
    salts: Sequence[str],
    key: bytes | None,
) -> list[str]:
    """The hashes of consecutive chain rows, computed a batch at a time.

    For rows without personal JSON keys (``pii`` NULL) whose JSON texts are canonical,
    each hash equals :func:`chain_hash` of the row with ``canonicalise=False``; the
    tests hold the two to that. ``bodies`` are the :data:`HASHED_FIELDS` of each row,
    ``personals`` its :data:`PERSONAL_FIELDS`. Serialising and digesting run through
    C-level ``map`` and ``zip``; only the chaining itself (each payload holds the
    previous hash) is a Python step per row. Raises ``TypeError`` for a value orjson
    refuses (the caller takes the row-by-row path).
    """
    dumps = payload_dumps
    salted = map(str.encode, map(str.__add__, salts, repeat("\x00")))
    items = map(dumps, map(tuple.__add__, personals, repeat(((),))))
    digests = list(map(_HEXDIGEST, map(hashlib.sha256, map(bytes.__add__, salted, items))))
    # payload = [FORMAT, stream, seq, "prev", *body, null, "digest"], split around prev
    head = (b"[%s,%s," % (dumps(FORMAT), dumps(stream))).replace(b"%", b"%%") + b'%d,"'
    tails = map(dumps, map(tuple.__add__, bodies, zip(repeat(None), digests)))
    after = map(bytes.__add__, repeat(b'",'), map(_AFTER_BRACKET, tails))
    parts = zip(map(head.__mod__, seqs), after, strict=False)

    def link(prev: str, part: tuple[bytes, bytes]) -> str:
        return hash_payload(b"".join((part[0], prev.encode(), part[1])), key)

    if key is None:  # the same as hash_payload(..., None), one call less per row
        def link(prev: str, part: tuple[bytes, bytes]) -> str:
            return hashlib.sha256(b"".join((part[0], prev.encode(), part[1]))).hexdigest()

    return list(accumulate(parts, link, initial=prev_hash))[1:]


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
