"""The on-disk spool of ``async`` mode: where records wait while the store is down.

Records are spooled only after redaction and normalisation (the spool never holds a
secret the store would not), with their chain position if they were already sealed.
Segments are replayed oldest first and deleted once every record in them is
committed; the store's writes are idempotent on ``id``, so replaying a segment that was
partly written before a crash never duplicates a row. Segments left behind by a
process that died are adopted by the next process using the same directory.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

from ..prepared import PreparedRecord
from ..record import JSON_FIELDS, AuditRecord
from .segments import Segment, SegmentDir, encode_frame, read_frames

__all__ = ["Spool", "decode_record", "encode_record"]

_JSON_POS = frozenset(AuditRecord._fields.index(f) for f in JSON_FIELDS)
_TS_POS = AuditRecord._fields.index("timestamp")
_SEGMENT_BYTES = 8 << 20


def encode_record(prepared: PreparedRecord) -> bytes:
    """Serialise a prepared record (JSON fields as their stored texts)."""
    fields = [None if i in _JSON_POS else value for i, value in enumerate(prepared.record)]
    fields[_TS_POS] = prepared.record.timestamp.isoformat()
    # the chain fields (stream .. mac; an older release's spool: .. pii); the store row
    # is derived and not kept
    doc = {"r": fields, "t": prepared.texts, "c": list(prepared[2:9])}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def decode_record(payload: bytes) -> PreparedRecord:
    """Inverse of :func:`encode_record`."""
    doc = json.loads(payload)
    fields = doc["r"]
    texts: dict[str, str | None] = doc["t"]
    fields[_TS_POS] = dt.datetime.fromisoformat(fields[_TS_POS])
    record = AuditRecord(*fields)
    values: dict[str, Any] = {
        name: None if texts.get(name) is None else json.loads(texts[name])  # type: ignore[arg-type]
        for name in JSON_FIELDS}
    return PreparedRecord(record._replace(**values), texts, *doc["c"])


class Spool:
    """Size-capped spool directory; thread-safe. Nothing touches the disk until first use."""

    def __init__(self, directory: str, max_bytes: int) -> None:
        self.dir = SegmentDir(directory, "spool")
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._current: Segment | None = None
        self._ready: list[Segment] = []  # sealed segments waiting for replay, oldest first
        self._bytes = 0
        self._records = 0
        self._checked_orphans = False
        self._closed = False  # after close(): no more appends nor adoptions

    @property
    def directory(self) -> str:
        """Where the segments live."""
        return self.dir.directory

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran (the trail shut down): nothing more is appended."""
        return self._closed

    @property
    def enabled(self) -> bool:
        """Whether spooling is on (``max_bytes > 0``)."""
        return self.max_bytes > 0

    def append(self, batch: list[PreparedRecord]) -> bool:
        """Append ``batch``; ``False`` if it would exceed the cap. Raises ``OSError``."""
        data = b"".join(encode_frame(encode_record(p)) for p in batch)
        with self._lock:
            if self._closed:  # a thread still busy after a shutdown past its deadline
                raise OSError(f"the spool {self.directory} is closed")
            if self._bytes + len(data) > self.max_bytes:
                return False
            segment = self._current
            if segment is None or segment.size >= _SEGMENT_BYTES:
                if segment is not None:
                    segment.sealed = True
                    self._ready.append(segment)
                segment = self._current = self.dir.create()
            written = os.write(segment.fd, data)
            segment.size += written
            segment.frames += len(batch)
            self._bytes += written
            self._records += len(batch)
            if written != len(data):  # short write (disk full): the tail is torn, start anew
                segment.sealed = True
                self._ready.append(segment)
                self._current = None
                raise OSError(f"short write to {segment.path}")
            return True

    def pending(self) -> bool:
        """Whether any record (own or orphaned) waits to be replayed."""
        if not self._checked_orphans:
            self._adopt()
        return self._records > 0 or bool(self._ready)

    @property
    def size(self) -> int:
        """Bytes currently spooled by this process (including adopted segments)."""
        return self._bytes

    @property
    def records(self) -> int:
        """Records this process spooled that wait for replay (adopted segments not included)."""
        return self._records

    def _adopt(self) -> None:
        with self._lock:
            if self._closed:  # its own released segments are the next trail's to adopt
                return
            self._checked_orphans = True
            mine = {s.path for s in self._ready}
            if self._current is not None:
                mine.add(self._current.path)
            for segment in self.dir.adopt_orphans(skip=mine):
                self._ready.append(segment)
                self._bytes += segment.size

    def oldest(self) -> Segment | None:
        """Seal the current segment if nothing older waits, and return the oldest one."""
        with self._lock:
            if not self._ready and self._current is not None and self._current.frames:
                self._current.sealed = True
                self._ready.append(self._current)
                self._current = None
            return self._ready[0] if self._ready else None

    def read(self, segment: Segment) -> Iterator[PreparedRecord]:
        """Records of ``segment`` in the order they were spooled."""
        for payload in read_frames(segment.fd):
            try:
                yield decode_record(payload)
            except (ValueError, KeyError, TypeError):
                continue  # a frame with a valid checksum but an older layout: skip it

    def done(self, segment: Segment, records: int) -> None:
        """Forget ``segment``: every record in it is committed."""
        with self._lock:
            if segment in self._ready:
                self._ready.remove(segment)
            self._bytes -= segment.size
            # adopted segments were never counted in _records (their frames are 0)
            self._records = max(0, self._records - segment.frames)
        segment.remove()

    def rescan(self) -> None:
        """Look for segments left by processes that have died since the last scan."""
        self._adopt()

    def _open_segments(self) -> list[Segment]:
        """The sealed segments waiting for replay, then the one being written."""
        return [*self._ready, *([self._current] if self._current else [])]

    def release_after_fork(self) -> None:
        """In a forked child: close the descriptors of the segments inherited from the
        parent, which goes on writing them, without touching the files or taking the
        lock (a parent's thread may have held it at fork time). The parent's segments
        become adoptable once the parent dies."""
        for segment in self._open_segments():
            segment.close()

    def close(self) -> None:
        """Release every segment (they stay on disk for the next process)."""
        with self._lock:
            self._closed = True
            for segment in self._open_segments():
                if segment.frames == 0 and segment is self._current:
                    segment.remove()
                else:
                    segment.close()
            self._ready.clear()
            self._current = None
