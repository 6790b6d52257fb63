"""The SQLite layout of the verifier's fast path: one JSON array a row (fastwalk.SQLITE).

SQLite writes the format tag and the chain row as one ``json_array``; the verifier
copies its elements into the personal digest's input and the payload
(:func:`~otel_audit.integrity.fastwalk.sqlite_payload`, ``split_array`` in C). These
tests hold that to the arrays SQLite itself builds column by column (the reference the
layout replaces), on hostile values: separators, quotes, backslashes, NUL and control
characters, multi-byte UTF-8, huge texts, NULLs, integers, reals, BLOBs; and the
compiled flags to the pure-Python ones on hostile array texts.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from otel_audit import _accel
from otel_audit.integrity import fastwalk
from otel_audit.integrity.canonical import (
    CHAIN_ROW_COLUMNS,
    EXACT_FORMAT,
    EXACT_VERSION,
    FORMAT,
    HASHED_FIELDS,
    LEGACY_HASHED_FIELDS,
    LEGACY_PERSONAL_FIELDS,
    PERSONAL_FIELDS,
    PUBLIC_FORMAT,
    PUBLIC_VERSION,
    hash_payload,
    row_mac,
)
from otel_audit.integrity.fastwalk import SQLITE, VERIFIED, sqlite_elements, sqlite_payload
from otel_audit.integrity.sources import _HEADER_SQL, _SQLITE_ARRAY_SQL

KEY = b"array-key"

compiled = pytest.mark.skipif(getattr(_accel, "verify_flags", None) is None,
                              reason="the compiled module is not built (or forced off)")


def _cols(names: tuple[str, ...]) -> str:
    return ", ".join(f'"{n}"' for n in names)


_FORMAT_SQL = (f"CASE WHEN schema_version >= {EXACT_VERSION} THEN '{EXACT_FORMAT}' "
               f"ELSE '{FORMAT}' END")
#: The reference: the personal array and the payload without its last two elements as
#: SQLite builds them column by column (the SQLite layout before the one array).
_REFERENCE_SQL = (
    f"CASE WHEN schema_version >= {PUBLIC_VERSION} "
    f"THEN json_array({_cols(PERSONAL_FIELDS)}, json('[]')) "
    f"ELSE json_array({_cols(LEGACY_PERSONAL_FIELDS)}, json('[]')) END, "
    f"CASE WHEN schema_version >= {PUBLIC_VERSION} "
    f"THEN json_array('{PUBLIC_FORMAT}', stream, seq, prev_hash, {_cols(HASHED_FIELDS)}) "
    f"ELSE json_array({_FORMAT_SQL}, stream, seq, prev_hash, "
    f"{_cols(LEGACY_HASHED_FIELDS)}) END")

HOSTILE: list[Any] = [
    None, "", "plain", 'a "quoted" text', "back\\slash", "\\", '\\"', '"', "comma, and ]",
    "[1, 2]", '{"k": [1]}', "nul\x00inside", "\x00", "\x01\x1f\x7f", "tab\tline\nreturn\r",
    "\b\f", "é€😀", "𝄞 multi-byte", "\u2028\u2029", "x" * 100_000, "null", "]", "[", ",",
    0, -1, 12345678901234567, -(2 ** 63), 2 ** 63 - 1, 1.5, -0.0, 1e300, 0.1,
]


def _store(values: list[Any], version: int, key: bytes | None,
           salts: list[Any] | None = None) -> sqlite3.Connection:
    """A table of chain rows with ``values`` spread over every column but the chain's,
    hashed as the reference payload says (so the rows verify when built as it)."""
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE TABLE audit_trails ({_cols(CHAIN_ROW_COLUMNS)})")
    free = [n for n in CHAIN_ROW_COLUMNS if n not in (
        "stream", "seq", "prev_hash", "hash", "pii", "schema_version", "mac")]
    for i in range(len(values)):
        row: dict[str, Any] = {n: values[(i + j) % len(values)] for j, n in enumerate(free)}
        row.update(stream="s", seq=i + 1, prev_hash=f"{i:064x}", hash=None, pii=None,
                   schema_version=version, mac=None)
        if not isinstance(row["pii_salt"], str) or "\\" in row["pii_salt"] or '"' in \
                row["pii_salt"] or any(ord(c) < 0x20 for c in row["pii_salt"]):
            row["pii_salt"] = "salt" if i % 2 else None
        if salts is not None:
            row["pii_salt"] = salts[i % len(salts)]
        conn.execute(f"INSERT INTO audit_trails ({_cols(tuple(row))}) VALUES "
                     f"({', '.join('?' * len(row))})", list(row.values()))
    for rowid, salt, personal, prefix in conn.execute(
            f"SELECT rowid, pii_salt, {_REFERENCE_SQL} FROM audit_trails").fetchall():
        digest = hash_payload(f"{salt or ''}\x00{personal}".encode(), None)
        payload = f'{prefix[:-1]},null,"{digest}"]'.encode()
        public = version >= PUBLIC_VERSION
        stored = hash_payload(payload, None if public else key)
        mac = row_mac(stored, key) if public and key is not None else None
        conn.execute("UPDATE audit_trails SET hash = ?, mac = ? WHERE rowid = ?",
                     [stored, mac, rowid])
    return conn


def _source_rows(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(
        f"SELECT {_HEADER_SQL}, {_SQLITE_ARRAY_SQL} FROM audit_trails ORDER BY seq")]


@pytest.mark.parametrize("version", [1, EXACT_VERSION, PUBLIC_VERSION])
@pytest.mark.parametrize("key", [None, KEY])
def test_the_array_gives_the_bytes_sqlite_built_column_by_column(
        version: int, key: bytes | None) -> None:
    conn = _store(HOSTILE, version, key)
    reference = conn.execute(f"SELECT pii_salt, {_REFERENCE_SQL} FROM audit_trails "
                             "ORDER BY seq").fetchall()
    rows = _source_rows(conn)
    plans = fastwalk.payload_plans(key, SQLITE)
    for row, (salt, personal, prefix) in zip(rows, reference, strict=True):
        built = sqlite_payload(row, plans)
        assert built is not None
        _, personal_input, payload, _ = built
        assert personal_input == f"{salt or ''}\x00{personal}".encode()
        assert payload == prefix[:-1].encode()
    flags = fastwalk.python_verify_flags(rows, SQLITE, plans)
    assert all(f & VERIFIED for f in flags)
    if getattr(_accel, "verify_flags", None) is not None:
        assert fastwalk.verify_flags(rows, SQLITE, plans) == flags
    # a value changed after sealing: nothing verifies here
    conn.execute("UPDATE audit_trails SET action = coalesce(action, '') || 'x', "
                 "request_id = 'changed'")
    changed = _source_rows(conn)
    assert not any(f & VERIFIED for f in fastwalk.python_verify_flags(changed, SQLITE, plans))
    if getattr(_accel, "verify_flags", None) is not None:
        assert not any(f & VERIFIED for f in fastwalk.verify_flags(changed, SQLITE, plans))


def test_a_blob_is_refused_by_sqlite_as_before() -> None:
    conn = _store(["a", "b"], PUBLIC_VERSION, None)
    conn.execute("UPDATE audit_trails SET mac = X'00ff' WHERE seq = 1")
    with pytest.raises(sqlite3.OperationalError, match="BLOB"):
        _source_rows(conn)


def _with_hash(text: str, version_tag: str, key: bytes | None) -> tuple[Any, ...]:
    """A SQLite source row of ``text`` whose hash matches what the pure form builds from
    it (when it builds anything), so that a different split in C shows as a flag."""
    row: tuple[Any, ...] = ("s", 1, "0" * 64, "0" * 64, "i", None, text)
    plans = fastwalk.payload_plans(key, SQLITE)
    built = sqlite_payload(row, plans)
    if built is None:
        return row
    plan, personal, payload, _ = built
    digest = hash_payload(personal, None)
    stored = hash_payload(b'%s,null,"%s"]' % (payload, digest.encode()), plan[0])
    return (*row[:3], stored, *row[4:])


_pieces = st.one_of(
    st.text(max_size=12).map(lambda s: json.dumps(s, ensure_ascii=False)),
    st.sampled_from(['"a\\"', '"\\\\"', '"\\', "null", "1", "-2.5e+3", "", " ", "[]", "{}",
                     "[", "]", ",", '"', '"é"', '"\\u0000"', "\\", '"x"y', "1 2"]),
)


@compiled
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_pieces, min_size=0, max_size=45), st.sampled_from([",", ", ", ",,", ""]),
       st.booleans(), st.sampled_from([PUBLIC_FORMAT, EXACT_FORMAT, FORMAT, "other"]))
@example(['"\\"', "null"] * 20, ",", False, PUBLIC_FORMAT)
def test_hostile_arrays_split_alike(pieces: list[str], sep: str, keyed: bool,
                                    tag: str) -> None:
    key = KEY if keyed else None
    salt = ['"salt"', "null", '"sa\\"lt"', "7"][len(pieces) % 4]
    elements = [json.dumps(tag), *pieces]
    while len(elements) < 1 + len(CHAIN_ROW_COLUMNS):
        elements.append(pieces[len(elements) % len(pieces)] if pieces else "null")
    elements[1 + CHAIN_ROW_COLUMNS.index("pii_salt")] = salt
    texts = ["[" + sep.join(elements) + "]", "[" + sep.join(elements[:5]) + "]",
             "[" + ",".join(elements) + "] ", "[]", "[" + ",".join(elements) + ",null]" * 2]
    rows = [_with_hash(text, tag, key) for text in texts]
    plans = fastwalk.payload_plans(key, SQLITE)
    assert fastwalk.verify_flags(rows, SQLITE, plans) == fastwalk.python_verify_flags(
        rows, SQLITE, plans)
    expected = [sqlite_elements(t.encode()) for t in texts]
    assert expected[3] == []


def test_elements_of_sqlite_arrays() -> None:
    assert sqlite_elements(b'["a,b",1,null,"q\\"]",-2.5]') == [
        b'"a,b"', b"1", b"null", b'"q\\"]"', b"-2.5"]
    for bad in (b"", b"[", b"[,]", b"[1,]", b"[1]x", b'["a]', b"[[1]]", b'[{"a":1}]',
                b"[1 ,2]x", b'["\\"]'):
        assert sqlite_elements(bad) is None, bad
    assert sqlite_elements(b"[" + b",".join([b"1"] * 64) + b"]") is not None
    assert sqlite_elements(b"[" + b",".join([b"1"] * 65) + b"]") is None


@pytest.mark.parametrize("key", [None, KEY])
def test_salts_with_escapes_take_the_walks_check(key: bytes | None) -> None:
    """A salt the compiled form does not take as written (escapes, an integer): not
    verified there, and the walk's check (``content_ok``) builds it as before."""
    from sqlalchemy import create_engine

    from otel_audit.integrity.sources import StoreSource

    salts = ['qu"ote', "back\\slash", "nul\x00", "tab\t", 7, "é"]
    conn = _store(["a", "b", None, 3, "c", "d"], EXACT_VERSION, key, salts)
    rows = _source_rows(conn)
    plans = fastwalk.payload_plans(key, SQLITE)
    flags = fastwalk.python_verify_flags(rows, SQLITE, plans)
    assert [f & VERIFIED for f in flags[:6]] == [0, 0, 0, 0, 0, 1]
    if getattr(_accel, "verify_flags", None) is not None:
        assert fastwalk.verify_flags(rows, SQLITE, plans) == flags
    source = StoreSource(create_engine("sqlite://"))
    assert all(source.content_ok(row, key) for row in rows)


