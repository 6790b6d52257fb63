"""PostgreSQL's COPY text read back into rows (integrity.copyparse), and verify reading a
PostgreSQL store that way.

* every escape, NULL, multi-byte UTF-8, rows split anywhere between read blocks, errors:
  the compiled reader and the pure-Python one give the same rows, consumed counts and
  exception types;
* hostile values (tabs, newlines, backslashes, control characters, JSON holding them,
  huge texts) written to PostgreSQL and read back with ``COPY ... TO STDOUT``: the values
  the driver fetches;
* a PostgreSQL store's source rows read as COPY text equal the driver's, and tampered
  stores give the same findings either way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from integrity_support import execute, verify, write_records
from sqlalchemy import Engine

from otel_audit import AuditTrail, _accel
from otel_audit.integrity import pgcopy, sources
from otel_audit.integrity.copyparse import python_copy_rows
from otel_audit.integrity.sources import StoreSource

Parser = Callable[[Any, bytes, tuple[int, ...]], tuple[list[tuple[Any, ...]], int]]

_COMPILED: Parser | None = getattr(_accel, "copy_rows", None)


def _both(data: Any, kinds: bytes, order: tuple[int, ...] | None = None,
          ) -> tuple[list[tuple[Any, ...]], int]:
    """The pure reader's result, checked equal to the compiled one's where it is built."""
    order = tuple(range(len(kinds))) if order is None else order
    out = python_copy_rows(data, kinds, order)
    if _COMPILED is not None:
        assert _COMPILED(data, kinds, order) == out
    return out


def _raises_alike(data: Any, kinds: Any, order: Any) -> type[BaseException]:
    """The exception type both readers raise for these arguments."""
    kinds_of: list[type[BaseException]] = []
    for parse in (python_copy_rows, _COMPILED):
        if parse is None:
            continue
        with pytest.raises(Exception) as caught:
            parse(data, kinds, order)
        kinds_of.append(type(caught.value))
    assert len(set(kinds_of)) == 1, kinds_of
    return kinds_of[0]


# ---------------------------------------------------------------- the format


def test_plain_rows_nulls_and_integers() -> None:
    data = b"a\t1\t\\N\n\\N\t-42\tz\n"
    assert _both(data, b"tit") == ([("a", 1, None), (None, -42, "z")], len(data))


def test_every_escape() -> None:
    fields = [b"\\b\\f\\n\\r\\t\\v", b"\\\\", b"\\N", b"x\\Ny", b"\\101\\60\\0", b"\\7a",
              b"\\x41\\x4a\\x4G", b"\\xg", b"\\q\\\"\\'", b"\\\t", b"a\\\nb", b"\\8\\9",
              b"\\1234", b"\\x414"]
    data = b"\t".join(fields) + b"\n"
    rows, used = _both(data, b"t" * len(fields))
    assert used == len(data)
    assert rows == [("\b\f\n\r\t\v", "\\", None, "xNy", "A0\x00", "\x07a", "AJ\x04G", "xg",
                     "q\"'", "\t", "a\nb", "89", "S4", "A4")]


def test_octal_and_hex_escapes_make_utf8_bytes() -> None:
    # é is C3 A9: written as octal, as hex, and as itself
    data = "\\303\\251\t\\xc3\\xa9\té\t日本\t🙂\n".encode()
    assert _both(data, b"ttttt")[0] == [("é", "é", "é", "日本", "🙂")]


def test_an_escape_above_a_byte_wraps_as_postgresql_reads_it() -> None:
    assert _both(b"\\477\n", b"t")[0] == [("?",)]  # 0o477 & 0xff = 0x3f
    assert _raises_alike(b"\\777\n", b"t", (0,)) is UnicodeDecodeError  # 0xff alone


def test_order_repeats_and_leaves_out_columns() -> None:
    data = b"a\t1\tb\n"
    assert _both(data, b"tit", (2, 0, 0, 1))[0] == [("b", "a", "a", 1)]
    assert _both(data, b"tit", ())[0] == [()]


def test_empty_text_is_not_null() -> None:
    assert _both(b"\t\n", b"tt")[0] == [("", "")]


def test_integers() -> None:
    big = "9" * 40
    data = f"0\t-0\t007\t9223372036854775807\t-9223372036854775808\t{big}\n".encode()
    assert _both(data, b"iiiiii")[0] == [(0, 0, 7, 2**63 - 1, -2**63, int(big))]
    assert _both(b"\\061\\062\n", b"i")[0] == [(12,)]  # escaped digits are digits


@pytest.mark.parametrize("bad", [b"", b"-", b"+1", b" 1", b"1 ", b"1_000", b"1.0", b"0x1",
                                 b"\xd9\xa1", b"1e3"])
def test_non_integers_are_refused_alike(bad: bytes) -> None:
    assert _raises_alike(bad + b"\n", b"i", (0,)) is ValueError


def test_huge_integer_past_python_limit_is_refused_alike() -> None:
    assert _raises_alike(b"1" * 5000 + b"\n", b"i", (0,)) is ValueError


@pytest.mark.parametrize("data", [b"a\n", b"a\tb\tc\n", b"\n", b"a\\\tb\n",
                                  b"\t".join([b"x"] * 300) + b"\n",
                                  b"\t".join([b"\\n"] * 300) + b"\n"])
def test_wrong_number_of_columns_is_refused_alike(data: bytes) -> None:
    assert _raises_alike(data, b"tt", (0, 1)) is ValueError


@pytest.mark.parametrize("data", [b"\xff\n", b"\xc3\n", b"\\xff\n", b"\\355\\240\\200\n",
                                  b"\xed\xa0\x80\n"])
def test_invalid_utf8_is_refused_alike(data: bytes) -> None:
    assert _raises_alike(data, b"t", (0,)) is UnicodeDecodeError


@pytest.mark.parametrize(("kinds", "order", "error"), [
    ("t", (0,), TypeError), (b"", (), ValueError), (b"x", (0,), ValueError),
    (b"t" * 257, (0,), ValueError), (b"t", [0], TypeError), (b"t", (1,), ValueError),
    (b"t", (-1,), ValueError), (b"t", (2**70,), ValueError), (b"t", ("0",), ValueError),
    (b"t", (0,) * 257, TypeError)])
def test_bad_arguments_are_refused_alike(kinds: Any, order: Any,
                                         error: type[BaseException]) -> None:
    assert _raises_alike(b"a\n", kinds, order) is error


def test_an_unended_row_of_too_many_columns_waits_alike() -> None:
    data = b"\t".join([b"\\t"] * 300)
    assert _both(data, b"tt") == ([], 0)
    assert _both(b"a\tb\n" + data, b"tt") == ([("a", "b")], 4)


def test_incomplete_row_stays_for_the_next_block() -> None:
    assert _both(b"a\tb", b"tt") == ([], 0)
    assert _both(b"a\tb\nc\td", b"tt") == ([("a", "b")], 4)
    assert _both(b"a\\", b"t") == ([], 0)  # the escaped character is still to come
    assert _both(b"a\\\n", b"t") == ([], 0)  # an escaped newline does not end the row
    assert _both(b"", b"t") == ([], 0)


def test_buffer_types() -> None:
    data = b"a\t1\n"
    for form in (data, bytearray(data), memoryview(data)):
        assert _both(form, b"ti")[0] == [("a", 1)]


_HOSTILE = ["plain", "", "tab\there", "new\nline", "cr\rlf\r\n", "back\\slash", "\\N",
            "\\.", "\\", "\\\\t", "ctl \x01\x07\x08\x0b\x0c\x1b\x7f", "é日本🙂", "\u2028\u2029",
            '{"a": "b"}', "x" * 100_000, "\t\n\\" * 1000]


def _encode(values: list[str | int | None]) -> bytes:
    """A row as PostgreSQL's COPY TO writes it."""
    out = []
    for v in values:
        if v is None:
            out.append(b"\\N")
            continue
        text = str(v).encode()
        for raw, esc in ((b"\\", b"\\\\"), (b"\b", b"\\b"), (b"\f", b"\\f"), (b"\n", b"\\n"),
                         (b"\r", b"\\r"), (b"\t", b"\\t"), (b"\v", b"\\v")):
            text = text.replace(raw, esc)
        out.append(text)
    return b"\t".join(out) + b"\n"


