"""The local journal of ``durable`` mode: a record is acknowledged once it is in here.

``record()`` appends the (redacted, normalised) record to this process's journal
segment and returns after the write reached the OS — and, depending on ``fsync``:

* ``always``: after its own ``fsync``;
* ``batch``: after an ``fsync`` that covers it. Concurrent callers share one: the
  first to arrive syncs for everyone written so far while the others wait (group
  commit), so the guarantee equals ``always`` at a fraction of the syscalls;
* ``never``: no ``fsync`` (survives SIGKILL of the process, not a power cut).

Entries are forgotten once the store committed them; a segment is deleted when it is
full and all of its records are committed. A process killed with SIGKILL leaves its
segment behind, unlocked; the next process that opens the directory adopts it
(``flock``: never two at once) and replays it through the normal pipeline — writes
are idempotent on ``id``, so records committed before the kill are not duplicated.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence

from ..prepared import PreparedRecord
from .segments import Segment, SegmentDir, encode_frame, read_frames
from .spool import decode_record, encode_record

__all__ = ["Journal"]

_SEGMENT_BYTES = 16 << 20


class Journal:
    """One process's journal in ``directory``; thread-safe."""

    def __init__(self, directory: str, fsync: str = "batch") -> None:
        self.dir = SegmentDir(directory, "journal")
        self.fsync = fsync
        self._cond = threading.Condition()
        self._current: Segment | None = None
        self._by_id: dict[str, Segment] = {}
        self._segments: list[Segment] = []
        self._written = 0  # appends so far
        self._synced = 0  # appends covered by an fsync
        self._syncing = False
        self.fsyncs = 0

    @property
    def directory(self) -> str:
        """Where the segments live."""
        return self.dir.directory

    def adopt_orphans(self) -> list[PreparedRecord]:
        """Adopt segments of dead processes; return their records (to be re-submitted)."""
        self.dir.ensure()
        records: list[PreparedRecord] = []
        for segment in self.dir.adopt_orphans():
            seen: set[str] = set()
            for payload in read_frames(segment.fd):
                try:
                    prepared = decode_record(payload)
                except (ValueError, KeyError, TypeError):
                    continue
                if prepared.record.id in seen:
                    continue
                seen.add(prepared.record.id)
                records.append(prepared)
            segment.sealed = True
            with self._cond:
                self._segments.append(segment)
                for record_id in seen:
                    self._by_id[record_id] = segment
                segment.pending = len(seen)
            if not seen:
                self._forget(segment)
        return records

    def append(self, prepared: PreparedRecord) -> None:
        """Journal ``prepared`` and return once it is as durable as ``fsync`` promises."""
        self.append_batch([prepared])

    def append_batch(self, batch: Sequence[PreparedRecord]) -> None:
        """Journal ``batch`` with one write and (at most) one ``fsync``."""
        if not batch:
            return
        frame = b"".join(encode_frame(encode_record(p)) for p in batch)
        with self._cond:
            segment = self._current
            if segment is None or segment.size >= _SEGMENT_BYTES:
                segment = self._rotate()
            written = os.write(segment.fd, frame)
            if written != len(frame):
                segment.sealed = True  # a torn tail ends the segment; start a fresh one
                self._current = None
                raise OSError(f"short write to {segment.path}")
            segment.size += written
            segment.frames += len(batch)
            for prepared in batch:
                if self._by_id.get(prepared.record.id) is not segment:
                    segment.pending += 1
                self._by_id[prepared.record.id] = segment
            self._written += 1
            mine = self._written
            if self.fsync == "never":
                return
            if self.fsync == "always":
                os.fsync(segment.fd)
                self.fsyncs += 1
                self._synced = max(self._synced, mine)
                return
            while self._synced < mine:
                if self._syncing:
                    self._cond.wait()
                    continue
                self._syncing = True
                target = self._written
                fd = segment.fd  # still current: a rotation would have synced it already
                self._cond.release()
                try:
                    os.fsync(fd)
                finally:
                    self._cond.acquire()
                    self._syncing = False
                    self.fsyncs += 1
                    self._cond.notify_all()
                self._synced = max(self._synced, target)

    def _rotate(self) -> Segment:
        old = self._current
        if old is not None:
            if self.fsync != "never":
                os.fsync(old.fd)  # everything appended so far is now synced
                self._synced = self._written
            old.sealed = True
            if old.pending == 0 and not self._syncing:  # never close an fd being synced
                self._forget(old)
        segment = self._current = self.dir.create()
        self._segments.append(segment)
        return segment

    def committed(self, ids: Iterable[str]) -> None:
        """The store committed these records: release their journal entries."""
        with self._cond:
            for record_id in ids:
                segment = self._by_id.pop(record_id, None)
                if segment is None:
                    continue
                segment.pending -= 1
                if segment.pending == 0 and segment.sealed:
                    self._forget(segment)

    @property
    def pending(self) -> int:
        """Journalled records not yet committed to the store."""
        return len(self._by_id)

    def _forget(self, segment: Segment) -> None:
        if segment in self._segments:
            self._segments.remove(segment)
        segment.remove()

    def release_after_fork(self) -> None:
        """In a forked child: close the descriptors of the segments inherited from the
        parent, which goes on writing them, without touching the files or taking the
        lock (a parent's thread may have held it at fork time). The parent's segments
        become adoptable once the parent dies."""
        for segment in list(self._segments):
            segment.close()

    def close(self) -> None:
        """Delete fully committed segments; keep (and unlock) the rest for the next process."""
        with self._cond:
            for segment in list(self._segments):
                if segment.pending == 0:
                    self._forget(segment)
                else:
                    segment.close()
            self._segments.clear()
            self._by_id.clear()
            self._current = None
