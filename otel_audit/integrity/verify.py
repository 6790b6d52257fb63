"""Verifying the trail: every chain, every checkpoint, every archive file.

:func:`verify_trail` walks the chain rows of the live store (and of the Parquet archives,
merged by ``(stream, seq)``) once, recomputes each hash, checks each link, and returns a
:class:`VerifyReport` whose findings each have a *kind*:

``modified``       a record's content no longer matches its hash, or its hash is not the
                   one its successor (or a checkpoint) committed to
``deleted``        sequence numbers missing inside a chain (a gap)
``inserted``       a row that belongs to no chain position (no chain, a duplicate seq, a
                   forged row linked to nothing)
``reordered``      a record that verifies, but at another position than the one it holds
``truncated``      a chain ends before a checkpoint's sequence number (records removed at
                   the end, or the database rolled back to an old backup)
``bad_signature``  a checkpoint, seal, erasure or manifest whose Ed25519 signature does
                   not verify
``unsigned``       with a public key, an unsigned checkpoint, seal or manifest: a warning,
                   a finding with ``require_signed``
``unauthenticated`` an erasure that cannot be authenticated: unsigned, or no public key
                   given (erased rows could then be forged)
``erasure``        an erased row no erasure lists, one holding anything but the erasure
                   markers, a listed row that is not erased, a missing ``ERASE`` record
``seal``           a seal whose content does not match its hash, that does not link to
                   the previous seal of its sealer, or seals missing from a sealer's chain
``conflict``       two checkpoints or seals name different hashes for one ``(stream, seq)``
``malformed``      a chained row whose ``seq`` is not an integer, or that holds a binary
                   value
``archive``        an archive file missing, unlisted, or different from its manifest, a
                   run whose records do not match its summary
"""

from __future__ import annotations

import datetime as dt
import heapq
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .._internal import log_internal_error
from .canonical import GENESIS_HASH, chain_hash
from .checkpoints import Checkpoint
from .keys import PublicKeys

if TYPE_CHECKING:
    from .seals import Seal

__all__ = [
    "FINDING_KINDS",
    "PARALLEL_FROM",
    "Finding",
    "VerifyReport",
    "verify_rows",
    "verify_trail",
]

#: From this many records on, ``verify_trail`` uses one process per CPU by default.
PARALLEL_FROM = 200_000

FINDING_KINDS = ("modified", "deleted", "inserted", "reordered", "truncated",
                 "bad_signature", "unsigned", "unauthenticated", "erasure", "seal",
                 "conflict", "malformed", "archive")


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem found by :func:`verify_trail`."""

    kind: str
    stream: str | None
    seq: int | None
    record_id: str | None
    detail: str


@dataclass(slots=True)
class VerifyReport:
    """The outcome of a verification: counts and findings (``ok`` when there are none)."""

    records: int = 0
    streams: int = 0
    checkpoints: int = 0
    archive_files: int = 0
    erased: int = 0
    seals: int = 0
    erasures: int = 0
    findings: list[Finding] = field(default_factory=list)
    #: what does not fail the verification (``unsigned`` without ``require_signed``)
    warnings: list[Finding] = field(default_factory=list)
    #: IDs of the erased records the walk met (checked against the erasures after it)
    erased_ids: list[str] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        """Whether nothing was found."""
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (``--format json``)."""
        return {"ok": self.ok, "records": self.records, "streams": self.streams,
                "checkpoints": self.checkpoints, "seals": self.seals,
                "erasures": self.erasures, "archive_files": self.archive_files,
                "erased_records": self.erased,
                "findings": [asdict(f) for f in self.findings],
                "warnings": [asdict(f) for f in self.warnings]}


class RowSource(Protocol):
    """What the verifier reads: source rows sorted by ``(stream, seq)``, and lookups.

    A source row starts with ``stream, seq, prev_hash, hash, id, pii``; the rest is the
    source's own (see :mod:`otel_audit.integrity.sources`).
    """

    def rows(self, stream: str | None = None) -> Iterator[tuple[Any, ...]]: ...
    def count(self, stream: str | None = None) -> int: ...
    def starts_since(self, since: dt.datetime) -> dict[str, int]: ...
    def seqs_by_hash(self, stream: str, hashes: list[str]) -> dict[str, int]: ...
    def content_ok(self, row: tuple[Any, ...], key: bytes | None) -> bool: ...
    def chain_row(self, row: tuple[Any, ...]) -> tuple[Any, ...]: ...


