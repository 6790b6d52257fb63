"""Merkle trees of sealed intervals, as in Certificate Transparency (RFC 6962 / RFC 9162).

The leaves are the chain hashes of one stream's records sealed in one interval, in
``seq`` order. ``leaf = SHA-256(0x00 || record hash)``, ``node = SHA-256(0x01 || left ||
right)``, the split at the largest power of two below the size: the tree, inclusion
proofs (audit paths) and consistency proofs are exactly RFC 6962's, so any CT-style
verifier can check them. Hashes are exchanged as lowercase hex.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

__all__ = [
    "MerkleAccumulator",
    "consistency_proof",
    "inclusion_proof",
    "inclusion_proof_and_root",
    "leaf_hash",
    "merkle_root",
    "node_hash",
    "python_merkle_extend",
    "verify_consistency",
    "verify_inclusion",
]


def leaf_hash(record_hash: str) -> bytes:
    """``SHA-256(0x00 || record hash)`` (the record hash as its 32 raw bytes)."""
    return hashlib.sha256(b"\x00" + bytes.fromhex(record_hash)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n`` >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _root(leaves: Sequence[bytes]) -> bytes:
    # iterative bottom-up: pairing left to right and carrying an odd last node up
    # unchanged builds the same tree as RFC 6962's recursive split
    level = list(leaves)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def merkle_root(record_hashes: Sequence[str]) -> str:
    """The tree head of ``record_hashes`` (hex; the empty tree: SHA-256 of nothing)."""
    if not record_hashes:
        return hashlib.sha256(b"").hexdigest()
    return _root([leaf_hash(h) for h in record_hashes]).hex()


def python_merkle_extend(stack: list[bytes], size: int, hashes: list[str]) -> int:
    """Add ``hashes`` (hex) as the next leaves of the compact range ``stack`` of a tree
    of ``size`` leaves, in place; return the new size. Every leaf is hashed before the
    stack changes, so a value that is not hex leaves it as it was (ValueError). The
    compiled ``merkle_extend`` gives the same results."""
    leaves = [leaf_hash(h) for h in hashes]
    for node in leaves:
        bits = size
        while bits & 1:  # merge the equal-sized perfect subtrees this leaf completes
            node = node_hash(stack.pop(), node)
            bits >>= 1
        stack.append(node)
        size += 1
    return size


_merkle_extend: Callable[[list[bytes], int, list[str]], int] | None
try:  # compiled (optional: built where a C compiler is)
    from .._accel import merkle_extend as _merkle_extend
except ImportError:  # pragma: no cover - depends on the build
    _merkle_extend = None


class MerkleAccumulator:
    """The root of a growing list of leaves in O(log n) memory (a CT "compact range"):
    the roots of the perfect subtrees the binary decomposition of ``size`` gives, left
    to right. Its :meth:`root` equals :func:`merkle_root` of the same record hashes."""

    __slots__ = ("_stack", "size")

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[bytes] = []

    def add(self, record_hash: str) -> None:
        """Append one record hash (hex) as the next leaf."""
        node = leaf_hash(record_hash)
        size = self.size
        while size & 1:  # merge the equal-sized perfect subtrees this leaf completes
            node = node_hash(self._stack.pop(), node)
            size >>= 1
        self._stack.append(node)
        self.size += 1

    def extend(self, record_hashes: list[str]) -> None:
        """Append record hashes (hex) as the next leaves, in order: the same as
        :meth:`add` of each, in one call (compiled where built). A value that is not
        hex raises ValueError and adds none of them."""
        if _merkle_extend is not None:
            try:
                self.size = _merkle_extend(self._stack, self.size, record_hashes)
                return
            except (ValueError, TypeError):  # hex fromhex() takes (spaces): Python decides
                pass
        self.size = python_merkle_extend(self._stack, self.size, record_hashes)

    def root(self) -> str:
        """The tree head of the leaves so far (hex)."""
        if not self._stack:
            return hashlib.sha256(b"").hexdigest()
        node = self._stack[-1]
        for left in reversed(self._stack[:-1]):
            node = node_hash(left, node)
        return node.hex()


def _path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    n = len(leaves)
    if n <= 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, leaves[:k]), _root(leaves[k:])]
    return [*_path(m - k, leaves[k:]), _root(leaves[:k])]


def inclusion_proof(record_hashes: Sequence[str], index: int) -> list[str]:
    """RFC 6962 ``PATH(index, D[n])``: the audit path of leaf ``index`` (hex)."""
    if not 0 <= index < len(record_hashes):
        raise ValueError(f"leaf {index} is outside a tree of {len(record_hashes)}")
    return [h.hex() for h in _path(index, [leaf_hash(h) for h in record_hashes])]


def inclusion_proof_and_root(record_hashes: Sequence[str], index: int,
                             ) -> tuple[list[str], str]:
    """:func:`inclusion_proof` and :func:`merkle_root` together (each leaf hashed once)."""
    if not 0 <= index < len(record_hashes):
        raise ValueError(f"leaf {index} is outside a tree of {len(record_hashes)}")
    leaves = [leaf_hash(h) for h in record_hashes]
    return [h.hex() for h in _path(index, leaves)], _root(leaves).hex()


def verify_inclusion(record_hash: str, index: int, size: int, path: Sequence[str],
                     root: str) -> bool:
    """Whether ``path`` proves leaf ``index`` of a tree of ``size`` under ``root``
    (RFC 9162 section 2.1.3.2)."""
    try:
        if not 0 <= index < size:
            return False
        fn, sn = index, size - 1
        r = leaf_hash(record_hash)
        for item in path:
            p = bytes.fromhex(item)
            if sn == 0:
                return False
            if fn & 1 or fn == sn:
                r = node_hash(p, r)
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
            else:
                r = node_hash(r, p)
            fn >>= 1
            sn >>= 1
        return sn == 0 and r.hex() == root
    except (ValueError, TypeError):
        return False


def _subproof(m: int, leaves: Sequence[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [_root(leaves)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], whole), _root(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), _root(leaves[:k])]


def consistency_proof(record_hashes: Sequence[str], first_size: int) -> list[str]:
    """RFC 6962 ``PROOF(m, D[n])``: the tree of the first ``first_size`` leaves is a prefix
    of the tree of all of them (hex)."""
    if not 0 < first_size <= len(record_hashes):
        raise ValueError(f"no consistency proof from {first_size} to {len(record_hashes)}")
    return [h.hex() for h in _subproof(first_size, [leaf_hash(h) for h in record_hashes],
                                       True)]


def verify_consistency(first_size: int, first_root: str, second_size: int,
                       second_root: str, proof: Sequence[str]) -> bool:
    """Whether ``proof`` shows the tree ``(first_size, first_root)`` is a prefix of
    ``(second_size, second_root)`` (RFC 9162 section 2.1.4.2)."""
    try:
        if not 0 < first_size <= second_size:
            return False
        if first_size == second_size:
            return not proof and first_root == second_root
        path = [bytes.fromhex(p) for p in proof]
        if first_size & (first_size - 1) == 0:  # a power of two: its root is a node
            path.insert(0, bytes.fromhex(first_root))
        if not path:
            return False
        fn, sn = first_size - 1, second_size - 1
        while fn & 1:
            fn >>= 1
            sn >>= 1
        fr = sr = path[0]
        for c in path[1:]:
            if sn == 0:
                return False
            if fn & 1 or fn == sn:
                fr = node_hash(c, fr)
                sr = node_hash(c, sr)
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
            else:
                sr = node_hash(sr, c)
            fn >>= 1
            sn >>= 1
        return sn == 0 and fr.hex() == first_root and sr.hex() == second_root
    except (ValueError, TypeError):
        return False
