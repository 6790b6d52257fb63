"""The frames between :mod:`.isolated`'s parent and its child: a JSON header and a
payload (Arrow IPC, JSON), each preceded by their sizes (``>IQ``)."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import IO, Any

__all__ = ["read_exact", "read_reply", "write_reply"]


def read_exact(stream: IO[bytes], size: int) -> bytes | None:
    """``size`` bytes from ``stream``; None if it ends first."""
    chunks = []
    left = size
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def write_reply(out: IO[bytes], header: Mapping[str, Any], payload: bytes = b"") -> None:
    """One frame: the sizes, the JSON header, the payload."""
    head = json.dumps(header).encode()
    out.write(struct.pack(">IQ", len(head), len(payload)))
    out.write(head)
    out.write(payload)
    out.flush()


def read_reply(stream: IO[bytes]) -> tuple[dict[str, Any], bytes] | None:
    """One frame written by :func:`write_reply`; None if the stream ends first."""
    sizes = read_exact(stream, 12)
    if sizes is None:
        return None
    head_size, payload_size = struct.unpack(">IQ", sizes)
    head = read_exact(stream, head_size)
    payload = read_exact(stream, payload_size) if payload_size else b""
    if head is None or payload is None:
        return None
    header: dict[str, Any] = json.loads(head)
    return header, payload