def _split_everywhere(data: bytes, kinds: bytes) -> Iterator[list[tuple[Any, ...]]]:
    """The rows read from ``data`` cut into two blocks at every position."""
    for cut in range(len(data) + 1):
        rest, rows = b"", []
        for block in (data[:cut], data[cut:]):
            got, used = _both(rest + block, kinds)
            rows += got
            rest = (rest + block)[used:]
        assert rest == b""
        yield rows


def test_rows_split_across_blocks_anywhere() -> None:
    rows = [["a\tb", 1, None], ["\\N", -7, "é\n日"], [None, 0, "\\\\\t"], ["", 12, ""]]
    data = b"".join(_encode(r) for r in rows)
    expected = [tuple(r) for r in rows]
    for got in _split_everywhere(data, b"tit"):
        assert got == expected


def test_hostile_texts_round_trip() -> None:
    row: list[str | int | None] = list(_HOSTILE)
    assert _both(_encode(row), b"t" * len(row))[0] == [tuple(row)]


_text = st.text(st.characters(codec="utf-8"), max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.one_of(st.none(), _text), min_size=3, max_size=3), max_size=8),
       st.integers(0, 1000))
def test_generated_rows_round_trip_whatever_the_blocks(rows: list[list[str | None]],
                                                       cut: int) -> None:
    data = b"".join(_encode(list(r)) for r in rows)
    cut = min(cut, len(data))
    first, used = _both(data[:cut], b"ttt")
    second, end = _both(data[used:], b"ttt")
    assert first + second == [tuple(r) for r in rows]
    assert used + end == len(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60))
