"""PostgreSQL's COPY text format read back into rows: how the verifier reads a PostgreSQL
store (``COPY (SELECT ...) TO STDOUT``, :class:`~.sources.StoreSource`) without the
driver building each column of each row.

:func:`copy_rows` takes COPY text (columns separated by a tab, rows ended by a newline)
and one kind per column (``t``: text, ``i``: integer) and returns the tuples of every
complete row (their values in ``order``: column positions, a column may come more than
once or not at all) and how many bytes they took: a row not yet ended stays for the next call,
so the text may be split anywhere between read blocks. A field of exactly ``\\N`` is
``None``; escapes are read as PostgreSQL's ``COPY FROM`` reads them (``\\b \\f \\n \\r \\t
\\v``, ``\\`` and 1 to 3 octal digits, ``\\x`` and 1 or 2 hex digits, a backslash before
any other character is that character). Text is decoded as UTF-8, strictly
(``UnicodeDecodeError``); an integer field must be ``-?[0-9]+`` and a row must have one
field per kind (else ``ValueError``).

The compiled form (``otel_audit._speedups.copy_rows``, otel_audit/_speedups_copyparse.c)
and :func:`python_copy_rows` give the same results; the tests hold them to it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["copy_rows", "python_copy_rows"]

#: The most columns a row may have.
MAX_COLUMNS = 256

_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)", re.S)
_SIMPLE = {ord(k): v for k, v in zip("bfnrtv", b"\b\f\n\r\t\v", strict=True)}
_INTEGER = re.compile(rb"-?[0-9]+")
_NULL = b"\\N"


def _one(match: re.Match[bytes]) -> bytes:
    escape = match.group(1)
    first = escape[0]
    if first == 0x78 and len(escape) > 1:  # \xHH
        return bytes((int(escape[1:], 16),))
    if 0x30 <= first <= 0x37:  # \NNN
        return bytes((int(escape, 8) & 0xFF,))
    return bytes((_SIMPLE.get(first, first),))


def _split(line: bytes) -> list[bytes]:
    """The raw fields of a line holding escapes (a backslash escapes a tab too)."""
    fields, start, i, n = [], 0, 0, len(line)
    while i < n:
        c = line[i]
        if c == 0x5C:
            i += 2
            continue
        if c == 0x09:
            fields.append(line[start:i])
            start = i + 1
        i += 1
    fields.append(line[start:])
    return fields


def _check(kinds: bytes, order: tuple[int, ...]) -> None:
    if not isinstance(kinds, bytes):
        raise TypeError("copy_rows: kinds must be bytes")
    if not 1 <= len(kinds) <= MAX_COLUMNS:
        raise ValueError("copy_rows: 1 to 256 columns")
    if kinds.strip(b"ti"):
        raise ValueError("copy_rows: a kind is not 't' or 'i'")
    if not isinstance(order, tuple) or len(order) > MAX_COLUMNS:
        raise TypeError("copy_rows: order must be a tuple of up to 256 positions")
    if not all(isinstance(at, int) and 0 <= at < len(kinds) for at in order):
        raise ValueError("copy_rows: a position is not a column's")


def python_copy_rows(data: Any, kinds: bytes, order: tuple[int, ...],
                     ) -> tuple[list[tuple[Any, ...]], int]:
    """The rows of ``data`` (see the module) and the bytes they took: the pure form."""
    _check(kinds, order)
    data = bytes(data)
    width = len(kinds)
    rows: list[tuple[Any, ...]] = []
    at, size = 0, len(data)
    while at < size:
        end = data.find(b"\n", at)
        while end >= 0:  # a newline after an odd run of backslashes is escaped
            k = end
            while k > at and data[k - 1] == 0x5C:
                k -= 1
            if (end - k) % 2 == 0:
                break
            end = data.find(b"\n", end + 1)
        if end < 0:
            break
        line = data[at:end]
        fields = line.split(b"\t")
        if b"\\" in line and any(b"\\" in f and f != _NULL for f in fields):
            fields = _split(line)
        if len(fields) != width:
            raise ValueError(f"copy_rows: a row not of {width} columns")
        row: list[Any] = []
        for raw, kind in zip(fields, kinds, strict=True):
            if raw == _NULL:
                row.append(None)
                continue
            text = _ESCAPE.sub(_one, raw) if b"\\" in raw else raw
            if kind == 0x74:
                row.append(text.decode("utf-8"))
            elif _INTEGER.fullmatch(text):
                row.append(int(text))
            else:
                raise ValueError("copy_rows: an integer column holds a non-integer")
        rows.append(tuple([row[at] for at in order]))
        at = end + 1
    return rows, at


copy_rows: Callable[[Any, bytes, tuple[int, ...]], tuple[list[tuple[Any, ...]], int]]
try:
    from .._accel import copy_rows
except ImportError:  # pragma: no cover - depends on the build
    copy_rows = python_copy_rows

#: Whether :func:`copy_rows` is the compiled form (the verifier reads PostgreSQL as COPY
#: text only then: the pure form is slower than the driver's own fetch).
COMPILED = copy_rows is not python_copy_rows
