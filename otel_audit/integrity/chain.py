"""The chain sealer: gives each record of a batch its stream, sequence number and hashes.

It plugs into :attr:`BatchPipeline.sealers` and runs under the pipeline's write lock
right before the store write, so records are chained in the order they are committed.
The pipeline seals in place and only records without a ``seq``: a retried batch, a
spooled or journalled record keeps the seal it got the first time.

A sealed record that is never committed leaves a gap that ``verify`` reports as
missing records (see ``docs/integrity.md``: a failed ``sync`` write, an outbox
transaction rolled back by the caller, a record the store rejects, a batch given up at
shutdown). Rolling the head back is not safe here: the pipeline keeps failed ``async``
batches, sealed, for later retries.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from ..record import JSON_FIELDS
from ..store.writer import PreparedRecord
from .canonical import GENESIS_HASH, canonical_stored_json, chain_hash

__all__ = ["ChainSealer", "new_stream_name", "sealed_row"]

#: ``(stream) -> (last seq, last hash) | None``: where a named stream resumes.
HeadLookup = Callable[[str], "tuple[int, str] | None"]


def new_stream_name(service_name: str) -> str:
    """``service@host:pid:random``: one writer process, never shared, at most 128 chars."""
    suffix = f"@{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"
    return service_name[: 128 - len(suffix)] + suffix


def _timestamp_text(prepared: PreparedRecord) -> str:
    # the exact text SQLite stores and PostgreSQL's to_char() renders (UTC, microseconds)
    return prepared.record.timestamp.isoformat(" ", "microseconds")[:26]


def sealed_row(prepared: PreparedRecord) -> tuple[Any, ...]:
    """The chain row (``CHAIN_ROW_COLUMNS`` order) of a prepared record."""
    r = prepared.record
    t = prepared.texts
    return (
        prepared.stream, prepared.seq, prepared.prev_hash,
        r.id, _timestamp_text(prepared), r.correlation_id, r.request_id, r.trace_id,
        r.span_id, r.action, r.resource_type, r.resource_id, r.resource_name, r.team_id,
        r.request_path, r.request_method, t["old_values"], t["new_values"], t["changes"],
        r.data_classification, int(r.requires_review), int(r.success), r.error_message,
        t["context"], r.service_name, r.acting_as, r.schema_version,
        r.user_id, r.user_email, r.client_ip, r.user_agent,
        prepared.pii_salt, prepared.pii, prepared.hash,
    )


class ChainSealer:
    """Seals batches into one hash chain per writer (a *stream*). Thread-safe, fork-aware.

    ``stream`` names the chain explicitly (it then resumes after the store's last record
    of that name); otherwise each process gets a fresh ``service@host:pid:random`` stream.
    """

    def __init__(
        self,
        *,
        service_name: str,
        stream: str | None = None,
        hmac_key: bytes | None = None,
        personal_keys: Sequence[str] = (),
        head_lookup: HeadLookup | None = None,
    ) -> None:
        self.service_name = service_name
        self.configured_stream = stream
        self.hmac_key = hmac_key
        self.personal_keys = tuple(sorted(set(personal_keys)))
        self._key_marks = tuple(f'"{key}":' for key in self.personal_keys)
        self._head_lookup = head_lookup
        self._lock = threading.Lock()
        self._reset()
        ref = weakref.ref(self)

        def _after_fork() -> None:
            sealer = ref()
            if sealer is not None:
                sealer._lock = threading.Lock()
                sealer._reset()

        os.register_at_fork(after_in_child=_after_fork)

    def _reset(self) -> None:
        # a forked child is a new writer: new stream (unless named), empty state
        self.stream = self.configured_stream or new_stream_name(self.service_name)
        self._seq = 0
        self._head = GENESIS_HASH
        self._resumed = self.configured_stream is None

    # ------------------------------------------------------------------ pipeline hooks

    def __call__(self, batch: list[PreparedRecord]) -> list[PreparedRecord]:
        """Seal ``batch`` (the :data:`~otel_audit.pipeline.batch.BatchSealer` contract)."""
        # one urandom call for the batch's salts instead of one per record
        salts = os.urandom(16 * len(batch)).hex()
        with self._lock:
            if not self._resumed:
                self._resume()
            return [p if p.seq is not None else self._seal(p, salts[32 * i:32 * i + 32])
                    for i, p in enumerate(batch)]

    @property
    def head(self) -> tuple[str, int, str]:
        """``(stream, last seq, last hash)`` of this writer's chain."""
        with self._lock:
            return self.stream, self._seq, self._head

    # ------------------------------------------------------------------ internals

    def _resume(self) -> None:
        head = self._head_lookup(self.stream) if self._head_lookup is not None else None
        if head is not None:
            self._seq, self._head = head
        self._resumed = True

    def _seal(self, prepared: PreparedRecord, salt: str) -> PreparedRecord:
        texts = dict(prepared.texts)
        keys_found: set[str] = set()
        for name in JSON_FIELDS:
            text = texts[name]
            if text is None:
                continue
            try:
                texts[name] = text = canonical_stored_json(text)
                if self._key_marks and any(mark in text for mark in self._key_marks):
                    keys_found.update(_keys_in(json.loads(text), self.personal_keys))
            except (ValueError, RecursionError):  # normalise() makes this unreachable;
                pass  # should it happen, the text is hashed as stored rather than lost
        pii = json.dumps({"k": sorted(keys_found)}) if keys_found else None
        self._seq += 1
        # PreparedRecord(...) directly: NamedTuple._replace is a slow Python-level copy
        sealed = PreparedRecord(prepared.record, texts, self.stream, self._seq, self._head,
                                None, salt, pii)
        digest = chain_hash(sealed_row(sealed), self.hmac_key, canonicalise=False)
        self._head = digest
        return PreparedRecord(prepared.record, texts, self.stream, self._seq, sealed.prev_hash,
                              digest, salt, pii)


def _keys_in(value: Any, keys: Sequence[str]) -> set[str]:
    """Which of ``keys`` occur as object keys anywhere in ``value``."""
    found: set[str] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.update(k for k in keys if k in item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found
