"""The JSON texts a chained record's hash covers (``docs/integrity.md``), by format.

Format ``otel-audit/1`` compares numbers as doubles; ``otel-audit/2`` hashes every number
by its exact value in one canonical spelling and refuses duplicate keys. Both write
compact JSON with sorted keys and non-ASCII unescaped, through the public ``json`` API
(one :class:`json.JSONEncoder`, shared with the stored texts: ``_jsonsafe``) or orjson
where it writes the same bytes: the format never depends on a private encoder.
:mod:`otel_audit.integrity.canonical` builds the hashed payload from these texts.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any

import orjson

from .._jsonsafe import canonical_dumps

__all__ = [
    "EXACT_VERSION",
    "PAYLOAD_OPTIONS",
    "RISKY_NUMBER",
    "canonical_json",
    "canonical_number",
    "canonical_stored_json",
    "encode_exact",
    "parse_exact",
    "payload_dumps",
    "plain_bytes",
    "rewrite_json",
    "sorted_dumps",
    "v1_canonical_text",
    "v1_json",
    "v1_stored_json",
]

#: The record ``schema_version`` from which rows are sealed under the exact format.
EXACT_VERSION = 2


# compact, UTF-8, sorted keys, no NaN: the one JSON dialect of every payload, the same
# encoder (public json API) that writes the stored texts
sorted_dumps: Callable[[Any], str] = canonical_dumps
_dumps = sorted_dumps


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


def _v1_stored_json(text: str) -> str:
    """Format-1 canonical form of a text written by normalise(): only numbers that a
    JSONB round trip would rewrite need the parse and re-encode."""
    return _v1_json(text) if RISKY_NUMBER.search(text) else text


def _v1_json(text: str) -> str:
    """Format-1 canonical form: compact, sorted keys, large numbers as doubles."""
    return _canonical_text(json.loads(text))


# ------------------------------------------------------------------ format 2: exact numbers

#: A JSON number token; PostgreSQL refuses exponents beyond +-1000 (and so do we: a
#: tampered ``1e999999999`` must not make the verifier write a billion zeros).
_NUMBER = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?(?:[eE]([-+]?[0-9]{1,4}))?")
_MAX_EXPONENT = 1000


def canonical_number(token: str) -> str:
    """The canonical spelling of a JSON number token: its exact value, as PostgreSQL's
    ``numeric`` prints it.

    No exponent; the digits after the point are those written, shifted by the
    exponent (``1.50`` stays ``1.50``, ``1e-07`` is ``0.0000001``, ``1.5e3`` is
    ``1500``, ``1e+16`` is ``10000000000000000``); no sign on zero (``-0.0`` is
    ``0.0``); integers of any size as written. Raises ``ValueError`` for anything else.
    """
    match = _NUMBER.fullmatch(token)
    if match is None or (len(match.group(2)) > 1 and match.group(2)[0] == "0"):
        raise ValueError(f"not a JSON number: {token[:40]!r}")
    sign, whole, fraction, exponent = match.groups()
    fraction = fraction or ""
    shift = int(exponent) if exponent else 0
    if abs(shift) > _MAX_EXPONENT:
        raise ValueError(f"exponent out of range: {token[:40]!r}")
    scale = len(fraction) - shift  # digits after the point
    digits = (whole + fraction).lstrip("0")
    if not digits:
        return "0" if scale <= 0 else "0." + "0" * scale
    if scale <= 0:
        text = digits + "0" * -scale
    elif len(digits) <= scale:
        text = "0." + "0" * (scale - len(digits)) + digits
    else:
        text = f"{digits[:-scale]}.{digits[-scale:]}"
    return sign + text


#: What a number token needs to be rewritten: an exponent, or a negative zero.
_NOT_CANONICAL = re.compile(r"[0-9][eE]|-0(?![0-9]|\.[0-9]*[1-9])")


class _Number:
    """A number of a parsed document, kept as its canonical spelling."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Number) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def _number_object(token: str) -> _Number:
    return _Number(canonical_number(token))


def _number_marked(token: str) -> str:
    return "\x00" + canonical_number(token)


def _exact_spelling(token: str) -> str:
    """``token`` if it is already in canonical spelling; else ``ValueError``."""
    if token != "-0" and (("." not in token and "e" not in token and "E" not in token)
                          or canonical_number(token) == token):
        return token
    raise ValueError(f"a number not in canonical spelling: {token[:40]!r}")


