"""Append-only segment files of checksummed frames: the storage under the spool and journal.

A segment is one file in a directory (mode 0700; files 0600). Each frame is
``<length:u32><crc32:u32><payload>``; a torn or corrupt tail (a crash mid-write) ends
the segment when it is read back, so a reader never returns a half-written frame.

Ownership uses ``flock``: the process that writes a segment holds an exclusive lock on
it for as long as the file exists. The kernel drops the lock when the process dies
(SIGKILL included), so any later process can *adopt* an unlocked segment and replay
it; two processes can never adopt the same file. New segments are created under a
temporary name, locked, then renamed, so no one can adopt a segment that is still
being born.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["Segment", "SegmentDir", "read_frames"]

_HEADER = struct.Struct("<II")
_SUFFIX = ".seg"


@dataclass
class Segment:
    """One locked segment file held by this process."""

    path: str
    fd: int
    size: int = 0
    frames: int = 0
    pending: int = 0  # journal: frames not yet committed to the store
    sealed: bool = False  # no more appends
    ids: set[str] = field(default_factory=set)

    def close(self) -> None:
        """Release the file (and with it the lock)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        """Delete the file, then release the lock (in that order: no one re-adopts it)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.close()


def encode_frame(payload: bytes) -> bytes:
    """Return ``payload`` framed with its length and CRC-32."""
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def read_frames(fd: int) -> Iterator[bytes]:
    """Yield the payloads of a segment from the start, stopping at a torn/corrupt tail."""
    with os.fdopen(os.dup(fd), "rb") as fh:
        fh.seek(0)
        while True:
            header = fh.read(_HEADER.size)
            if len(header) < _HEADER.size:
                return
            length, crc = _HEADER.unpack(header)
            payload = fh.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc:
                return
            yield payload


def _sync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentDir:
    """A directory of segments named ``<prefix>-<pid>-<uuid>.seg``."""

    def __init__(self, directory: str, prefix: str) -> None:
        self.directory = directory
        self.prefix = prefix

    def ensure(self) -> None:
        """Create the directory (owner-only) if needed."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)

    def create(self) -> Segment:
        """Create, lock and publish a new empty segment owned by this process."""
        self.ensure()
        name = f"{self.prefix}-{os.getpid()}-{uuid.uuid4().hex}"
        tmp = os.path.join(self.directory, f".{name}.tmp")
        final = os.path.join(self.directory, name + _SUFFIX)
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(tmp, final)
            _sync_directory(self.directory)  # the new name survives a power cut too
        except BaseException:
            os.close(fd)
            raise
        return Segment(final, fd)

    def adopt_orphans(self, skip: set[str] | None = None) -> list[Segment]:
        """Lock and return every segment no live process holds (oldest first)."""
        try:
            names = os.listdir(self.directory)
        except OSError:  # missing, not a directory, unreadable: nothing to adopt
            return []
        found: list[tuple[float, Segment]] = []
        for name in names:
            if not (name.startswith(self.prefix + "-") and name.endswith(_SUFFIX)):
                continue
            path = os.path.join(self.directory, name)
            if skip and path in skip:
                continue
            try:
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                st = os.fstat(fd)
                # the previous adopter may have unlinked it between our open and our lock
                if st.st_nlink == 0 or os.stat(path).st_ino != st.st_ino:
                    raise FileNotFoundError(path)
            except OSError:
                os.close(fd)
                continue
            found.append((st.st_mtime, Segment(path, fd, size=st.st_size, sealed=True)))
        found.sort(key=lambda pair: pair[0])
        return [segment for _, segment in found]
