"""Verifying one large store on every core: chains cut into seq ranges, stitched back.

Each worker (a thread sharing the caller's engine, or a process with its own) verifies a
contiguous ``seq`` range of one stream exactly as the single walk does (content, links
inside the range, checkpoints), and returns
its findings with the first and last record of its range; the parent then checks the
links between consecutive ranges, the start of each chain and truncation.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, event

from ..store.writer import create_store_engine
from .canonical import GENESIS_HASH
from .fastwalk import VERIFIED, payload_plans, verify_flags
from .seqindex import MalformedSeq
from .sources import StoreSource
from .walk import Finding, VerifyReport
from .walk import Walker as _Walker
from .walk import resolve_candidates as _resolve_candidates

__all__ = ["verify_parallel"]

_HASH = 3
#: Smallest seq range given to one worker: one fetch (sources' batch of 20,000 rows).
MIN_CHUNK = 20_000
#: Ranges a worker gets, at most: small ones keep every worker busy to the end (the one
#: that ends last waits for no long range), and let the others take over the share of
#: a worker slowed down (by this process's scans, or other work on its core).
RANGES_PER_WORKER = 8


@dataclass(slots=True)
class _Chunk:
    """What one worker found in its range."""

    records: int = 0
    erased: int = 0
    erased_ids: list[str] = field(default_factory=list)
    hashless: list[str] = field(default_factory=list)  # rows read without a hash
    findings: list[Finding] = field(default_factory=list)
    first: tuple[int, str, str] | None = None  # seq, prev_hash, status
    last: tuple[int, str, str] | None = None  # seq, hash, status
    deferred: tuple[Any, ...] | None = None  # the first row, if it does not verify


def _verify_range(url: str | Engine, key: bytes | None, stream: str, lo: int, hi: int,
                  checkpoints: dict[int, str]) -> _Chunk:
    """One range of one stream: a process's (``url``: its own engine) or a thread's (the
    shared ``Engine``: one pooled connection each)."""
    engine = _engine(url) if isinstance(url, str) else url
    source = StoreSource(engine)
    report = VerifyReport()
    walker = _Walker(key, report, {stream: checkpoints}, {stream: lo})
    walker.defer_first = True
    out = _Chunk()
    source.hashless = out.hashless
    plans = payload_plans(key, source.layout)
    for batch in source.batches(stream, (lo, hi)):
        flags = verify_flags(batch, source.layout, plans)
        start = 0
        if out.first is None and batch:
            row = batch[0]
            walker.step(row, source, True if flags[0] & VERIFIED else None)
            out.first, start = (row[1], row[2], walker.prev_status), 1
        walker.run(batch, flags, source, start)
    _resolve_candidates(walker, [source])
    if walker.prev is not None:
        out.last = (walker.prev[1], walker.prev[_HASH], walker.prev_status)
    out.records, out.erased, out.findings = report.records, report.erased, report.findings
    out.deferred = walker.deferred
    out.erased_ids = report.erased_ids
    return out


#: A worker process's engine, by URL: its ranges read through one connection, closed
#: when the process ends with the pool.
_ENGINES: dict[str, Engine] = {}
#: A worker's SQLite connection reads the file through a memory map of up to this many
#: bytes (no read call a page: about 5% of a walk's CPU). Only in workers: a read error
#: on a mapped file is a signal, which ends the worker (the verification then runs in
#: the caller's process), never the caller.
WORKER_MMAP_BYTES = 1 << 30


def _engine(url: str) -> Engine:
    engine = _ENGINES.get(url)
    if engine is None:
        engine = _ENGINES[url] = create_store_engine(url)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _mapped)
    return engine


def _mapped(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute(f"PRAGMA mmap_size={WORKER_MMAP_BYTES}")
    finally:
        cursor.close()


def _ranges(source: StoreSource, workers: int, total: int) -> list[tuple[str, int, int]]:
    """Seq ranges of about ``total / (workers * RANGES_PER_WORKER)`` records; a stream
    whose seqs span far more than its records (a seq set far ahead) gets no more
    ranges than that many."""
    streams = source.stream_ranges()
    shares = workers * RANGES_PER_WORKER
    target = max(MIN_CHUNK, -(-total // shares))
    out = []
    for stream, lo, hi in streams:
        size = max(target, -(-(hi - lo + 1) // shares))
        start = lo
        while start <= hi:
            end = min(hi, start + size - 1)
            out.append((stream, start, end))
            start = end + 1
    return out


def _context() -> multiprocessing.context.BaseContext:
    """Where worker processes come from: a fork server (started once per process, with
    this module imported, so each worker starts in milliseconds; it holds no connection
    or thread of the caller's), or spawn where there is none (Windows)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def verify_parallel(url: str, *, key: bytes | None, checkpoints: dict[str, dict[int, str]],
                    workers: int, report: VerifyReport,
                    progress: Callable[[int], None] | None = None,
                    engine: Engine | None = None,
                    meanwhile: Callable[[], None] | None = None,
                    hashless: list[str] | None = None,
                    total: int | None = None) -> dict[str, int]:
    """Verify every chain of the store at ``url`` with ``workers`` processes, or with
    ``workers`` threads sharing ``engine`` when it is given.

    Fills ``report`` and returns the last ``seq`` of each stream (for truncation checks).
    ``meanwhile`` runs in this process once every range is handed out, while the workers
    walk them (verify's scans: their time is not added to the walk's). Raises
    :class:`~.seqindex.MalformedSeq` for a store with a ``seq`` that is not an integer
    (at the ends of a stream: before any range is walked; inside: when a worker meets
    it), which one walk reports as it reads every row. ``hashless`` gets the IDs of the
    rows the workers read without a hash (:meth:`~.sources.StoreSource.unchained`).
    ``total``: the store's chained rows, if counted already (the ranges' size).
    """
    source = StoreSource(engine if engine is not None else create_store_engine(url))
    ranges = _ranges(source, workers, source.count() if total is None else total)
    if engine is None:
        source.engine.dispose()
    results: dict[int, _Chunk] = {}
    pool: Executor
    if engine is not None:
        pool = ThreadPoolExecutor(workers, thread_name_prefix="otel-audit-verify")
    else:
        pool = ProcessPoolExecutor(min(workers, len(ranges)) or 1, mp_context=_context())
    target: str | Engine = url if engine is None else engine
    with pool:
        futures = {pool.submit(_verify_range, target, key, stream, lo, hi,
                               checkpoints.get(stream, {})): i
                   for i, (stream, lo, hi) in enumerate(ranges)}
        if meanwhile is not None:
            try:
                meanwhile()
            except BaseException:
                for future in futures:  # the ranges not started yet are not walked
                    future.cancel()
                raise
        for future in as_completed(futures):
            chunk = future.result()
            if any(f.kind == "malformed" for f in chunk.findings):
                for pending in futures:  # the ranges not started yet are not walked
                    pending.cancel()
                raise MalformedSeq("a seq that is not an integer, inside a range")
            results[futures[future]] = chunk
            if progress is not None:
                progress(chunk.records)
    last_seq: dict[str, int] = {}
    previous: dict[str, tuple[int, str, str]] = {}
    streams: set[str] = set()
    engine = create_store_engine(url)
    try:
        source = StoreSource(engine)
        parent = _Walker(key, report, checkpoints, None)
        for i, (stream, _, _) in enumerate(ranges):
            chunk = results[i]
            report.records += chunk.records
            report.erased += chunk.erased
            report.erased_ids.extend(chunk.erased_ids)
            if hashless is not None:
                hashless.extend(chunk.hashless)
            report.findings.extend(chunk.findings)
            if chunk.first is None or chunk.last is None:
                continue
            streams.add(stream)
            before = previous.get(stream)
            _stitch(report, stream, before, chunk.first)
            if chunk.deferred is not None:
                _settle(parent, source, before, chunk.deferred)
            previous[stream] = chunk.last
            last_seq[stream] = chunk.last[0]
        _resolve_candidates(parent, [source])
    finally:
        engine.dispose()
    report.streams += len(streams)
    return last_seq


