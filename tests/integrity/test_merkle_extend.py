"""The Merkle accumulator's batch form, compiled and Python: the same trees as one leaf at
a time, and nothing added from a batch it refuses."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_audit.integrity import merkle
from otel_audit.integrity.merkle import MerkleAccumulator, merkle_root, python_merkle_extend


def _hashes(n: int, salt: int = 0) -> list[str]:
    return [hashlib.sha256(f"{salt}:{i}".encode()).hexdigest() for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=40), max_size=8))
def test_extend_builds_the_tree_add_builds(chunks: list[int]) -> None:
    one, many = MerkleAccumulator(), MerkleAccumulator()
    everything: list[str] = []
    for k, n in enumerate(chunks):
        hashes = _hashes(n, salt=k)
        everything += hashes
        for h in hashes:
            one.add(h)
        many.extend(hashes)
        assert (many.size, many._stack) == (one.size, one._stack)
    assert many.root() == one.root() == merkle_root(everything)


def test_compiled_extend_equals_the_python_twin(speedups: Any) -> None:
    for start in (0, 1, 5, 64, 255):
        base = _hashes(start, salt=99)
        stack_c: list[bytes] = []
        stack_py: list[bytes] = []
        size_c = speedups.merkle_extend(stack_c, 0, base)
        size_py = python_merkle_extend(stack_py, 0, base)
        for n in (0, 1, 2, 3, 17, 512):
            hashes = [*_hashes(n, salt=start + n), "ABCDEF" * 10 + "0123"]  # upper case too
            size_c = speedups.merkle_extend(stack_c, size_c, hashes)
            size_py = python_merkle_extend(stack_py, size_py, hashes)
            assert (size_c, stack_c) == (size_py, stack_py)


@pytest.mark.parametrize("bad", ["zz", "abc", "ab cd", 7])
def test_a_value_that_is_not_hex_leaves_the_tree_unchanged(bad: Any, speedups: Any) -> None:
    stack = [hashlib.sha256(b"x").digest()]
    with pytest.raises((ValueError, TypeError)):
        speedups.merkle_extend(stack, 1, [_hashes(1)[0], bad])
    assert stack == [hashlib.sha256(b"x").digest()]
    with pytest.raises(ValueError):  # the stack must hold one node per one bit of the size
        speedups.merkle_extend([], 1, _hashes(1))


def test_extend_decides_what_only_python_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    # bytes.fromhex takes spaces between bytes; the compiled path refuses them and
    # leaves the leaf to the Python path, so both trees stay the same
    acc, ref = MerkleAccumulator(), MerkleAccumulator()
    acc.extend(["ab cd", "ef01"])
    ref.add("ab cd")
    ref.add("ef01")
    assert acc._stack == ref._stack
    with pytest.raises(ValueError):
        acc.extend([_hashes(1)[0], "not hex"])
    assert acc.size == 2  # nothing of a refused batch was added
    monkeypatch.setattr(merkle, "_merkle_extend", None)
    acc.extend(_hashes(3))
    ref_hashes = ["ab cd", "ef01", *_hashes(3)]
    assert acc.root() == merkle_root(ref_hashes)


def _leaves_after(batches: list[list[tuple[str | None, int | None, str | None]]]
                  ) -> tuple[int, str] | None:
    """The interval tree ``PeriodicSeals`` keeps after committed ``batches`` of
    (stream, seq, hash): its size and root, None once it gave the interval up."""
    from otel_audit.integrity.periodic_seals import PeriodicSeals
    from otel_audit.prepared import PreparedRecord

    seals = object.__new__(PeriodicSeals)
    seals._acc, seals._acc_first = MerkleAccumulator(), 1
    for batch in batches:
        prepared = [PreparedRecord(None, {}, stream, seq, None, h)  # type: ignore[arg-type]
                    for stream, seq, h in batch]
        seals._leaves(prepared, "s")
        if seals._acc is None:
            return None
    return seals._acc.size, seals._acc.root()


def test_interval_tree_takes_this_streams_records_in_seq_order() -> None:
    h = _hashes(6)
    whole = [[("s", 1, h[0]), ("s", 2, h[1]), ("s", 3, h[2])],
             [("s", 4, h[3]), ("s", 5, h[4]), ("s", 6, h[5])]]
    assert _leaves_after(whole) == (6, merkle_root(h))
    # another stream's records and unsealed ones are left out, the rest kept in order
    mixed = [[("s", 1, h[0]), ("t", 9, h[5]), ("s", 2, h[1]), (None, None, None)],
             [("s", 3, h[2]), ("s", 4, h[3])]]
    assert _leaves_after(mixed) == (4, merkle_root(h[:4]))
    # out of seq order (a retried batch) or a record without its hash: no tree
    assert _leaves_after([[("s", 1, h[0]), ("s", 3, h[2])]]) is None
    assert _leaves_after([[("s", 2, h[1])]]) is None
    assert _leaves_after([[("s", 1, h[0]), ("s", 2, "")]]) is None
