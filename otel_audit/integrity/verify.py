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
``bad_signature``  a checkpoint whose Ed25519 signature does not verify
``archive``        an archive file missing, or different from its manifest
"""

from __future__ import annotations

import datetime as dt
import heapq
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .._internal import log_internal_error
from .canonical import GENESIS_HASH, chain_hash
from .checkpoints import Checkpoint

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
                 "bad_signature", "archive")


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
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing was found."""
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (``--format json``)."""
        return {"ok": self.ok, "records": self.records, "streams": self.streams,
                "checkpoints": self.checkpoints, "archive_files": self.archive_files,
                "erased_records": self.erased,
                "findings": [asdict(f) for f in self.findings]}


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
        if stream != self.stream:
            self.stream, self.prev, self.prev_status = stream, None, "ok"
            self.first_seq[stream] = seq
            self.report.streams += 1
        self.report.records += 1
        if row[_PII] is not None and '"d"' in row[_PII]:
            self.report.erased += 1
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
        if not ok:
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


def verify_rows(
    sources: Sequence[RowSource],
    *,
    key: bytes | None = None,
    stream: str | None = None,
    since: dt.datetime | None = None,
    checkpoints: Iterable[Checkpoint] = (),
    public_key: Ed25519PublicKey | None = None,
    progress: Callable[[int], None] | None = None,
    report: VerifyReport | None = None,
) -> VerifyReport:
    """Verify the chains of ``sources`` (merged by ``(stream, seq)``)."""
    report = report if report is not None else VerifyReport()
    by_stream = _checkpoints(checkpoints, stream, public_key, report)
    starts: dict[str, int] | None = None
    if since is not None:
        starts = {}
        for source in sources:
            for name, seq in source.starts_since(since).items():
                starts[name] = min(seq, starts.get(name, seq))
    walker = _Walker(key, report, by_stream, starts)
    merged: Iterable[tuple[Any, ...]]
    if len(sources) == 1:  # the common case skips the merge's per-row overhead
        only = sources[0]
        merged = ((r[0], r[1], only, r) for r in only.rows(stream))
    else:
        merged = heapq.merge(*(_tagged(s, stream) for s in sources),
                             key=lambda item: (item[0], item[1]))
    done = 0
    for name, seq, source, row in merged:
        if starts is not None:
            first = starts.get(name)
            if first is None or seq < first:
                continue
        walker.step(row, source)
        done += 1
        if progress is not None and done % 10_000 == 0:
            progress(10_000)
    if progress is not None:
        progress(done % 10_000)
    _resolve_candidates(walker, sources)
    _truncations(report, by_stream, walker.last_seq, starts)
    return report


def _checkpoints(checkpoints: Iterable[Checkpoint], stream: str | None,
                 public_key: Ed25519PublicKey | None,
                 report: VerifyReport) -> dict[str, dict[int, str]]:
    """``stream -> {seq: hash}`` of the checkpoints; bad signatures become findings."""
    by_stream: dict[str, dict[int, str]] = {}
    for cp in checkpoints:
        if stream is not None and cp.stream != stream:
            continue
        by_stream.setdefault(cp.stream, {})[cp.seq] = cp.hash
        report.checkpoints += 1
        if public_key is not None and not cp.signature_ok(public_key):
            report.findings.append(Finding("bad_signature", cp.stream, cp.seq, None,
                                           "checkpoint signature does not verify"))
    return by_stream


def _truncations(report: VerifyReport, by_stream: dict[str, dict[int, str]],
                 last_seq: dict[str, int], starts: dict[str, int] | None) -> None:
    """Chains that end before one of their checkpoints; then sort the findings."""
    for name, seqs in by_stream.items():
        last = last_seq.get(name)
        top = max(seqs)
        if starts is not None and name not in starts:
            continue
        if last is None:
            report.findings.append(Finding("truncated", name, top, None,
                                           f"checkpoint at seq {top} but no record of the "
                                           "stream is left"))
        elif last < top:
            report.findings.append(Finding("truncated", name, last + 1, None,
                                           f"the chain ends at seq {last}; a checkpoint "
                                           f"reached seq {top}"))
    report.findings.sort(key=lambda f: (f.stream or "", f.seq or 0, f.kind))


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
    public_key: Ed25519PublicKey | None = None,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    workers: int = 1,
) -> VerifyReport:
    """Verify the live store behind ``engine`` and the archives in ``archive_dir``.

    The checkpoints stored in the database are always checked; pass those of an
    exported file in ``checkpoints`` to detect a rollback of the whole database.
    ``workers`` processes share the chains of the live store (``0``: one per CPU from
    :data:`PARALLEL_FROM` records on); archives, ``since`` and ``stream`` use one. The
    workers are started with ``spawn``, so a script calling this with ``workers != 1``
    needs the ``if __name__ == "__main__":`` guard; if they cannot start, the
    verification runs in this process.
    """
    from .checkpoints import all_checkpoints
    from .sources import ArchiveSource, StoreSource

    report = VerifyReport()
    sources: list[RowSource] = [StoreSource(engine)]
    if archive_dir is not None:
        from ..retention import verify_archive_files

        report.findings.extend(verify_archive_files(archive_dir))
        archive = ArchiveSource(archive_dir)
        report.archive_files = len(archive.files)
        sources.append(archive)
    store = StoreSource(engine)
    for row_id in store.unchained():
        report.findings.append(Finding("inserted", None, None, row_id,
                                       "the record belongs to no chain"))
    total = sum(s.count(stream) for s in sources)
    if on_total is not None:
        on_total(total)
    cps = [*all_checkpoints(engine), *checkpoints]
    if workers == 0:
        workers = (os.cpu_count() or 1) if total >= PARALLEL_FROM else 1
    eligible = archive_dir is None and since is None and stream is None
    if workers > 1 and eligible and engine.dialect.name in ("sqlite", "postgresql"):
        from concurrent.futures.process import BrokenProcessPool

        from .parallel import verify_parallel

        shared = VerifyReport(findings=list(report.findings))
        by_stream = _checkpoints(cps, None, public_key, shared)
        try:
            last_seq = verify_parallel(engine.url.render_as_string(hide_password=False),
                                       key=key, checkpoints=by_stream, workers=workers,
                                       report=shared, progress=progress)
        except (BrokenProcessPool, RuntimeError, OSError) as exc:
            log_internal_error("verify_parallel", logging.WARNING,
                               "parallel verification unavailable (%s); verifying in one "
                               "process", exc)
        else:
            _truncations(shared, by_stream, last_seq, None)
            return shared
    return verify_rows(sources, key=key, stream=stream, since=since, checkpoints=cps,
                       public_key=public_key, progress=progress, report=report)