_HASH, _ID, _PII = 3, 4, 5
#: SQLite's names of the Python types a malformed ``seq`` can come back as.
_SQL_TYPES = {str: "text", float: "real", bytes: "blob"}


def _tagged(source: RowSource, stream: str | None) -> Iterator[tuple[Any, ...]]:
    for row in source.rows(stream):
        yield (row[0], row[1], source, row)


class _Walker:
    """State of the walk over one stream at a time."""

    def __init__(self, key: bytes | None, report: VerifyReport,
                 checkpoints: dict[str, dict[int, str]],
                 starts: dict[str, int] | None) -> None:
        self.key = key
        self.report = report
        self.checkpoints = checkpoints
        self.starts = starts
        self.stream: str | None = None
        self.prev: tuple[Any, ...] | None = None
        self.prev_status = "ok"
        self.candidates: list[tuple[RowSource, tuple[Any, ...]]] = []
        #: a range walker (``--workers``) leaves a first row that does not verify to the
        #: parent, which knows the record before it: reordered, inserted or modified
        self.defer_first = False
        self.deferred: tuple[Any, ...] | None = None
        self.last_seq: dict[str, int] = {}
        self.first_seq: dict[str, int] = {}

    def add(self, kind: str, row: Sequence[Any] | None, detail: str,
            stream: str | None = None, seq: int | None = None) -> None:
        if row is not None:
            stream, seq = row[0], row[1]
        self.report.findings.append(Finding(kind, stream, seq,
                                            row[_ID] if row is not None else None, detail))

    def step(self, row: tuple[Any, ...], source: RowSource) -> None:
        stream, seq, prev_hash = row[0], row[1], row[2]
        if type(seq) is not int:
            if seq is not None:  # NULL: reported with the unchained rows
                kind = _SQL_TYPES.get(type(seq), type(seq).__name__)
                self.report.findings.append(Finding(
                    "malformed", stream if isinstance(stream, str) else None, None,
                    row[_ID] if isinstance(row[_ID], str) else None,
                    f"seq is not an integer ({kind})"))
            return
        if stream != self.stream:
            self.stream, self.prev, self.prev_status = stream, None, "ok"
            self.first_seq[stream] = seq
            self.report.streams += 1
        self.report.records += 1
        pii = row[_PII]
        if isinstance(pii, str) and '"d"' in pii:
            self.report.erased += 1
            self.report.erased_ids.append(row[_ID])
        ok = source.content_ok(row, self.key)
        prev = self.prev
        linked: bool | None
        if prev is None:
            start = None if self.starts is None else self.starts.get(stream)
            if start is not None or seq != 1:
                linked = None  # the chain's beginning is outside what we read
                if start is None:
                    self.add("deleted", None, f"records 1..{seq - 1} of this stream are "
                             "missing (pruned? pass the archive directory)", stream, 1)
            else:
                linked = prev_hash == GENESIS_HASH
        elif seq == prev[1]:
            self.add("inserted", row, f"a second record claims seq {seq}")
            return
        elif seq > prev[1] + 1:
            missing = f"{prev[1] + 1}" if seq == prev[1] + 2 else f"{prev[1] + 1}..{seq - 1}"
            self.add("deleted", None, f"records {missing} are missing (deleted, or sealed "
                     "but never committed)", stream, prev[1] + 1)
            linked = None
        else:
            linked = prev_hash == prev[_HASH]
        status = "ok"
        if not ok and prev is None and self.defer_first and self.starts is not None:
            self.deferred, status = row, "deferred"
        elif not ok:
            if linked is False:
                self.candidates.append((source, row))
                status = "candidate"
            else:
                self.add("modified", row, "content does not match its hash")
                status = "modified"
        elif linked is False and prev is not None and self.prev_status == "ok":
            self.add("modified", prev, "its hash is not the one the next record committed to")
        cps = self.checkpoints.get(stream)
        if cps is not None and seq in cps and cps[seq] != row[_HASH] and status == "ok":
            self.add("modified", row, "hash differs from the checkpoint (chain rebuilt?)")
        self.prev, self.prev_status = row, status
        self.last_seq[stream] = seq


