"""Verifying the trail: every chain, every checkpoint, every archive file.

:func:`verify_trail` walks the chain rows of the live store (and of the Parquet archives,
merged by ``(stream, seq)``) once, recomputes each hash, checks each link, and returns a
:class:`VerifyReport` whose findings each have a *kind*:

``modified``       a record's content no longer matches its hash, or its hash is not the
                   one its successor (or a checkpoint) committed to; with the chain's
                   HMAC key, a format-3 record whose ``mac`` is not the HMAC of its hash
                   (or is missing)
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

import contextlib
import datetime as dt
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._internal import log_internal_error
from ..errors import IntegrityError
from .checkpoints import Checkpoint
from .keys import PublicKeys
from .walk import (  # Finding, VerifyReport and verify_rows are part of this module's API
    FINDING_KINDS,
    PARALLEL_FROM,
    Finding,
    RowSource,
    VerifyReport,
    check_checkpoints,
    find_truncations,
    finding_order,
    verify_rows,
)

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
    stream_grace: float | None = 3600.0,
) -> VerifyReport:
    """Verify the live store behind ``engine`` and the archives in ``archive_dir``.

    The checkpoints, seals and erasures stored in the database are always checked; pass
    those of an exported file in ``checkpoints`` (or ``seals``, a seal file) to detect a
    rollback of the whole database. With ``public_key``, signatures must verify;
    unsigned checkpoints and seals are warnings unless ``require_signed``; erasures must
    always be signed (``unauthenticated`` otherwise, and without a public key).
    ``workers`` processes share the chains of the live store (``0``: one per CPU from
    :data:`PARALLEL_FROM` records on), each reading seq ranges on its own connection
    (started by a fork server, which holds none of this process's connections or
    threads; :mod:`.parallel`) and returning only findings and counts; an in-memory
    SQLite store, archives, ``since`` and ``stream`` use one walk. If they cannot run,
    the verification runs in this process. ``progress(n)``: ``n`` more records walked;
    a negative ``n`` takes back what workers had reported when the walk starts over in
    this process. A stream that a seal should have named is
    ``inserted`` (:func:`.seals.check_stream_births`): one a seal named and a later seal
    of the same sealer did not while its records stayed, and one an all-streams seal
    does not name whose first record is dated more than ``stream_grace`` seconds before
    it (``None``: that rule off, for records dated in the past on purpose).
    """
    from .checkpoints import all_checkpoints
    from .erasures import all_erasures, check_erasures
    from .seals import all_seals, check_seals, check_stream_births, stream_firsts
    from .seqindex import MalformedSeq
    from .sources import ArchiveSource, StoreSource

    report = VerifyReport()
    store = StoreSource(engine)
    sources: list[RowSource] = [store]
    stored_erasures = all_erasures(engine)
    report.erasures = len(stored_erasures)
    if archive_dir is not None:
        from .archives import verify_archive_files

        found, warned = verify_archive_files(
            archive_dir, public_key=public_key, require_signed=require_signed,
            erasure_ids={e.id for e in stored_erasures})
        report.findings.extend(found)
        report.warnings.extend(warned)
        archive = ArchiveSource(archive_dir)
        report.archive_files = len(archive.files)
        sources.append(archive)
    stored_seals = all_seals(engine)
    report.seals = len(stored_seals)
    exported = list(seals)

    def unchained(into: VerifyReport, hashless: list[str] | None = None) -> None:
        for row_id in store.unchained(hashless):
            into.findings.append(Finding("inserted", None, None, row_id,
                                         "the record belongs to no chain"))

    def scans(into: VerifyReport, walked: bool = False) -> None:
        """The scans beside the walk (run while the workers walk, if they do; the rows
        of no chain then after them, from what they read: ``walked``)."""
        if not walked:
            unchained(into)
        # a stream a seal should have named (backdated, or hidden while it was made)
        into.findings.extend(check_stream_births([*stored_seals, *exported],
                                                 stream_firsts(engine), grace=stream_grace,
                                                 stream=stream))
        if key is None:  # the public hashes are checked, the MACs beside them not
            into.macs_unchecked = _macs(engine, stream, archive_dir)

    found, warned, heads = check_seals(stored_seals, exported, public_key=public_key,
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
        rewritten: set[str] = set()
        done.findings.extend(check_erasures(engine, archive_dir=archive_dir,
                                            public_key=public_key, erasures=stored_erasures,
                                            erased_ids=done.erased_ids, rewritten=rewritten))
        # a record an authenticated erasure rewrote (and that matches it) no longer
        # matches its chain hash: the signed erasure vouches for it instead
        done.findings = [f for f in done.findings if not (
            f.kind == "modified" and f.record_id in rewritten
            and f.detail == "content does not match its hash")]
        done.findings.sort(key=finding_order)
        return done

    # an in-memory SQLite database is one connection's own: other threads see another
    memory = engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:")
    if (workers > 1 and eligible and engine.dialect.name in ("sqlite", "postgresql")
            and not memory):
        from .parallel import verify_parallel

        shared = VerifyReport(findings=list(report.findings), warnings=list(report.warnings),
                              seals=report.seals, erasures=report.erasures)
        by_stream = check_checkpoints(cps, None, public_key, shared,
                                 require_signed=require_signed, heads=heads)
        hashless: list[str] = []
        counted = [0]  # records the workers reported: taken back if one walk starts over

        def walked(n: int) -> None:
            counted[0] += n
            if progress is not None:
                progress(n)

        try:
            # this process's share while the workers walk: the scans
            last_seq = verify_parallel(engine.url.render_as_string(hide_password=False),
                                       key=key, checkpoints=by_stream, workers=workers,
                                       report=shared, progress=walked,
                                       meanwhile=lambda: scans(shared, walked=True),
                                       hashless=hashless, total=total)
        except MalformedSeq:
            pass  # a seq that is not an integer: one walk reports it, the ranges are dropped
        except Exception as exc:  # a worker that cannot start or read: one walk does it all
            if not malformed_rows(engine):  # (a malformed seq can fail them: no warning)
                log_internal_error("verify_parallel", logging.WARNING,
                                   "parallel verification unavailable (%s); verifying in "
                                   "one process", exc)
        else:
            unchained(shared, hashless)
            find_truncations(shared, by_stream, last_seq)
            return finish(shared)
        if counted[0] and progress is not None:
            progress(-counted[0])  # one walk counts every record again
    scans(report)
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


def _macs(engine: Any, stream: str | None, archive_dir: str | Path | None) -> int:
    """How many chained records (of ``stream``) carry a ``mac``, live and archived: what a
    verification without the HMAC key did not check (stores and archives from before
    migration 0008 have none)."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from .sources import ArchiveSource

    where = "mac IS NOT NULL AND stream IS NOT NULL" + ("" if stream is None else
                                                        " AND stream = :stream")
    count = 0
    try:
        with engine.connect() as conn:
            count = int(conn.execute(text(f"SELECT COUNT(*) FROM audit_trails WHERE {where}"),
                                     {"stream": stream}).scalar() or 0)
    except SQLAlchemyError:
        pass  # no mac column (a store before 0008): nothing unchecked
    if archive_dir is not None:
        with contextlib.suppress(IntegrityError):  # unreadable: the archive checks say so
            count += ArchiveSource(archive_dir).mac_count(stream)
    return count
