"""What the forwarder moves: one committed record with its chain position."""

from __future__ import annotations

from typing import NamedTuple

from ..record import AuditRecord

__all__ = ["ForwardItem", "RawJSON"]


class ForwardItem(NamedTuple):
    """A committed record and its position in its stream's chain (``stream``, ``seq``).

    The record's ``id`` is the idempotency key every destination receives: a record
    sent again after a crash carries the same ``id``.
    """

    stream: str
    seq: int
    record: AuditRecord


class RawJSON(str):
    """A JSON field's stored text, read as it is for a destination that sends JSON
    fields as text (OTLP with the compiled encoder and no field policy): the document is
    not parsed on reading and serialized again on sending. ``json.loads`` of it is the
    value the field would otherwise hold."""

    __slots__ = ()