#: A sealed head: ``(stream, seq, hash, where it comes from)``.
Head = tuple[str, int, str, str]


def verify_rows(
    sources: Sequence[RowSource],
    *,
    key: bytes | None = None,
    stream: str | None = None,
    since: dt.datetime | None = None,
    checkpoints: Iterable[Checkpoint] = (),
    public_key: PublicKeys | None = None,
    progress: Callable[[int], None] | None = None,
    report: VerifyReport | None = None,
    require_signed: bool = False,
    heads: Iterable[Head] = (),
) -> VerifyReport:
    """Verify the chains of ``sources`` (merged by ``(stream, seq)``).

    ``heads`` are sealed heads (already authenticated by :func:`check_seals`), checked
    like checkpoints. With ``since``, each stream is walked from its first record at or
    after ``since``, or from its newest checkpoint if that is earlier, so the deletion
    of a stream's recent records is found as well.
    """
    report = report if report is not None else VerifyReport()
    by_stream = _checkpoints(checkpoints, stream, public_key, report,
                             require_signed=require_signed, heads=heads)
    starts: dict[str, int] | None = None
    if since is not None:
        starts = {}
        for source in sources:
            for name, seq in source.starts_since(since).items():
                starts[name] = min(seq, starts.get(name, seq))
        for name, seqs in by_stream.items():  # every stream's head against its newest seal
            top = max(seqs)
            starts[name] = min(top, starts.get(name, top))
    walker = _Walker(key, report, by_stream, starts)
    merged: Iterable[tuple[Any, ...]]
    if len(sources) == 1:  # the common case skips the merge's per-row overhead
        only = sources[0]
        merged = ((r[0], r[1], only, r) for r in only.rows(stream))
    else:
        merged = heapq.merge(*(_tagged(s, stream) for s in sources),
                             key=lambda item: (item[0], _order(item[1])))
    done = 0
    for name, seq, source, row in merged:
        if starts is not None:
            first = starts.get(name)
            if first is None or (type(seq) is int and seq < first):
                continue
        walker.step(row, source)
        done += 1
        if progress is not None and done % 10_000 == 0:
            progress(10_000)
    if progress is not None:
        progress(done % 10_000)
    _resolve_candidates(walker, sources)
    _truncations(report, by_stream, walker.last_seq)
    return report


def _order(seq: Any) -> tuple[int, int]:
    """Sort key of a ``seq`` of any type (a malformed one sorts first, like SQL NULLs)."""
    return (1, seq) if type(seq) is int else (0, 0)


def _checkpoints(checkpoints: Iterable[Checkpoint], stream: str | None,
                 public_key: PublicKeys | None, report: VerifyReport, *,
                 require_signed: bool = False,
                 heads: Iterable[Head] = ()) -> dict[str, dict[int, str]]:
    """``stream -> {seq: hash}`` of the checkpoints and sealed heads.

    A bad signature is a finding; a missing one (with ``public_key``) is a warning, or a
    finding with ``require_signed``; two that disagree about one ``(stream, seq)`` are a
    ``conflict`` (an exported file against the database, a seal against a checkpoint).
    """
    by_stream: dict[str, dict[int, str]] = {}
    origin: dict[tuple[str, int], str] = {}

    def add(name: str, seq: int, hash_: str, where: str) -> None:
        seqs = by_stream.setdefault(name, {})
        known = seqs.get(seq)
        if known is None:
            seqs[seq] = hash_
            origin[(name, seq)] = where
        elif known != hash_:
            report.findings.append(Finding(
                "conflict", name, seq, None, f"{where} names hash {hash_[:16]}..., "
                f"{origin[(name, seq)]} names {known[:16]}... for this seq"))

    for cp in checkpoints:
        if stream is not None and cp.stream != stream:
            continue
        report.checkpoints += 1
        add(cp.stream, cp.seq, cp.hash, "a checkpoint")
        if public_key is None:
            continue
        if not cp.signature:
            (report.findings if require_signed else report.warnings).append(Finding(
                "unsigned", cp.stream, cp.seq, None, "the checkpoint is not signed"))
        elif not cp.signature_ok(public_key):
            report.findings.append(Finding("bad_signature", cp.stream, cp.seq, None,
                                           "checkpoint signature does not verify"))
    for name, seq, hash_, where in heads:
        if stream is None or name == stream:
            add(name, seq, hash_, where)
    return by_stream