@compiled
def test_rows_with_personal_keys_are_found_alike() -> None:
    """The compiled form's flag 4 marks the rows fastwalk checks in the full layout."""
    array = json.dumps(["otel-audit/3", *([None] * len(CHAIN_ROW_COLUMNS))])
    piis: list[Any] = ['{"k": ["email"]}', '{"k": [', '{"k":[', ' {"k": [', '{"d": 1}', None,
                       7, b'{"k": [', '{"k": [\ud800', "", '{"k": ["a"]}\x00']
    rows: list[Any] = [("s", i + 1, "0" * 64, "0" * 64, "i", pii, array)
                       for i, pii in enumerate(piis)]
    rows += [("s", 1, "p", "h", "i", '{"k": ["e"]}', None),
             ("s", 1, "p", "h", "i", '{"k": ["e"]}'), ["s", 1, "p", "h", "i", '{"k": [', "[]"]]
    raw = _accel.verify_flags(rows, SQLITE, fastwalk.payload_plans(None, SQLITE))
    assert [i for i, flag in enumerate(raw) if flag & 4] == fastwalk._personal_rows(rows)
    assert fastwalk._personal_rows(rows) == [0, 1, 8, 10]
    flags = fastwalk.verify_flags(rows, SQLITE, fastwalk.payload_plans(None, SQLITE))
    assert not any(flag & 4 for flag in flags)
    assert flags == fastwalk.python_verify_flags(rows, SQLITE, fastwalk.payload_plans(None,
                                                                                    SQLITE))