def _strict_object(token: str) -> _Number:
    return _Number(_exact_spelling(token))


def _strict_marked(token: str) -> str:
    return "\x00" + _exact_spelling(token)


_HOOKS = {(False, False): _number_object, (True, False): _number_marked,
          (False, True): _strict_object, (True, True): _strict_marked}


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


# Numbers are parsed as their canonical text. Where no string of the document can hold
# NUL (the text has no \u0000 escape, the only way to write one), that text is carried
# as the string "\0<spelling>", encoded by the C encoder and unquoted afterwards (a
# number's spelling has nothing to escape); otherwise as _Number objects, encoded by
# _encode_exact in Python. Both give the same text.
_MARKED = re.compile(r'"\\u0000([-0-9.]+)"')


#: Where an integer token ``-0`` may be: the only integer whose spelling is not canonical.
_NEGATIVE_ZERO_INT = re.compile(r"(?:^|[\[:,\s])-0(?![0-9.eE])")


def _parse_exact(text: str, *, marked: bool, strict: bool = False,
                 unique_keys: bool = False) -> Any:
    """Parse a stored JSON text for format 2: numbers as their canonical text (``strict``:
    a number written in any other spelling is refused), duplicate keys refused (unless
    the caller knows the text cannot hold any: ``unique_keys``, PostgreSQL ``JSONB``).

    Integers are exact as Python ints and written back as they were, so they are left
    to the parser's own C code unless the text may hold a ``-0``.
    """
    hook = _HOOKS[marked, strict]
    int_hook = hook if _NEGATIVE_ZERO_INT.search(text) else None
    return json.loads(text, parse_int=int_hook, parse_float=hook,
                      parse_constant=_no_constant,
                      object_pairs_hook=None if unique_keys else _unique_keys)


def _unmark(text: str) -> str:
    return _MARKED.sub(r"\1", text) if "\\u0000" in text else text


def _encode_exact(value: Any) -> str:
    """Canonical JSON of a tree whose numbers are _Number objects or ints."""
    if isinstance(value, str):
        return _dumps(value)
    if isinstance(value, _Number):
        return value.text
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is int:  # an integer the parser read itself: exact, written back as read
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(map(_encode_exact, value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_dumps(k)}:{_encode_exact(value[k])}"
                              for k in sorted(value)) + "}"
    raise TypeError(type(value).__name__)


def _exact_text(text: str, *, strict: bool = False, unique_keys: bool = False) -> str:
    """Canonical JSON (format 2) of one stored JSON text."""
    if "\\u0000" in text:
        return _encode_exact(_parse_exact(text, marked=False, strict=strict,
                                          unique_keys=unique_keys))
    return _unmark(_dumps(_parse_exact(text, marked=True, strict=strict,
                                       unique_keys=unique_keys)))


def canonical_stored_json(text: str) -> str:
    """Canonical form of a JSON text written by :func:`otel_audit.record.normalise`.

    normalise() already writes compact, key-sorted JSON with string keys and integers
    as written; only exponent floats and negative zero need the parse and re-encode.
    """
    return _exact_text(text) if _NOT_CANONICAL.search(text) else text


def canonical_json(text: str, *, strict: bool = False) -> str:
    """Return the canonical form (format ``otel-audit/2``) of a JSON document: compact,
    sorted keys, non-ASCII unescaped, every number in :func:`canonical_number`'s exact
    spelling. Raises ``ValueError`` for a document that is not JSON or has an object
    with a duplicate key, and with ``strict`` (what the verifier hashes) for a number
    written in another spelling than the canonical one (``1e-1`` for ``0.1``)."""
    return _exact_text(text, strict=strict)


def rewrite_json(text: str, transform: Callable[[Any], Any], *, version: int) -> str:
    """Apply ``transform`` to the parsed JSON ``text`` and write it back in the row's
    canonical form (an erasure rewriting a stored document): under format 2 every
    number keeps its exact stored spelling (numbers reach ``transform`` as opaque
    objects), under format 1 as Python's ``json`` module writes it."""
    if version >= EXACT_VERSION:
        return _encode_exact(transform(_parse_exact(text, marked=False)))
    return json.dumps(transform(json.loads(text)), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)




# public names for the payload builder (canonical.py) and its tests
plain_bytes = _plain_bytes
v1_canonical_text = _canonical_text
v1_json = _v1_json
v1_stored_json = _v1_stored_json
parse_exact = _parse_exact
encode_exact = _encode_exact
