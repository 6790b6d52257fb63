"""``forget`` erases every personal reference to a subject, and verify still passes.

One subject is named in every place a record can name a person: its own records, as
``acting_as`` in another's record, in a delegation chain, by its email as another
record's ``user_email``, under subject keys in another's ``new_values`` and ``context``,
and as the ``resource_id`` of a record about a user. After ``forget`` none of its
identifiers is left in any table or archive, the report's counts are exact, verify with
the public key passes, and rewriting an erased location is found.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from integrity_support import BASE, KEY, execute, verify
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from otel_audit import AuditTrail
from otel_audit.cli import app
from otel_audit.errors import ConfigError
from otel_audit.forgetting import ForgetReport, SubjectMatchers
from otel_audit.integrity.canonical import GENESIS_HASH, canonical_stored_json, chain_hash
from otel_audit.integrity.keys import generate_signing_key
from otel_audit.record import AuditRecord, normalise
from otel_audit.retention import ERASED, forget, prune
from otel_audit.store.migrate import upgrade
from otel_audit.store.schema import ROW_COLUMNS, metadata
from otel_audit.store.writer import chain_row, create_store_engine

Factory = Callable[..., AuditTrail]
SUBJECT = "subj-7f3a"
EMAIL = "Subj.7F3A@Example.org"
#: the subject's identifiers, not as a prefix of another ID ("subj-7f3ab")
LEFT = re.compile(r"subj[-.]7f3a(?![0-9a-z])", re.IGNORECASE)
MATCHERS = SubjectMatchers().with_keys(["reviewers"])

#: seq -> what the record is (the order write() writes them)
OWN_1, OWN_2, ACTING, DELEGATED, EMAIL_ROW, KEYS_ROW, ABOUT, DECOY = range(1, 9)

BY_COLUMN = {"acting_as": 1, "client_ip": 2, "context": 2, "delegation_chain": 1,
             "new_values": 3, "old_values": 1, "resource_id": 1, "user_agent": 1,
             "user_email": 3, "user_id": 2}
BY_ACTION = {"ASSIGN": 1, "LOGIN": 2, "READ": 1, "UPDATE": 2, "USER_UPDATE": 1}
BY_RESOURCE_TYPE = {"doc": 3, "session": 2, "ticket": 1, "user": 1}
RECORDS = sum(BY_ACTION.values())


def write(trail: AuditTrail) -> None:
    """The subject in every place (seqs as the constants above), one day apart."""
    def at(seq: int) -> dt.datetime:
        return BASE + dt.timedelta(days=seq)

    rec = trail.record
    rec("LOGIN", user_id=SUBJECT, user_email=EMAIL, client_ip="10.1.1.1", user_agent="ua/1",
        resource_type="session", resource_id="s-1", context={"phone": "+33 1", "n": 1},
        timestamp=at(OWN_1))
    rec("UPDATE", user_id=SUBJECT, user_email=EMAIL, client_ip="10.1.1.1",
        resource_type="doc", resource_id="d-1", timestamp=at(OWN_2),
        old_values={"email": "subj.7f3a@example.org", "title": "a"},
        new_values={"owner": SUBJECT, "title": "b", "big": 12345678901234567})
    rec("UPDATE", user_id="alice", user_email="alice@example.org", acting_as=SUBJECT,
        resource_type="doc", resource_id="d-2", new_values={"title": "c"},
        timestamp=at(ACTING))
    rec("READ", user_id="carol", resource_type="doc", resource_id="d-3", timestamp=at(DELEGATED),
        delegation_chain=[{"principal": SUBJECT, "via": "token_exchange"},
                          {"principal": "svc-sync", "via": "service_account"}])
    rec("LOGIN", user_id="dave", user_email="SUBJ.7f3a@example.org", client_ip="10.2.2.2",
        resource_type="session", resource_id="s-2", timestamp=at(EMAIL_ROW))
    rec("ASSIGN", user_id="erin", user_email="erin@example.org", resource_type="ticket",
        resource_id="t-1", timestamp=at(KEYS_ROW),
        new_values={"assignee": SUBJECT, "reviewers": ["frank", SUBJECT], "ratio": 0.1},
        context={"requested_by": {"email": EMAIL.upper(), "team": "ops"}, "ticket": "t-1"})
    rec("USER_UPDATE", user_id="admin", resource_type="user", resource_id=SUBJECT,
        new_values={"role": "viewer"}, timestamp=at(ABOUT))
    rec("UPDATE", user_id="subj-7f3ab", user_email="other@example.org", acting_as="subj-7f3ab",
        resource_type="doc", resource_id="d-9", new_values={"owner": "subj-7f3ab"},
        timestamp=at(DECOY))


@pytest.fixture
def written(make_trail: Factory) -> AuditTrail:
    trail = make_trail(hmac_key=KEY, mode="sync")
    write(trail)
    return trail


def _tables(engine: Engine) -> list[tuple[str, str]]:
    """Every cell of every table as text: ``(table, cell)``."""
    out = []
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(table.select()):
                out += [(table.name, str(v)) for v in row if v is not None]
    return out


def _archived(archive: Path) -> list[str]:
    con = duckdb.connect()
    try:
        rows = con.execute(f"SELECT * FROM read_parquet('{archive}/**/*.parquet', "
                           "union_by_name = true)").fetchall()
    finally:
        con.close()
    return [str(v) for row in rows for v in row if v is not None]


def _row(engine: Engine, seq: int, *columns: str) -> tuple[Any, ...]:
    cols = ", ".join(f"CAST({c} AS TEXT)" if c in ("new_values", "context", "old_values",
                                                   "delegation_chain") else c
                     for c in columns)
    with engine.connect() as conn:
        return tuple(conn.execute(text(f"SELECT {cols} FROM audit_trails WHERE seq = :s "
                                       "AND user_id != 'dpo' AND action != 'ERASE'"),
                                  {"s": seq}).one())


def _assert_counts(report: ForgetReport) -> None:
    assert report.by_column == BY_COLUMN
    assert report.values == sum(BY_COLUMN.values())
    assert report.by_action == BY_ACTION
    assert report.by_resource_type == BY_RESOURCE_TYPE
    assert report.emails == 1  # learned from its own rows, compared case-insensitively


def test_every_reference_is_erased_and_verify_passes(
        written: AuditTrail, engine: Engine,
        keys: tuple[Ed25519PrivateKey, Ed25519PublicKey]) -> None:
    assert sum(bool(LEFT.search(cell)) for _, cell in _tables(engine)) > 10
    report = forget(engine, SUBJECT, erased_by="dpo", trail=written, signing_key=keys[0],
                    matchers=MATCHERS)
    assert report.live == RECORDS and report.archived == 0 and report.erasure_id
    _assert_counts(report)
    left = [(table, cell) for table, cell in _tables(engine) if LEFT.search(cell)]
    assert left == []
    result = verify(engine, public_key=keys[1])
    assert result.ok, result.findings
    # what the others' records keep
    assert _row(engine, EMAIL_ROW, "user_id", "user_email", "client_ip") == (
        "dave", ERASED, "10.2.2.2")
    assert _row(engine, ACTING, "user_id", "acting_as") == ("alice", ERASED)
    chain = json.loads(_row(engine, DELEGATED, "delegation_chain")[0])
    assert chain == [{"principal": ERASED, "via": "token_exchange"},
                     {"principal": "svc-sync", "via": "service_account"}]
    values, context = _row(engine, KEYS_ROW, "new_values", "context")
    assert json.loads(values) == {"assignee": ERASED, "reviewers": ["frank", ERASED],
                                  "ratio": 0.1}
    assert json.loads(context) == {"requested_by": {"email": ERASED, "team": "ops"},
                                   "ticket": "t-1"}
    assert _row(engine, ABOUT, "user_id", "resource_id") == ("admin", ERASED)
    assert _row(engine, DECOY, "user_id", "acting_as") == ("subj-7f3ab", "subj-7f3ab")
    assert '"big":12345678901234567' in _row(engine, OWN_2, "new_values")[0].replace(" ", "")
    # the ERASE record holds counts, never the subject
    with engine.connect() as conn:
        erase = json.loads(conn.execute(text(
            "SELECT CAST(context AS TEXT) FROM audit_trails WHERE action = 'ERASE'")).scalar_one())
    assert erase["values_by_column"] == BY_COLUMN and erase["records_erased"] == RECORDS
    # a second run finds nothing left; verify still passes
    again = forget(engine, SUBJECT, emails=[EMAIL], signing_key=keys[0], matchers=MATCHERS)
    assert (again.live, again.values, again.erasure_id) == (0, 0, None)
    assert verify(engine, public_key=keys[1]).ok


def test_the_erasure_lists_every_location(
        written: AuditTrail, engine: Engine,
        keys: tuple[Ed25519PrivateKey, Ed25519PublicKey]) -> None:
    forget(engine, SUBJECT, signing_key=keys[0], matchers=MATCHERS)
    with engine.connect() as conn:
        document = json.loads(conn.execute(text("SELECT document FROM audit_erasures"))
                              .scalar_one())
    at = {row["seq"]: sorted(".".join(map(str, loc)) for loc in row["at"])
          for row in document["rows"]}
    expected = {
        OWN_1: ["client_ip", "context.phone", "user_agent", "user_email", "user_id"],
        OWN_2: ["client_ip", "new_values.owner", "old_values.email", "user_email", "user_id"],
        ACTING: ["acting_as"], DELEGATED: ["delegation_chain.0.principal"],
        EMAIL_ROW: ["user_email"],
        KEYS_ROW: ["context.requested_by.email", "new_values.assignee",
                   "new_values.reviewers.1"],
        ABOUT: ["resource_id"]}
    assert at == expected


@pytest.mark.parametrize(("seq", "column", "value"), [
    (ACTING, "acting_as", SUBJECT),            # an erased location written back
    (EMAIL_ROW, "user_email", EMAIL),
    (EMAIL_ROW, "user_id", "mallory"),         # a kept value of a partly erased record
    (ABOUT, "resource_id", SUBJECT),
    (KEYS_ROW, "new_values", '{"assignee":"subj-7f3a","reviewers":["frank","[erased]"],'
                             '"ratio":0.1}'),
    (DELEGATED, "delegation_chain", '[{"principal":"subj-7f3a","via":"token_exchange"},'
                                    '{"principal":"svc-sync","via":"service_account"}]'),
    (KEYS_ROW, "user_id", "mallory"),
])
def test_rewriting_an_erased_record_is_found(
        written: AuditTrail, engine: Engine, store_url: str,
        keys: tuple[Ed25519PrivateKey, Ed25519PublicKey], seq: int, column: str,
        value: str) -> None:
    forget(engine, SUBJECT, signing_key=keys[0], matchers=MATCHERS)
    assert verify(engine, public_key=keys[1]).ok
    json_column = column in ("new_values", "delegation_chain")
    cast = "CAST(:v AS JSONB)" if json_column and store_url.startswith("postgresql") else ":v"
    execute(engine, f"UPDATE audit_trails SET {column} = {cast} WHERE seq = :s", v=value,
            s=seq)
    found = {(f.kind, f.seq) for f in verify(engine, public_key=keys[1]).findings}
    assert ("erasure", seq) in found


def test_a_deleted_erasure_leaves_its_rewritten_records_unproven(
        written: AuditTrail, engine: Engine,
        keys: tuple[Ed25519PrivateKey, Ed25519PublicKey]) -> None:
    forget(engine, SUBJECT, signing_key=keys[0], matchers=MATCHERS)
    execute(engine, "DELETE FROM audit_erasures")
    found = {(f.kind, f.seq) for f in verify(engine, public_key=keys[1]).findings}
    # the direct rewrites no longer match their chain hash; erased rows are unlisted
    assert {("modified", KEYS_ROW), ("modified", ABOUT), ("erasure", OWN_1),
            ("erasure", EMAIL_ROW)} <= found


def test_an_unsigned_erasure_does_not_vouch_for_rewritten_records(
        written: AuditTrail, engine: Engine,
        keys: tuple[Ed25519PrivateKey, Ed25519PublicKey]) -> None:
    forget(engine, SUBJECT, matchers=MATCHERS)  # no signing key
    kinds = {f.kind for f in verify(engine, public_key=keys[1]).findings}
    assert kinds == {"unauthenticated", "modified"}


def test_archives_are_covered_the_same_way(
        written: AuditTrail, engine: Engine, tmp_path: Path,
        keys: tuple[Ed25519PrivateKey, Ed25519PublicKey]) -> None:
    prune(engine, BASE + dt.timedelta(days=EMAIL_ROW, hours=1), tmp_path,
          signing_key=keys[0])
    assert any(LEFT.search(cell) for cell in _archived(tmp_path))
    report = forget(engine, SUBJECT, archive_dir=tmp_path, erased_by="dpo", trail=written,
                    signing_key=keys[0], matchers=MATCHERS)
    assert (report.live, report.archived) == (2, RECORDS - 2) and report.files
    _assert_counts(report)
    assert not [c for c in _archived(tmp_path) if LEFT.search(c)]
    assert not [c for _, c in _tables(engine) if LEFT.search(c)]
    result = verify(engine, archive_dir=tmp_path, public_key=keys[1])
    assert result.ok, result.findings


def test_matchers_file_and_cli(written: AuditTrail, store_url: str, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch,
                               keys: tuple[Ed25519PrivateKey, Ed25519PublicKey]) -> None:
    pem, public = generate_signing_key()
    monkeypatch.setenv("OTEL_AUDIT_SIGNING_KEY", pem)
    monkeypatch.setenv("OTEL_AUDIT_HMAC_KEY", KEY)
    matchers = tmp_path / "matchers.toml"
    matchers.write_text('keys = ["reviewers"]\nresource_types = ["account"]\n')
    loaded = SubjectMatchers.load(matchers)
    assert "reviewers" in loaded.keys and {"user", "account"} == loaded.resource_types
    runner = CliRunner()
    result = runner.invoke(app, ["forget", "--db", store_url, "--user", SUBJECT,
                                 "--matchers", str(matchers), "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["by_column"] == BY_COLUMN and report["live"] == RECORDS
    assert report["by_action"] == BY_ACTION
    result = runner.invoke(app, ["verify", "--db", store_url, "--public-key", public])
    assert result.exit_code == 0, result.output
    # the table (CSV when piped): nothing left to erase, with an explicit email
    result = runner.invoke(app, ["forget", "--db", store_url, "--user", SUBJECT,
                                 "--email", EMAIL, "--match-key", "reviewers"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("erased 0 live and 0 archived records")


def test_the_others_can_be_forgotten_after(
        written: AuditTrail, engine: Engine,
        keys: tuple[Ed25519PrivateKey, Ed25519PublicKey]) -> None:
    """A partly erased record (the subject's email erased from dave's) is erased further
    when dave is forgotten; each erasure's newest entry is the one checked."""
    forget(engine, SUBJECT, signing_key=keys[0], matchers=MATCHERS)
    for other in ("dave", "alice", "erin", "carol", "admin"):
        report = forget(engine, other, signing_key=keys[0])
        assert report.live == 1, other
        result = verify(engine, public_key=keys[1])
        assert result.ok, (other, result.findings)
    assert _row(engine, EMAIL_ROW, "user_id", "user_email", "client_ip") == (ERASED,) * 3
    with engine.connect() as conn:
        salts = conn.execute(text("SELECT count(*) FROM audit_trails WHERE seq < :s "
                                  "AND pii_salt IS NOT NULL"), {"s": DECOY}).scalar_one()
    assert salts == 0  # nothing personal left: no salt either
    left = [cell for _, cell in _tables(engine)
            if re.search(r"\b(dave|alice|erin|carol)\b", cell)]
    assert left == []
    # the erased values written back are still found
    execute(engine, "UPDATE audit_trails SET user_id = 'dave' WHERE seq = :s", s=EMAIL_ROW)
    assert ("erasure", EMAIL_ROW) in {(f.kind, f.seq)
                                      for f in verify(engine, public_key=keys[1]).findings}