def _settle(parent: _Walker, source: StoreSource, before: tuple[int, str, str] | None,
            row: tuple[Any, ...]) -> None:
    """The first row of a range that does not verify, judged as one walk judges it."""
    seq, prev_hash = row[1], row[2]
    linked: bool | None
    if before is None:  # the chain's first record: linked to nothing, or a gap before it
        linked = prev_hash == GENESIS_HASH if seq == 1 else None
    elif seq > before[0] + 1:
        linked = None
    else:
        linked = prev_hash == before[1]
    if linked is False:
        parent.candidates.append((source, row))
    else:
        parent.add("modified", row, "content does not match its hash")


def _stitch(report: VerifyReport, stream: str, before: tuple[int, str, str] | None,
            first: tuple[int, Any, str]) -> None:
    """Check the link between the end of one range and the start of the next."""
    seq, prev_hash, status = first
    if before is None:
        if seq != 1:
            report.findings.append(Finding(
                "deleted", stream, 1, None, f"records 1..{seq - 1} of this stream are "
                "missing (pruned? pass the archive directory)"))
        return
    last_seq, last_hash, last_status = before
    if seq > last_seq + 1:
        missing = f"{last_seq + 1}" if seq == last_seq + 2 else f"{last_seq + 1}..{seq - 1}"
        report.findings.append(Finding("deleted", stream, last_seq + 1, None,
                                       f"records {missing} are missing (deleted, or sealed "
                                       "but never committed)"))
    elif prev_hash != last_hash and status == "ok" and last_status == "ok":
        report.findings.append(Finding("modified", stream, last_seq, None,
                                       "its hash is not the one the next record committed to"))