def _truncations(report: VerifyReport, by_stream: dict[str, dict[int, str]],
                 last_seq: dict[str, int]) -> None:
    """Chains that end before one of their checkpoints; then sort the findings."""
    for name, seqs in by_stream.items():
        last = last_seq.get(name)
        top = max(seqs)
        if last is None:
            report.findings.append(Finding("truncated", name, top, None,
                                           f"a checkpoint reached seq {top}, but no record "
                                           "of the stream from there is left"))
        elif last < top:
            report.findings.append(Finding("truncated", name, last + 1, None,
                                           f"the chain ends at seq {last}; a checkpoint "
                                           f"reached seq {top}"))
    report.findings.sort(key=_finding_order)
    report.warnings.sort(key=_finding_order)


def _finding_order(f: Finding) -> tuple[str, int, str, str, str]:
    return (f.stream or "", f.seq or 0, f.kind, f.record_id or "", f.detail)


def _resolve_candidates(walker: _Walker, sources: Sequence[RowSource]) -> None:
    """Rows that neither verify nor link: reordered if they verify elsewhere, else inserted."""
    by_stream: dict[str, list[tuple[RowSource, tuple[Any, ...]]]] = {}
    for source, row in walker.candidates:
        by_stream.setdefault(row[0], []).append((source, row))
    for name, items in by_stream.items():
        wanted = [r[2] for _, r in items if r[2] != GENESIS_HASH]
        positions: dict[str, int] = {}
        for source in sources:
            positions.update(source.seqs_by_hash(name, wanted))
        for source, row in items:
            original = 1 if row[2] == GENESIS_HASH else positions.get(row[2], -1) + 1
            chain = source.chain_row(row)
            moved = (chain[0], original, *chain[2:]) if chain else ()
            if (original > 0 and original != row[1] and moved
                    and chain_hash(moved, walker.key) == row[_HASH]):
                walker.add("reordered", row, f"the record verifies at seq {original}")
            else:
                walker.add("inserted", row, "the record is not linked into its chain")


