"""The compiled sealer writes each payload itself: the bytes and hashes it seals must be
the Python columns' (orjson's) for any value a row can hold, hostile ones included.

``seal_plain`` writes None, bool, 64-bit int and str values straight into the payload
(JSON escapes as orjson writes them) and leaves any other value to orjson; values orjson
refuses (a lone surrogate, an int past 64 bits, a str subclass) make both paths raise
``TypeError`` (the sealer then seals record by record).
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_audit.integrity.canonical import chain_hash
from otel_audit.integrity.chain import ChainSealer
from otel_audit.prepared import PreparedRecord
from otel_audit.record import JSON_FIELDS, AuditRecord

NOW = dt.datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=dt.UTC)

#: every character JSON escapes, the ones it does not, and multi-byte UTF-8
_HOSTILE = "".join(map(chr, range(0x20))) + '"\\/\x7f\u2028\u2029é✓\U0001f600\ufeff'
_strings = st.text(st.sampled_from(_HOSTILE) | st.characters(blacklist_categories=("Cs",)),
                   max_size=12)
_values = st.none() | _strings | st.booleans() | st.integers(-(2**63), 2**64 - 1)
_texts = st.none() | _strings


def _sealer(key: bytes | None) -> ChainSealer:
    sealer = ChainSealer(service_name="s", stream='stream "\\\x01 é', hmac_key=key)
    sealer._resumed = True
    return sealer


@st.composite
def _batch(draw: st.DrawFn) -> list[PreparedRecord]:
    out = []
    for i in range(draw(st.integers(1, 40))):
        record = AuditRecord(
            id=draw(_strings) or f"id-{i}", timestamp=NOW, action=draw(_values),
            user_id=draw(_values), correlation_id=draw(_values), trace_id=draw(_values),
            resource_type=draw(_values), resource_id=draw(_values), user_email=draw(_values),
            client_ip=draw(_values), user_agent=draw(_values), request_path=draw(_values),
            request_method=draw(_values), error_message=draw(_values),
            data_classification=draw(_values), requires_review=draw(st.booleans()),
            success=draw(st.booleans()), service_name=draw(_values),
            acting_as=draw(_values), schema_version=draw(st.integers(3, 2**63 - 1)),
            auth_method=draw(_values))
        texts = {name: draw(_texts) for name in JSON_FIELDS}
        out.append(PreparedRecord(record, texts))
    return out


def _sealed(batch: list[PreparedRecord], salts: str, key: bytes | None,
            compiled: bool) -> list[PreparedRecord] | type[BaseException]:
    try:
        return _sealer(key)._seal_columns(batch, salts, compiled=compiled)
    except TypeError:
        return TypeError


@pytest.mark.usefixtures("speedups")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=_batch(), key=st.sampled_from([None, b"k" * 32]))
def test_compiled_payloads_equal_the_python_columns(batch: list[PreparedRecord],
                                                     key: bytes | None) -> None:
    salts = os.urandom(16 * len(batch)).hex()
    compiled = _sealed(batch, salts, key, True)
    assert compiled == _sealed(batch, salts, key, False)
    if compiled is not TypeError:
        assert isinstance(compiled, list)
        for p in compiled:  # the payload each hash covers is the reader's too
            assert p.row is not None and chain_hash(p.row, None, canonicalise=False) == p.hash


@pytest.mark.usefixtures("speedups")
@pytest.mark.parametrize("odd", [
    "\ud800",  # a lone surrogate: not UTF-8
    2**64,  # past orjson's 64 bits
    type("Text", (str,), {})("subclass"),
    1.5,  # no float column: orjson's own rules, alike on both paths
    dt.date(2026, 1, 2),
])
def test_values_orjson_refuses_or_writes_are_alike_on_both_paths(odd: Any) -> None:
    good = PreparedRecord(AuditRecord(id="a", timestamp=NOW, action="X", user_id="u"),
                          dict.fromkeys(JSON_FIELDS))
    odd_record = good._replace(record=good.record._replace(id="b", resource_id=odd))
    batch = [good, odd_record, good._replace(record=good.record._replace(id="c"))]
    salts = os.urandom(16 * len(batch)).hex()
    for key in (None, b"k" * 32):
        assert _sealed(batch, salts, key, True) == _sealed(batch, salts, key, False)


@pytest.mark.usefixtures("speedups")
def test_a_batch_large_enough_to_hash_without_the_gil_is_sealed_alike() -> None:
    # from 32 records the compiled sealer hashes with the GIL released
    base = PreparedRecord(AuditRecord(id="a", timestamp=NOW, action="X", user_id="u",
                                      old_values={"k": 1}),
                          {**dict.fromkeys(JSON_FIELDS), "old_values": '{"k":1}'})
    batch = [base._replace(record=base.record._replace(id=f"r{i}")) for i in range(700)]
    salts = os.urandom(16 * len(batch)).hex()
    for key in (None, b"k" * 32):
        compiled = _sealed(batch, salts, key, True)
        assert compiled == _sealed(batch, salts, key, False)
        assert isinstance(compiled, list) and len({p.hash for p in compiled}) == 700
        assert [p.prev_hash for p in compiled[1:]] == [p.hash for p in compiled[:-1]]
