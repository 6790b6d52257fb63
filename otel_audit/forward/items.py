"""What the forwarder moves: one committed record with its chain position."""

from __future__ import annotations

from typing import NamedTuple

from ..record import AuditRecord

__all__ = ["ForwardItem"]


class ForwardItem(NamedTuple):
    """A committed record and its position in its stream's chain (``stream``, ``seq``).

    The record's ``id`` is the idempotency key every destination receives: a record
    sent again after a crash carries the same ``id``.
    """

    stream: str
    seq: int
    record: AuditRecord
