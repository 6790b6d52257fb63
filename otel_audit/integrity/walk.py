"""The walk over chain rows that :func:`otel_audit.integrity.verify.verify_trail` runs:
each hash recomputed, each link checked, every gap, duplicate and reordering found.

:class:`Finding` and :class:`VerifyReport` are what every check reports (the erasure,
seal and archive checks too); :class:`Walker` is the per-stream state the sequential
and the parallel walks share. The kinds of findings are described in
:mod:`otel_audit.integrity.verify`.
"""

from __future__ import annotations

import datetime as dt
import heapq
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .canonical import GENESIS_HASH, chain_hash
from .checkpoints import Checkpoint
from .fastwalk import LINKED, VERIFIED, payload_plans, verify_flags
from .keys import PublicKeys

if TYPE_CHECKING:
    pass


__all__ = [
    "FINDING_KINDS",
    "PARALLEL_FROM",
    "Finding",
    "RowSource",
    "VerifyReport",
    "Walker",
    "check_checkpoints",
    "find_truncations",
    "finding_order",
    "resolve_candidates",
    "verify_rows",
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
    #: format-3 records carrying a ``mac`` that was not checked (verified without the
    #: chain's HMAC key: their public hashes were)
    macs_unchecked: int = 0
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
                "erased_records": self.erased, "macs_unchecked": self.macs_unchecked,
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
#: A row of a run (fastwalk): verified and linked to the row before it.
_RUN = VERIFIED | LINKED
_RUNS = re.compile(bytes([ord("["), _RUN, ord("]"), ord("+")]))
#: SQLite's names of the Python types a malformed ``seq`` can come back as.
_SQL_TYPES = {str: "text", float: "real", bytes: "blob"}


def _tagged(source: RowSource, stream: str | None) -> Iterator[tuple[Any, ...]]:
    for row in source.rows(stream):
        yield (row[0], row[1], source, row)


class Walker:
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

    def run(self, rows: list[tuple[Any, ...]], flags: bytes, source: RowSource,
            start: int = 0) -> None:
        """:meth:`step` over ``rows[start:]`` with their :func:`.fastwalk.verify_flags`:
        a row verified there is not checked again, and a run of rows that verify and
        link to each other (the walk's previous row being the one before the run) is
        counted at once, as the steps would count it: no finding, no checkpoint inside.
        """
        step, n, i = self.step, len(rows), start
        while i < n:
            flag = flags[i]
            if flag != _RUN or i == 0 or self.prev is not rows[i - 1]:
                step(rows[i], source, True if flag & VERIFIED else None)
                i += 1
                continue
            end = _RUNS.match(flags, i).end()  # type: ignore[union-attr]
            cps = self.checkpoints.get(rows[i][0])
            if cps:
                lo, hi = rows[i][1], rows[end - 1][1]
                inside = [seq for seq in cps if lo <= seq <= hi]
                if inside:  # up to the first checkpointed record: it takes a step
                    end = i + (min(inside) - lo)
                    if end == i:
                        step(rows[i], source, True)
                        i += 1
                        continue
            last = rows[end - 1]
            self.report.records += end - i
            self.prev, self.prev_status = last, "ok"
            self.last_seq[last[0]] = last[1]
            i = end

    def step(self, row: tuple[Any, ...], source: RowSource, ok: bool | None = None) -> None:
        """One row of the walk; ``ok`` when its content is already known to match."""
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
        if ok is None:
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
    by_stream = check_checkpoints(checkpoints, stream, public_key, report,
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
    walker = Walker(key, report, by_stream, starts)
    if len(sources) == 1 and hasattr(sources[0], "batches"):  # the common case: batches
        walk_batches(walker, sources[0], stream, starts, progress)
        resolve_candidates(walker, sources)
        find_truncations(report, by_stream, walker.last_seq)
        return report
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
    resolve_candidates(walker, sources)
    find_truncations(report, by_stream, walker.last_seq)
    return report


def walk_batches(walker: Walker, source: Any, stream: str | None,
                 starts: dict[str, int] | None,
                 progress: Callable[[int], None] | None) -> None:
    """The walk over a source's batches (``source.batches``), each checked at once by
    :func:`.fastwalk.verify_flags` before :meth:`Walker.run` (``since``: rows before a
    stream's start are left out first)."""
    plans = payload_plans(walker.key, source.layout)
    for batch in source.batches(stream):
        if starts is not None:
            batch = [row for row in batch if _from_start(row, starts)]
        walker.run(batch, verify_flags(batch, source.layout, plans), source)
        if progress is not None:
            progress(len(batch))


def _from_start(row: tuple[Any, ...], starts: dict[str, int]) -> bool:
    first = starts.get(row[0])
    return first is not None and not (type(row[1]) is int and row[1] < first)


def _order(seq: Any) -> tuple[int, int]:
    """Sort key of a ``seq`` of any type (a malformed one sorts first, like SQL NULLs)."""
    return (1, seq) if type(seq) is int else (0, 0)


def check_checkpoints(checkpoints: Iterable[Checkpoint], stream: str | None,
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


def find_truncations(report: VerifyReport, by_stream: dict[str, dict[int, str]],
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
    report.findings.sort(key=finding_order)
    report.warnings.sort(key=finding_order)


def finding_order(f: Finding) -> tuple[str, int, str, str, str]:
    return (f.stream or "", f.seq or 0, f.kind, f.record_id or "", f.detail)


def resolve_candidates(walker: Walker, sources: Sequence[RowSource]) -> None:
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