def test_arbitrary_bytes_give_the_same_result_or_error(data: bytes) -> None:
    outcomes = []
    for parse in (python_copy_rows, _COMPILED):
        if parse is None:
            continue
        try:
            outcomes.append(parse(data, b"tit", (0, 1, 2)))
        except (ValueError, UnicodeDecodeError) as exc:
            outcomes.append(type(exc))
    assert all(o == outcomes[0] for o in outcomes)


# ---------------------------------------------------------------- against PostgreSQL


@pytest.mark.postgres
def test_postgresql_copy_text_reads_as_the_driver_fetches(pg_url: str) -> None:
    """Hostile values stored as text and JSONB, read with COPY TO STDOUT: the driver's."""
    docs = [{"k": v} for v in _HOSTILE] + [{v[:50]: [v[:10], 1.5, None, True]}
                                           for v in _HOSTILE if v]
    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        conn.execute("CREATE TEMPORARY TABLE copy_probe (n bigint, t text, j jsonb, "
                     "b boolean, s smallint)")
        with conn.cursor() as cursor:
            cursor.executemany("INSERT INTO copy_probe VALUES (%s, %s, %s, %s, %s)", [
                (i, _HOSTILE[i % len(_HOSTILE)] if i % 5 else None, json.dumps(doc),
                 i % 2 == 0, -i) for i, doc in enumerate(docs)])
        sql = ("SELECT n, t, CAST(j AS TEXT), CAST(b AS INTEGER), s FROM copy_probe "
               "ORDER BY n")
        fetched = [tuple(r) for r in conn.execute(sql).fetchall()]
        kinds = pgcopy.copy_kinds(conn, sql, [])
        assert kinds == b"ittii"
        blocks = []
        with conn.cursor() as cursor, cursor.copy(f"COPY ({sql}) TO STDOUT") as copy:
            blocks = [bytes(block) for block in copy]
    data = b"".join(blocks)
    rows, used = _both(data, kinds)
    assert used == len(data)
    assert rows == fetched
    one, rest = [], b""
    for block in blocks:  # as the source reads them: a block at a time
        got, used = _both(rest + block, kinds)
        one += got
        rest = (rest + block)[used:]
    assert one == fetched and rest == b""