def verify_trail(
    engine: Any,
    *,
    key: bytes | None = None,
    stream: str | None = None,
    since: dt.datetime | None = None,
    archive_dir: str | Path | None = None,
    checkpoints: Iterable[Checkpoint] = (),
    public_key: PublicKeys | None = None,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    workers: int = 1,
    seals: Iterable[Seal] = (),
    require_signed: bool = False,
) -> VerifyReport:
    """Verify the live store behind ``engine`` and the archives in ``archive_dir``.

    The checkpoints, seals and erasures stored in the database are always checked; pass
    those of an exported file in ``checkpoints`` (or ``seals``, a seal file) to detect a
    rollback of the whole database. With ``public_key``, signatures must verify;
    unsigned checkpoints and seals are warnings unless ``require_signed``; erasures must
    always be signed (``unauthenticated`` otherwise, and without a public key).
    ``workers`` processes share the chains of the live store (``0``: one per CPU from
    :data:`PARALLEL_FROM` records on); archives, ``since`` and ``stream`` use one. The
    workers are started with ``spawn``, so a script calling this with ``workers != 1``
    needs the ``if __name__ == "__main__":`` guard; if they cannot start, the
    verification runs in this process.
    """
    from .checkpoints import all_checkpoints
    from .erasures import all_erasures, check_erasures
    from .seals import all_seals, check_seals
    from .sources import ArchiveSource, StoreSource

    report = VerifyReport()
    store = StoreSource(engine)
    sources: list[RowSource] = [store]
    stored_erasures = all_erasures(engine)
    report.erasures = len(stored_erasures)
    if archive_dir is not None:
        from ..retention import verify_archive_files

        found, warned = verify_archive_files(
            archive_dir, public_key=public_key, require_signed=require_signed,
            erasure_ids={e.id for e in stored_erasures})
        report.findings.extend(found)
        report.warnings.extend(warned)
        archive = ArchiveSource(archive_dir)
        report.archive_files = len(archive.files)
        sources.append(archive)
    for row_id in store.unchained():
        report.findings.append(Finding("inserted", None, None, row_id,
                                       "the record belongs to no chain"))
    stored_seals = all_seals(engine)
    report.seals = len(stored_seals)
    found, warned, heads = check_seals(stored_seals, list(seals), public_key=public_key,
                                       require_signed=require_signed)
    report.findings.extend(found)
    report.warnings.extend(warned)
    total = sum(s.count(stream) for s in sources)
    if on_total is not None:
        on_total(total)
    cps = [*all_checkpoints(engine), *checkpoints]
    if workers == 0:
        workers = (os.cpu_count() or 1) if total >= PARALLEL_FROM else 1
    eligible = archive_dir is None and since is None and stream is None

    def finish(done: VerifyReport) -> VerifyReport:
        # erasures are judged once the walk has met every erased record
        done.findings.extend(check_erasures(engine, archive_dir=archive_dir,
                                            public_key=public_key, erasures=stored_erasures,
                                            erased_ids=done.erased_ids))
        done.findings.sort(key=_finding_order)
        return done

    # ranges of integer seqs cannot see a malformed one: such a store gets one walk
    if (workers > 1 and eligible and engine.dialect.name in ("sqlite", "postgresql")
            and not malformed_rows(engine)):
        from .parallel import verify_parallel

        shared = VerifyReport(findings=list(report.findings), warnings=list(report.warnings),
                              seals=report.seals, erasures=report.erasures)
        by_stream = _checkpoints(cps, None, public_key, shared,
                                 require_signed=require_signed, heads=heads)
        try:
            last_seq = verify_parallel(engine.url.render_as_string(hide_password=False),
                                       key=key, checkpoints=by_stream, workers=workers,
                                       report=shared, progress=progress)
        except Exception as exc:  # a worker that cannot start or read: one walk does it all
            log_internal_error("verify_parallel", logging.WARNING,
                               "parallel verification unavailable (%s); verifying in one "
                               "process", exc)
        else:
            _truncations(shared, by_stream, last_seq)
            return finish(shared)
    before = (list(report.findings), list(report.warnings))
    try:
        return finish(verify_rows(sources, key=key, stream=stream, since=since,
                                  checkpoints=cps, public_key=public_key, progress=progress,
                                  report=report, require_signed=require_signed, heads=heads))
    except Exception as exc:
        # SQLite's json_array refuses a BLOB: name those rows, then walk without them
        if engine.dialect.name != "sqlite" or "BLOB" not in str(exc):
            raise
    blob_rows = [f for f in malformed_rows(engine, blobs=True) if "binary" in f.detail]
    store.exclude = tuple(f.record_id for f in blob_rows if f.record_id is not None)
    report.findings, report.warnings = [*before[0], *blob_rows], list(before[1])
    report.records = report.streams = report.erased = report.checkpoints = 0
    report.erased_ids = []
    return finish(verify_rows(sources, key=key, stream=stream, since=since, checkpoints=cps,
                              public_key=public_key, progress=progress, report=report,
                              require_signed=require_signed, heads=heads))


def malformed_rows(engine: Any, *, blobs: bool = False) -> list[Finding]:
    """Chained rows the walk cannot read (SQLite stores any value in any column): a
    ``seq`` that is not an integer (an index scan), and with ``blobs`` a binary value in
    any column (a table scan, run only when the walk met one)."""
    if engine.dialect.name != "sqlite":
        return []  # typed columns: PostgreSQL refuses such values on write
    from ..store.schema import audit_trails

    names = [column.name for column in audit_trails.columns]
    flags = [f"typeof(\"{c}\") = 'blob'" for c in names] if blobs else ["0"]
    where = "stream IS NOT NULL AND seq IS NOT NULL AND typeof(seq) != 'integer'"
    if blobs:
        where = f"({where}) OR " + " OR ".join(flags)
    sql = (f"SELECT id, stream, seq, typeof(seq), {', '.join(flags)} FROM audit_trails "
           f"WHERE {where} LIMIT 1000")
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(sql)
        rows = cursor.fetchall()
        cursor.close()
    finally:
        raw.close()
    out = []
    for row_id, stream, seq, seq_type, *marks in rows:
        binary = [n for n, mark in zip(names, marks, strict=False) if blobs and mark]
        detail = (f"binary value in {', '.join(binary)}" if binary
                  else f"seq is not an integer ({seq_type})")
        out.append(Finding("malformed", stream if isinstance(stream, str) else None,
                           seq if type(seq) is int else None,
                           row_id if isinstance(row_id, str) else None, detail))
    return out
