"""Proofs of one record: an inclusion proof to a signed seal's Merkle root, checked with
a public key and nothing else; consistency between two seals; RFC 6962 trees."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from integrity_support import KEY, execute, write_records
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from otel_audit import AuditTrail
from otel_audit.cli import app
from otel_audit.integrity.intervals import seal_intervals
from otel_audit.integrity.keys import generate_signing_key, load_public_key, load_signing_key
from otel_audit.integrity.merkle import (
    MerkleAccumulator,
    consistency_proof,
    inclusion_proof,
    inclusion_proof_and_root,
    merkle_root,
    verify_consistency,
    verify_inclusion,
)
from otel_audit.integrity.proofs import check_proof, consistency_document, proof_document
from otel_audit.integrity.seals import all_seals, seal_all
from otel_audit.integrity.verify import verify_trail

Factory = Callable[..., AuditTrail]
runner = CliRunner()
SEALER = "test-sealer"


def _hashes(n: int) -> list[str]:
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]


def _rfc6962_root(leaves: list[bytes]) -> bytes:
    """The recursive definition of RFC 6962 section 2.1, to check the iterative one."""
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _rfc6962_root(leaves[:k])
                          + _rfc6962_root(leaves[k:])).digest()


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17])
def test_merkle_inclusion_and_consistency(n: int) -> None:
    hashes = _hashes(n)
    root = merkle_root(hashes)
    assert root == _rfc6962_root([bytes.fromhex(h) for h in hashes]).hex()
    for i in range(n):
        path = inclusion_proof(hashes, i)
        assert verify_inclusion(hashes[i], i, n, path, root)
        assert not verify_inclusion(hashes[(i + 1) % n], i, n, path, root) or n == 1
        assert not verify_inclusion(hashes[i], i, 2 * n + 1, path, root)  # a longer path
    for m in range(1, n + 1):
        proof = consistency_proof(hashes, m)
        first = merkle_root(hashes[:m])
        assert verify_consistency(m, first, n, root, proof)
        if m < n:
            assert not verify_consistency(m, merkle_root(_hashes(m + 1)[1:]), n, root, proof)


@pytest.fixture
def keys() -> tuple[str, str]:
    """A sealer's (private, public) key pair."""
    return generate_signing_key()


def _sealed(make_trail: Factory, engine: Engine, keys: tuple[str, str],
            count: int = 12) -> list[str]:
    """``count`` records of one plain-SHA-256 stream sealed by ``otel-audit seal``."""
    trail = make_trail(mode="sync", seal_interval=0)
    write_records(trail, count)
    trail.flush()
    seal_all(engine, SEALER, load_signing_key(keys[0]))
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT id FROM audit_trails ORDER BY seq")).scalars())


def test_a_proof_verifies_with_the_public_key_only(make_trail: Factory, engine: Engine,
                                                   keys: tuple[str, str]) -> None:
    ids = _sealed(make_trail, engine, keys)
    public = load_public_key(keys[1])
    proofs = [proof_document(engine, record_id) for record_id in ids]
    offline = json.loads(json.dumps(proofs))  # what a file carries
    assert [check_proof(p, public) for p in offline] == [None] * len(ids)
    doc = offline[5]
    assert doc["record"]["fields"]["id"] == ids[5]
    text_ = json.dumps(doc)
    assert "user-1@" not in text_ and "user1@example.com" not in text_  # digest only
    assert "10.0.0.7" not in text_
    other = load_public_key(generate_signing_key()[1])
    assert check_proof(doc, other) == ("the signature of seal 1 does not verify with the "
                                       "given keys")


