"""Forwarding the committed trail to SIEMs and OpenTelemetry backends, losing nothing.

``otel-audit forward --db URL --to DEST`` reads what the store has committed, in commit
order per stream, sends it in batches, and moves a cursor kept in the store itself
(``audit_forward_cursors``) only after the destination acknowledged: at least once,
ordered per stream, the record ID as the idempotency key. See ``docs/forwarding.md``.

Modules: :mod:`.reader` (the trail after a cursor), :mod:`.cursors` (cursors, lease,
rejects), :mod:`.destinations` (file, syslog), :mod:`.otlp` (OTLP/HTTP),
:mod:`.formats` (json, cef, leef), :mod:`.policy` (per-destination field policy),
:mod:`.runner` (the loop, retries, rejects, metrics).
"""

from __future__ import annotations

from .cursors import CursorStore, DestinationState, destination_states
from .destinations import Destination, FileDestination, SyslogDestination, parse_destination
from .errors import ForwardError, LeaseLostError, PermanentError, RetryableError, SendError
from .formats import FORMATS
from .items import ForwardItem
from .policy import FieldPolicy, load_policies
from .runner import Forwarder, ForwardSummary

__all__ = [
    "FORMATS",
    "CursorStore",
    "Destination",
    "DestinationState",
    "FieldPolicy",
    "FileDestination",
    "ForwardError",
    "ForwardItem",
    "ForwardSummary",
    "Forwarder",
    "LeaseLostError",
    "PermanentError",
    "RetryableError",
    "SendError",
    "SyslogDestination",
    "destination_states",
    "load_policies",
    "parse_destination",
]