def test_cli_prints_the_counts(written: AuditTrail, store_url: str,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_AUDIT_SIGNING_KEY", generate_signing_key()[0])
    result = CliRunner().invoke(app, ["forget", "--db", store_url, "--user", SUBJECT,
                                      "--match-key", "Reviewers", "--format", "csv"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"erased {RECORDS} live and 0 archived records (0 archive "
                               f"files rewritten, {sum(BY_COLUMN.values())} values)")
    rows = {tuple(line.split(",")) for line in lines[2:]}
    assert lines[1] == "by,name,erased"
    assert rows == {("column", k, str(v)) for k, v in BY_COLUMN.items()} | {
        ("action", k, str(v)) for k, v in BY_ACTION.items()} | {
        ("resource_type", k, str(v)) for k, v in BY_RESOURCE_TYPE.items()}


# ------------------------------------------------------------ rows of an earlier format


def _format2_rows(stream: str) -> list[tuple[Any, ...]]:
    """Rows as a release before layout 3 sealed them (format 2, keyed): ``acting_as``
    hashed as stored. Seq 1: alice acting as the subject; 2: the subject's own record
    acting as alice; 3: bob, no reference."""
    rows: list[tuple[Any, ...]] = []
    prev = GENESIS_HASH
    people = [("alice", SUBJECT), (SUBJECT, "alice"), ("bob", None)]
    for seq, (user, acting) in enumerate(people, start=1):
        record = AuditRecord(
            id=f"0192d6a0-0000-7000-8000-00000000010{seq}",
            timestamp=BASE + dt.timedelta(seconds=seq), action="UPDATE", user_id=user,
            user_email=f"{user}@example.org", acting_as=acting, resource_type="invoice",
            resource_id=str(seq), new_values={"amount": 12345678901234567, "owner": user},
            schema_version=2)
        record, texts = normalise(record)
        texts = {k: None if v is None else canonical_stored_json(v) for k, v in texts.items()}
        row = chain_row(record, texts, stream, seq, prev, None, f"{seq:02d}" * 16, None)
        digest = chain_hash(row, KEY.encode())
        rows.append((*row[:ROW_COLUMNS.index("hash")], digest))
        prev = digest
    return rows


def _insert_old(engine: Engine, rows: list[tuple[Any, ...]]) -> None:
    names = ROW_COLUMNS[:ROW_COLUMNS.index("hash") + 1]
    with engine.begin() as conn:
        for row in rows:
            values = dict(zip(names, row, strict=True))
            if engine.dialect.name != "sqlite":
                values["timestamp"] = dt.datetime.fromisoformat(values["timestamp"] + "+00:00")
                values["requires_review"] = bool(values["requires_review"])
                values["success"] = bool(values["success"])
            conn.execute(text(f"INSERT INTO audit_trails ({', '.join(names)}) VALUES "
                              f"({', '.join(':' + n for n in names)})"), values)


def test_format_2_rows_hashing_acting_as_as_stored(
        make_trail: Factory, engine: Engine,
        keys: tuple[Ed25519PrivateKey, Ed25519PublicKey]) -> None:
    make_trail(hmac_key=KEY, mode="sync").record("READ", user_id="x")  # the schema
    upgrade(engine)
    _insert_old(engine, _format2_rows("old@host:1:a"))
    assert verify(engine).ok
    report = forget(engine, SUBJECT, signing_key=keys[0])
    assert report.live == 2 and report.by_column == {
        "acting_as": 1, "new_values": 1, "user_email": 1, "user_id": 1}
    result = verify(engine, public_key=keys[1])
    assert result.ok, result.findings
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT seq, user_id, acting_as, pii_salt FROM audit_trails "
                                 "WHERE stream = 'old@host:1:a' ORDER BY seq")).all()
    # alice keeps her name (under a fresh salt) and loses the subject; the subject's own
    # record keeps alice, whom a format-2 row hashes as stored (not the subject's value)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (1, "alice", ERASED), (2, ERASED, "alice"), (3, "bob", None)]
    assert rows[0][3] is not None and rows[1][3] is None
    with engine.connect() as conn:
        document = json.loads(conn.execute(text("SELECT document FROM audit_erasures"))
                              .scalar_one())
    assert {r["seq"]: ("h" in r) for r in document["rows"]} == {1: True, 2: True}
    for column, value in (("acting_as", "eve"), ("user_id", "mallory")):
        execute(engine, f"UPDATE audit_trails SET {column} = :v WHERE seq = 1 AND "
                "stream = 'old@host:1:a'", v=value)
        found = {(f.kind, f.seq) for f in verify(engine, public_key=keys[1]).findings}
        assert ("erasure", 1) in found