@pytest.mark.postgres
def test_copy_kinds_refuses_other_types(pg_url: str) -> None:
    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        for expression in ("CAST(1 AS NUMERIC)", "now()", "CAST('{}' AS JSONB)", "1.5",
                           "true", "CAST('x' AS BYTEA)"):
            assert pgcopy.copy_kinds(conn, f"SELECT 'a', {expression}", []) is None
        assert pgcopy.copy_kinds(conn, "SELECT 'a', 1, CAST(2 AS BIGINT)", []) == b"tii"


@pytest.fixture(autouse=True)
def _copy_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """The source reads COPY text on the pure-Python path too (with the pure reader)."""
    monkeypatch.setattr(pgcopy, "COPY_TEXT", True)


@pytest.mark.postgres
def test_without_the_compiled_reader_the_driver_fetches(pg_url: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from otel_audit.integrity import copyparse
    assert copyparse.COMPILED is (_COMPILED is not None)  # the pure path: the driver's fetch
    monkeypatch.setattr(pgcopy, "COPY_TEXT", False)
    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        assert pgcopy.copy_kinds(conn, "SELECT 'a', 1", []) is None


def _driver_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The source reads through the driver's fetch (the path before COPY text)."""
    monkeypatch.setattr(sources, "copy_kinds", lambda *args: None)


@pytest.fixture
def pg_chained(make_trail: Callable[..., AuditTrail], store_url: str) -> AuditTrail:
    if not store_url.startswith("postgresql"):
        pytest.skip("COPY text is PostgreSQL's")
    from integrity_support import KEY
    trail = make_trail(hmac_key=KEY, mode="sync")
    write_records(trail, 30)
    return trail


def test_source_rows_as_copy_text_equal_the_drivers(pg_chained: AuditTrail, engine: Engine,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    execute(engine, "UPDATE audit_trails SET user_agent = :v, new_values = CAST(:doc AS JSONB) "
            "WHERE seq = 4", v="\t\n\\N\\ é", doc=json.dumps({"a\tb": "c\\nd\n", "é": [1]}))
    source = StoreSource(engine)
    copied = [b for b in source.batches()]
    _driver_only(monkeypatch)
    fetched = [b for b in source.batches()]
    assert [r for b in copied for r in b] == [r for b in fetched for r in b]
    assert len(copied[0]) == 30


_TAMPERING = {
    "value": ["UPDATE audit_trails SET action = 'DELETE' WHERE seq = 7"],
    "hostile value": ["UPDATE audit_trails SET user_agent = E'a\\tb\\nc\\\\N' WHERE seq = 8"],
    "json": ["UPDATE audit_trails SET new_values = CAST('{\"name\": \"forged\\\\t\"}' AS JSONB) "
             "WHERE seq = 4"],
    "deleted": ["DELETE FROM audit_trails WHERE seq IN (9, 10)"],
    "reordered": ["UPDATE audit_trails SET seq = -5 WHERE seq = 5",
                  "UPDATE audit_trails SET seq = 5 WHERE seq = 8",
                  "UPDATE audit_trails SET seq = 8 WHERE seq = -5"],
    "forged hash": ["UPDATE audit_trails SET action = 'X', hash = repeat('ab', 32) "
                    "WHERE seq = 5"],
    "null seq": ["UPDATE audit_trails SET seq = NULL WHERE seq = 12"],
    "timestamp": ["UPDATE audit_trails SET timestamp = timestamp + interval '1 microsecond' "
                  "WHERE seq = 3"],
    "flag": ["UPDATE audit_trails SET success = NOT success WHERE seq = 2"],
    "mac": ["UPDATE audit_trails SET mac = repeat('0', 64) WHERE seq = 6"],
}


@pytest.mark.parametrize("attack", sorted(_TAMPERING))
def test_tampered_store_findings_equal_the_drivers(pg_chained: AuditTrail, engine: Engine,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   attack: str) -> None:
    for statement in _TAMPERING[attack]:
        execute(engine, statement)
    copied = verify(engine)
    _driver_only(monkeypatch)
    fetched = verify(engine)
    assert copied.findings == fetched.findings
    assert copied.findings, attack
    assert (copied.records, copied.streams) == (fetched.records, fetched.streams)