def _changed(doc: dict[str, Any], where: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    where(out)
    return out


def _flip(value: str) -> str:
    return ("1" if value[0] != "1" else "2") + value[1:]


def test_a_changed_byte_fails(make_trail: Factory, engine: Engine,
                              keys: tuple[str, str]) -> None:
    ids = _sealed(make_trail, engine, keys)
    doc = proof_document(engine, ids[6])
    public = load_public_key(keys[1])
    assert check_proof(doc, public) is None

    def record(d: dict[str, Any]) -> None:
        d["record"]["fields"]["action"] = "DELETE"

    def path(d: dict[str, Any]) -> None:
        d["path"][1] = _flip(d["path"][1])

    def root(d: dict[str, Any]) -> None:
        heads = json.loads(d["seal"]["heads"])
        for head in heads.values():
            head[3] = _flip(head[3])
        d["seal"]["heads"] = json.dumps(heads, sort_keys=True, separators=(",", ":"))

    def signature(d: dict[str, Any]) -> None:
        d["seal"]["signature"] = _flip(d["seal"]["signature"])

    def index(d: dict[str, Any]) -> None:
        d["leaf_index"] += 1

    expected = {
        record: "the record does not match its hash",
        path: "the audit path does not lead to the sealed Merkle root",
        root: "seal 1 does not match its hash",
        signature: "the signature of seal 1 does not verify with the given keys",
        index: "the record's place is not the one the seal's interval gives",
    }
    for change, reason in expected.items():
        assert check_proof(_changed(doc, change), public) == reason


def test_a_proof_survives_later_tampering_which_verify_finds(
        make_trail: Factory, engine: Engine, keys: tuple[str, str]) -> None:
    ids = _sealed(make_trail, engine, keys)
    doc = proof_document(engine, ids[3])
    execute(engine, "UPDATE audit_trails SET action = 'DELETE' WHERE id = :i", i=ids[3])
    assert check_proof(doc, load_public_key(keys[1])) is None  # it proves what was sealed
    report = verify_trail(engine, key=None)
    assert [(f.kind, f.record_id) for f in report.findings] == [("modified", ids[3])]
    with pytest.raises(Exception, match="does not match its plain SHA-256 hash"):
        proof_document(engine, ids[3])


def test_intervals_and_the_seal_chain(make_trail: Factory, engine: Engine,
                                      keys: tuple[str, str]) -> None:
    ids = _sealed(make_trail, engine, keys, count=5)
    signing = load_signing_key(keys[0])
    unchanged = seal_all(engine, SEALER, signing)
    assert seal_intervals(unchanged.heads) == {}  # nothing new: a plain head
    trail = make_trail(mode="sync", seal_interval=0)
    write_records(trail, 3)
    trail.flush()
    third = seal_all(engine, SEALER, signing)
    (new,) = [v for v in seal_intervals(third.heads).values()]
    assert new[:2] == (1, 3)
    doc = proof_document(engine, ids[2])
    assert doc["seal"]["seq"] == 1 and [s["seq"] for s in doc["chain"]] == [2, 3]
    public = load_public_key(keys[1])
    assert check_proof(doc, public) is None
    cut = _changed(doc, lambda d: d["chain"].pop(0))
    assert check_proof(cut, public) == "seal 3 does not follow seal 1 of test-sealer"
    consistency = consistency_document(engine, SEALER, 1, 3)
    assert check_proof(json.loads(json.dumps(consistency)), public) is None
    back = copy.deepcopy(consistency)
    del back["seals"][1]
    assert check_proof(back, public) == "seal 3 does not follow seal 1 of test-sealer"
    # the second stream's records are dated (2026-01-01) before the seals that precede
    # it: what a backdated forged stream looks like, unless the dates are known to be old
    assert [f.kind for f in verify_trail(engine, key=None).findings] == ["inserted"]
    assert verify_trail(engine, key=None, stream_grace=None).ok


def test_cli_prove_and_verify_proof(make_trail: Factory, engine: Engine, store_url: str,
                                    keys: tuple[str, str], tmp_path: Path) -> None:
    ids = _sealed(make_trail, engine, keys)
    out = tmp_path / "proof.json"
    result = runner.invoke(app, ["prove", ids[4], "--db", store_url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    ok = runner.invoke(app, ["verify-proof", str(out), "--public-key", keys[1]])
    assert ok.exit_code == 0, ok.output
    doc = json.loads(out.read_text())
    doc["record"]["fields"]["resource_id"] = "tool-x"
    out.write_text(json.dumps(doc))
    bad = runner.invoke(app, ["verify-proof", str(out), "--public-key", keys[1]])
    assert bad.exit_code == 1
    assert "the record does not match its hash" in bad.output
    out.write_text("{}")
    assert runner.invoke(app, ["verify-proof", str(out), "--public-key", keys[1]]
                         ).exit_code == 2
    unknown = runner.invoke(app, ["prove", "no-such-record", "--db", store_url])
    assert unknown.exit_code == 1 and "no record" in unknown.output
    cons = tmp_path / "consistency.json"
    runner.invoke(app, ["seal", "--db", store_url, "--name", SEALER, "--key", keys[0]])
    made = runner.invoke(app, ["prove", "--consistency", "1", "2", "--sealer", SEALER,
                               "--db", store_url, "--out", str(cons)])
    assert made.exit_code == 0, made.output
    assert runner.invoke(app, ["verify-proof", str(cons), "--public-key", keys[1]]
                         ).exit_code == 0


def test_proof_and_root_together() -> None:
    hashes = _hashes(11)
    for i in range(11):
        assert inclusion_proof_and_root(hashes, i) == (inclusion_proof(hashes, i),
                                                       merkle_root(hashes))


def test_a_trails_own_seals_prove_its_records(make_trail: Factory, engine: Engine,
                                              keys: tuple[str, str]) -> None:
    trail = make_trail(mode="sync", seal_interval=1e-9, signing_key=keys[0])  # every batch
    write_records(trail, 4)
    trail.shutdown()
    seals = all_seals(engine)
    assert [seal_intervals(s.heads)[s.sealer][:2] for s in seals] == [
        (1, 1), (2, 2), (3, 3), (4, 4)]
    with engine.connect() as conn:
        ids = list(conn.execute(text("SELECT id FROM audit_trails ORDER BY seq")).scalars())
    public = load_public_key(keys[1])
    docs = [proof_document(engine, record_id) for record_id in ids]
    assert [len(d["chain"]) for d in docs] == [3, 2, 1, 0]
    assert [check_proof(d, public) for d in docs] == [None] * 4
    assert verify_trail(engine, key=None, public_key=public).ok


def test_a_keyed_trails_records_prove_with_public_keys_only(
        make_trail: Factory, engine: Engine, keys: tuple[str, str]) -> None:
    # format 3: the hashes are public whatever the HMAC key (the MACs are apart), so a
    # keyed trail's seals carry the tree and its records prove without the key
    trail = make_trail(mode="sync", hmac_key=KEY, signing_key=keys[0])
    write_records(trail, 3)
    trail.shutdown()
    (seal,) = all_seals(engine)
    assert seal.head_map()[seal.sealer][0] == 3
    assert seal_intervals(seal.heads)[seal.sealer][:2] == (1, 3)
    with engine.connect() as conn:
        ids = list(conn.execute(text("SELECT id FROM audit_trails ORDER BY seq")).scalars())
    public = load_public_key(keys[1])
    assert [check_proof(proof_document(engine, i), public) for i in ids] == [None] * 3
    report = verify_trail(engine, key=None, public_key=public)
    assert report.ok and report.macs_unchecked == 3


def test_the_accumulator_gives_the_tree_head() -> None:
    acc = MerkleAccumulator()
    assert acc.root() == merkle_root([])
    hashes = _hashes(70)
    for n, record_hash in enumerate(hashes, 1):
        acc.add(record_hash)
        assert acc.root() == merkle_root(hashes[:n])