@pytest.mark.parametrize("content", ['["owner"]', '{"keys": "owner"}', '{"key": ["owner"]}',
                                     "{not json"])
def test_a_bad_matchers_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "matchers.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=r"matchers\.json"):
        SubjectMatchers.load(path)
    replaced = tmp_path / "only.json"
    replaced.write_text('{"keys": ["Owner"], "replace_defaults": true}')
    assert SubjectMatchers.load(replaced).keys == {"owner"}


def test_no_byte_of_the_subject_is_left_in_the_sqlite_files(sqlite_url: str) -> None:
    """Not only the table: the database file and its WAL (freed space overwritten)."""
    trail = AuditTrail(sqlite_url, hmac_key=KEY, mode="sync", auto_migrate=True)
    for i in range(100):  # pages around the subject's records
        trail.record("READ", user_id=f"user-{i}", new_values={"n": i})
    write(trail)
    engine = create_store_engine(sqlite_url)
    try:
        assert forget(engine, SUBJECT, matchers=MATCHERS).live == RECORDS
    finally:
        engine.dispose()
        trail.shutdown(5)
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
    assert path in files
    for file in files:
        data = file.read_bytes()
        assert not re.search(rb"(?i)subj[-.]7f3a(?![0-9a-z])", data), file.name


def test_a_record_of_no_chain_is_erased_too(
        written: AuditTrail, engine: Engine, store_url: str,
        keys: tuple[Ed25519PrivateKey, Ed25519PublicKey]) -> None:
    """A row outside every chain (verify reports it as inserted) still loses the
    subject's values: there is no proof to keep, and no entry is checked for it."""
    doc = json.dumps({"owner": SUBJECT, "n": 1})
    cast = "CAST(:doc AS JSONB)" if store_url.startswith("postgresql") else ":doc"
    execute(engine, "INSERT INTO audit_trails (id, timestamp, action, user_id, user_email, "
            "acting_as, new_values, requires_review, success, schema_version) VALUES "
            f"('loose-1', :ts, 'UPDATE', :user, :email, 'alice', {cast}, :no, :yes, 3)",
            ts=BASE, user=SUBJECT, email=EMAIL, doc=doc, no=False, yes=True)
    before = [(f.kind, f.record_id) for f in verify(engine).findings]
    assert before == [("inserted", "loose-1")]
    report = forget(engine, SUBJECT, signing_key=keys[0], matchers=MATCHERS)
    assert report.live == RECORDS + 1
    with engine.connect() as conn:
        row = conn.execute(text("SELECT user_id, user_email, acting_as, CAST(new_values AS "
                                "TEXT) FROM audit_trails WHERE id = 'loose-1'")).one()
    assert row[:3] == (ERASED, ERASED, ERASED)  # nothing to prove: every personal value
    assert json.loads(row[3]) == {"owner": ERASED, "n": 1}
    after = [(f.kind, f.record_id) for f in verify(engine, public_key=keys[1]).findings]
    assert after == [("inserted", "loose-1")]
    assert not [cell for _, cell in _tables(engine) if LEFT.search(cell)]
