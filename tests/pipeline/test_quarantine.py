"""The safe form and the quarantine file: total over any value, private, spool format."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from otel_audit.pipeline.quarantine import INT32, Quarantine, safe_record, safe_texts
from otel_audit.pipeline.segments import read_frames
from otel_audit.pipeline.spool import decode_record
from otel_audit.record import COLUMN_LIMITS, JSON_FIELDS, NORMALISATION_KEY, AuditRecord
from otel_audit.store.writer import PreparedRecord


class Raises:
    """Every dunder the safe form might call raises."""

    def __repr__(self) -> str:
        raise RuntimeError("repr")

    __str__ = __repr__

    def __bool__(self) -> bool:
        raise RuntimeError("bool")

    def __hash__(self) -> int:
        raise RuntimeError("hash")

    def __iter__(self) -> Any:
        raise RuntimeError("iter")


class BadDict(dict[Any, Any]):
    def items(self) -> Any:
        raise RuntimeError("items")


scalars = st.one_of(
    st.none(), st.booleans(), st.text(st.characters(codec=None, exclude_categories=())),
    st.integers(), st.integers(4301, 5000).map(lambda digits: 10**digits), st.floats(),
    st.decimals(), st.datetimes(), st.datetimes(timezones=st.timezones()), st.dates(),
    st.binary(max_size=8), st.builds(Raises),
)
values_plus = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=3), st.tuples(children),
    st.dictionaries(st.one_of(st.text(max_size=5), st.integers(), st.booleans()), children,
                    max_size=3),
    st.builds(BadDict, st.dictionaries(st.text(max_size=3), children, max_size=2)),
), max_leaves=10)


@settings(max_examples=100, deadline=None)
@given(fields=st.lists(values_plus, min_size=len(AuditRecord._fields),
                       max_size=len(AuditRecord._fields)))
def test_the_safe_form_of_any_values_is_storable(fields: list[Any]) -> None:
    record = AuditRecord(*fields)
    safe = safe_texts(safe_record(record, "a reason"))
    out = safe.record
    for name, limit in COLUMN_LIMITS.items():
        value = getattr(out, name)
        assert value is None or (type(value) is str and len(value) <= limit), name
        if value is not None:
            assert "\x00" not in value, name
            value.encode("utf-8")  # no lone surrogate: raises otherwise
    assert out.id and out.action and out.user_id
    assert type(out.success) is bool and type(out.requires_review) is bool
    assert out.timestamp.utcoffset() is not None and out.timestamp.utcoffset().total_seconds() == 0
    assert type(out.schema_version) is int and INT32[0] <= out.schema_version <= INT32[1]
    for name in JSON_FIELDS:
        text = safe.texts[name]
        if text is not None:
            assert json.loads(text) == getattr(out, name)
            text.encode("utf-8")
    assert out.context[NORMALISATION_KEY][0]["kind"] == "safe_form"


def test_the_quarantine_is_private_in_spool_format_and_takes_anything(tmp_path: Path) -> None:
    quarantine = Quarantine(str(tmp_path / "quarantine"))

    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    fields: list[Any] = [Hostile()] * len(AuditRecord._fields)
    odd = PreparedRecord(AuditRecord(*fields), {"context": "\ud800"}, "s", 7)
    assert quarantine.append(odd, "refused: \ud800 why")
    assert quarantine.append(safe_texts(safe_record(AuditRecord(*fields), "r")), "plain")
    quarantine.close()
    directory = tmp_path / "quarantine"
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    [segment] = list(directory.iterdir())
    assert oct(segment.stat().st_mode & 0o777) == "0o600"
    fd = os.open(segment, os.O_RDONLY)
    try:
        frames = list(read_frames(fd))
    finally:
        os.close(fd)
    first, second = (decode_record(frame) for frame in frames)
    assert (first.stream, first.seq) == ("s", 7)  # the chain position it spent
    assert json.loads(frames[0])["q"].startswith("refused: ")
    assert second.record.context[NORMALISATION_KEY][0]["kind"] == "safe_form"
