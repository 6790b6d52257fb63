"""The worker's compiled preparation steps give what their pure-Python twins give.

``redact_clean`` answers "nothing to redact" only where ``Redactor._batch_clean``'s
Python check does (otherwise the Python check decides), and ``unsealed`` builds the
same unsealed :class:`PreparedRecord` values as the ``map``/``zip`` twin.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_audit.pipeline.prepare import unsealed
from otel_audit.prepared import PreparedRecord
from otel_audit.record import AuditRecord, normalise
from otel_audit.redact import _POSITIONS, Redactor

NOW = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)


class Key(str):
    __slots__ = ()


_keys = st.sampled_from(["enabled", "timeout", "password", "api-key", "name", "Token",
                         "x_secret_y", 1, (2,), Key("name"), Key("password")]) | st.text(max_size=6)
_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4)
            | st.sampled_from([Key("v"), 10**30, b"b", dt.date(2026, 1, 1)]))
_values = (st.none() | _scalars
           | st.dictionaries(_keys, _scalars | st.lists(_scalars, max_size=2), max_size=4)
           | st.lists(_scalars, max_size=2)
           | st.dictionaries(st.sampled_from(["a", "password"]),
                             st.dictionaries(_keys, _scalars, max_size=2), max_size=2))


@st.composite
def _records(draw: st.DrawFn) -> list[AuditRecord]:
    return [AuditRecord(id=f"r{i}", timestamp=NOW, action="UPDATE", user_id="u",
                        old_values=draw(_values), new_values=draw(_values),
                        changes=draw(_values), context=draw(_values))
            for i in range(draw(st.integers(0, 6)))]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=_records(), warm=_records(), allow=st.sampled_from([(), ("api-key",)]))
def test_compiled_clean_check_answers_yes_only_where_python_does(
        records: list[AuditRecord], warm: list[AuditRecord], allow: tuple[str, ...]) -> None:
    from otel_audit import _accel

    redactor = Redactor("mask", allow=allow)
    redactor.redact_batch(warm)  # some keys decided (the cache the compiled check reads)
    decisions = dict(redactor._decisions)
    python = Redactor("mask", allow=allow)
    python._decisions.update(decisions)
    compiled: Any = getattr(_accel, "redact_clean", None)
    if compiled is not None and compiled(records, _POSITIONS, decisions):
        # the Python check, without the compiled first look, agrees
        assert _python_clean(python, records)
    # and whichever answered, redaction gives what record-by-record redaction gives
    assert redactor.redact_batch(records) == [Redactor("mask", allow=allow)(r) for r in records]


def _python_clean(redactor: Redactor, records: list[AuditRecord]) -> bool:
    import otel_audit.redact as module

    saved, module._redact_clean = module._redact_clean, None
    try:
        return redactor._batch_clean(records)
    finally:
        module._redact_clean = saved


def test_compiled_clean_check_needs_every_key_decided() -> None:
    from otel_audit import _accel

    compiled: Any = getattr(_accel, "redact_clean", None)
    if compiled is None:
        return
    record = AuditRecord(id="a", timestamp=NOW, action="X", user_id="u",
                         old_values={"timeout": 5}, new_values={"timeout": 6})
    redactor = Redactor()
    assert compiled([record], _POSITIONS, redactor._decisions) is False  # not decided yet
    assert redactor._batch_clean([record]) is True  # the Python check decides, and caches
    assert compiled([record], _POSITIONS, redactor._decisions) is True
    secret = record._replace(new_values={"password": "x"})
    assert compiled([record, secret], _POSITIONS, redactor._decisions) is False
    assert redactor.redact_batch([secret])[0].new_values == {"password": "[REDACTED]"}


@settings(max_examples=100, deadline=None)
@given(records=_records())
def test_unsealed_equals_its_twin(records: list[AuditRecord]) -> None:
    texts = [normalise(r)[1] for r in records]
    compiled = unsealed(records, texts)
    pure = unsealed(records, texts, compiled=False)
    assert compiled == pure == [PreparedRecord(r, t) for r, t in zip(records, texts, strict=True)]
    assert all(type(p) is PreparedRecord for p in compiled)
    assert all(p.record is r and p.texts is t
               for p, r, t in zip(compiled, records, texts, strict=True))


def test_plain_texts_finds_nul_and_escaped_nul_alike_on_both_paths() -> None:
    # the compiled check scans one-byte strings with memchr: every spelling, both kinds
    from otel_audit.record import plain_texts

    spellings = ["\\u0000", "a\\\\u0000", "\\u000", "\\u00000", "x\\", "\\", "é\\u0000",
                 "é\x00", "\x00", "ok", "é", "\\\\u0000\\", "✓\\u0000", "✓\x00", "\\u0001"]
    for text in spellings:
        for field in ("resource_id", "error_message", "user_agent"):
            record = AuditRecord(id="a", timestamp=NOW, action="X", user_id="u",
                                 **{field: text})
            expected = plain_texts([record], compiled=False)
            assert plain_texts([record]) == expected, (field, text)
            assert (expected is None) == ("\x00" in text or "\\u0000" in text), text
        record = AuditRecord(id="a", timestamp=NOW, action="X", user_id="u",
                             old_values={"k": text})
        assert plain_texts([record]) == plain_texts([record], compiled=False), text
