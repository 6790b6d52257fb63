"""The chain sealer: gives each record of a batch its stream, sequence number and hashes.

It plugs into :attr:`BatchPipeline.sealers` and runs under the pipeline's write lock
right before the store write, so records are chained in the order they are committed.
The pipeline seals in place and only records without a ``seq``: a retried batch, a
spooled or journalled record keeps the seal it got the first time.

Every record is sealed under format ``otel-audit/3`` (exact numbers, a public SHA-256
chain; with an HMAC key each record's ``mac`` besides): a record of an older
``schema_version`` is raised to :data:`~.canonical.PUBLIC_VERSION` first, and JSON texts
are stored in the canonical spelling they are hashed in.

A sealed record that is never committed leaves a gap that ``verify`` reports as
missing records (see ``docs/integrity.md``: a failed ``sync`` write, an outbox
transaction rolled back by the caller, a record the store rejects, a batch given up at
shutdown). Rolling the head back is not safe here: the pipeline keeps failed ``async``
batches, sealed, for later retries. A record whose ``id`` the store already held (a
retry) is not inserted either; :class:`~.install.DuplicateSeals` notes its position.
"""

from __future__ import annotations

import json
import operator
import os
import re
import secrets
import socket
import threading
import weakref
from collections.abc import Callable, Sequence
from itertools import chain, repeat
from typing import Any

import orjson

from ..prepared import PreparedRecord, chain_row
from ..record import JSON_FIELDS, AuditRecord
from .canonical import (
    GENESIS_HASH,
    PAYLOAD_OPTIONS,
    PERSONAL_FIELDS,
    PUBLIC_FORMAT,
    PUBLIC_VERSION,
    canonical_stored_json,
    chain_hash,
    plain_chain_hashes,
    row_mac,
)

_seal_plain: Callable[..., list[PreparedRecord]] | None
_texts_special: Callable[[list[dict[str, str | None]], tuple[str, ...]], bool] | None
try:  # compiled forms of _seal_columns and _special (optional: built where a C compiler is)
    from .._accel import seal_plain as _seal_plain
    from .._accel import texts_special as _texts_special
except ImportError:  # pragma: no cover - depends on the build
    _seal_plain = _texts_special = None

__all__ = ["ChainSealer", "new_stream_name"]

#: Bytes of randomness drawn at once for the records' salts (see ChainSealer._salts).
_SALT_POOL = 1 << 16

#: ``(stream) -> (last seq, last hash) | None``: where a named stream resumes.
HeadLookup = Callable[[str], "tuple[int, str] | None"]


def new_stream_name(service_name: str) -> str:
    """``service@host:pid:random``: one writer process, never shared, at most 128 chars."""
    suffix = f"@{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"
    return service_name[: 128 - len(suffix)] + suffix


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
        # a text needing the slow path: a number to canonicalise or a personal key
        self._marks = tuple(f'"{key}":' for key in self.personal_keys)
        self._head_lookup = head_lookup
        #: the hook noting seals the store did not take (set by install_chain)
        self.duplicates: Any = None
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
        self._salt_pool = b""  # never the parent's: a child must not reuse its salts
        self._salt_at = 0

    # ------------------------------------------------------------------ pipeline hooks

    def __call__(self, batch: list[PreparedRecord]) -> list[PreparedRecord]:
        """Seal ``batch`` (the :data:`~otel_audit.pipeline.batch.BatchSealer` contract)."""
        batch = _current_versions(batch)
        with self._lock:
            salts = self._salts(len(batch))
            if not self._resumed:
                self._resume()
            if self._plain(batch):
                try:
                    return self._seal_columns(batch, salts)
                except TypeError:  # a value orjson refuses: row by row below
                    pass
            seq, head = self._seq, self._head
            try:
                return [p if p.seq is not None else self._seal(p, salts[32 * i:32 * i + 32])
                        for i, p in enumerate(batch)]
            except BaseException:  # all or nothing: a record that cannot be hashed leaves
                self._seq, self._head = seq, head  # the chain as it was (the pipeline
                raise  # finds that record and seals it in its safe form)

    @property
    def head(self) -> tuple[str, int, str]:
        """``(stream, last seq, last hash)`` of this writer's chain."""
        with self._lock:
            return self.stream, self._seq, self._head

    # ------------------------------------------------------------------ internals

    def _salts(self, n: int) -> str:
        """Hex salts for ``n`` records (32 hex digits each), from a pool of randomness
        drawn from ``os.urandom`` 64 KiB at a time (about 4,000 records).

        ``os.urandom`` lets go of the GIL, and a worker that lets go of it while the
        application's threads are busy waits out their switch interval (5 ms) to get it
        back: drawing salts once per chunk cost the worker most of its time under a
        busy caller. Called under the lock; the pool is dropped after fork.
        """
        need = 16 * n
        at = self._salt_at
        if len(self._salt_pool) - at < need:
            self._salt_pool, at = os.urandom(max(_SALT_POOL, need)), 0
        self._salt_at = at + need
        return self._salt_pool[at:at + need].hex()

    def _resume(self) -> None:
        head = self._head_lookup(self.stream) if self._head_lookup is not None else None
        if head is not None:
            self._seq, self._head = head
        self._resumed = True

    def _special(self, text: str) -> bool:
        """Whether ``text`` may need canonical numbers (an exponent, a negative zero) or
        holds a personal key."""
        return ("-0.0" in text or _EXPONENT.search(text) is not None
                or any(mark in text for mark in self._marks))

    def _plain(self, batch: list[PreparedRecord], *, compiled: bool = True) -> bool:
        """Whether the whole batch can be sealed column by column: nothing sealed yet,
        no text needing canonical numbers or holding a personal key (checked in compiled
        code when the extension is built), a hex head."""
        if not batch or any(map(operator.is_not, map(_SEQ, batch), repeat(None))):
            return False
        if _HEX64.fullmatch(self._head) is None:
            return False
        if compiled and _texts_special is not None:
            return not _texts_special(list(map(_TEXTS, batch)), self._marks)
        texts = "\x1e".join(filter(None, chain.from_iterable(map(dict.values, map(_TEXTS, batch)))))
        return not self._special(texts)

    def _seal_columns(self, batch: list[PreparedRecord], salts: str, *,
                      compiled: bool = True) -> list[PreparedRecord]:
        """Seal a plain batch: in compiled code when the extension is built, else with
        C-level ``map``/``zip`` over its columns.

        Both give exactly what :meth:`_seal` gives record by record (the tests compare
        all three).
        """
        n = len(batch)
        if compiled and _seal_plain is not None:
            sealed: list[PreparedRecord] = _seal_plain(
                batch, self.stream, self._seq + 1, self._head, salts[:32 * n], orjson.dumps,
                PAYLOAD_OPTIONS, self.hmac_key, PUBLIC_FORMAT, JSON_FIELDS, PreparedRecord)
            self._seq += n
            self._head = sealed[-1].hash or GENESIS_HASH
            return sealed
        records = list(map(_RECORD, batch))
        texts = list(map(_TEXTS, batch))
        (ids, timestamps, actions, user_ids, correlation_ids, trace_ids, span_ids,
         resource_types, resource_ids, resource_names, emails, team_ids, ips, agents, paths,
         methods, request_ids, _old, _new, _changes, classifications, reviews, successes,
         errors, _context, services, acting, versions, auth_methods,
         _delegation) = zip(*records, strict=True)
        delegations = list(map(_DELEGATION, texts))
        # format 3: the body (HASHED_FIELDS), then the personal fields (PERSONAL_FIELDS)
        common = list(zip(
            ids, map(_TS_TEXT, map(_ISOFORMAT, timestamps)), correlation_ids, request_ids,
            trace_ids, span_ids, actions, resource_types, resource_ids, resource_names,
            team_ids, paths, methods, map(_OLD, texts), map(_NEW, texts), map(_CHANGES, texts),
            classifications, map(int, reviews), map(int, successes), errors,
            map(_CONTEXT, texts), services, strict=True))
        bodies = list(map(tuple.__add__, common, zip(versions, auth_methods, strict=True)))
        personals = list(zip(user_ids, emails, ips, agents, acting, delegations, strict=True))
        salt_list = [salts[i:i + 32] for i in range(0, 32 * n, 32)]
        seqs = range(self._seq + 1, self._seq + 1 + n)
        hashes, macs = plain_chain_hashes(self.stream, seqs, self._head, bodies, personals,
                                          salt_list, self.hmac_key)
        mac_list: Any = macs if macs else repeat(None)
        prevs = [self._head, *hashes[:-1]]
        # the store row (ROW_COLUMNS): position, the first layout's hashed fields and
        # personal fields, salt, pii, hash, the fields of layout 3, mac
        heads = zip(repeat(self.stream), seqs, prevs, strict=False)
        middles = zip(acting, versions, user_ids, emails, ips, agents, salt_list, repeat(None),
                      hashes, auth_methods, delegations, mac_list, strict=False)
        rows = map(tuple.__add__, map(tuple.__add__, heads, common), middles)
        # tuple.__new__ directly: the NamedTuple's __new__ is a Python-level call
        sealed = list(map(
            tuple.__new__, repeat(PreparedRecord), zip(
                records, texts, repeat(self.stream), seqs, prevs, hashes, salt_list,
                repeat(None), mac_list if macs else repeat(None), rows, strict=False)))
        self._seq += n
        self._head = hashes[-1]
        return sealed

    def _seal(self, prepared: PreparedRecord, salt: str) -> PreparedRecord:
        texts = prepared.texts
        pii = None
        for text in texts.values():
            if text is not None and self._special(text):
                texts, pii = self._canonical_texts(texts)
                break
        self._seq += 1
        seq, prev = self._seq, self._head
        row = chain_row(prepared.record, texts, self.stream, seq, prev, None, salt, pii)
        digest = chain_hash(row, None, canonicalise=False)
        mac = row_mac(digest, self.hmac_key) if self.hmac_key is not None else None
        self._head = digest
        return PreparedRecord(prepared.record, texts, self.stream, seq, prev, digest, salt, pii,
                              mac, chain_row(prepared.record, texts, self.stream, seq, prev,
                                             digest, salt, pii, mac))

    def _canonical_texts(self, texts: dict[str, str | None]) -> tuple[
            dict[str, str | None], str | None]:
        """Texts with numbers in canonical form, and the ``pii`` note of personal keys."""
        texts = dict(texts)
        keys_found: set[str] = set()
        for name in JSON_FIELDS:
            text = texts.get(name)
            if text is None:
                continue
            try:
                texts[name] = text = canonical_stored_json(text)
                if self.personal_keys and name not in PERSONAL_FIELDS:
                    keys_found.update(_keys_in(json.loads(text), self.personal_keys))
            except (ValueError, RecursionError):  # normalise() makes this unreachable;
                pass  # should it happen, the text is hashed as stored rather than lost
        return texts, json.dumps({"k": sorted(keys_found)}) if keys_found else None


_RECORD, _TEXTS, _SEQ = operator.itemgetter(0), operator.itemgetter(1), operator.itemgetter(3)
_OLD, _NEW = operator.itemgetter("old_values"), operator.itemgetter("new_values")
_CHANGES, _CONTEXT = operator.itemgetter("changes"), operator.itemgetter("context")
_DELEGATION = operator.methodcaller("get", "delegation_chain")
_ISOFORMAT = operator.methodcaller("isoformat", " ", "microseconds")
_TS_TEXT = operator.itemgetter(slice(0, 26))  # chain_row()'s timestamp text
#: A digit followed by an exponent mark: maybe a number to write without exponent.
_EXPONENT = re.compile(r"[0-9][eE]")
_VERSION = operator.itemgetter(AuditRecord._fields.index("schema_version"))


def _current_versions(batch: list[PreparedRecord]) -> list[PreparedRecord]:
    """``batch`` with every unsealed record at schema_version >= PUBLIC_VERSION.

    Every row this sealer seals is hashed under format 3, which the row says through
    its ``schema_version`` (``docs/integrity.md``): a record built with an older version
    (an application's own AuditRecord, a journal written by an older release) is raised
    to it. Records the trail builds already carry it.
    """
    try:
        if min(map(_VERSION, map(_RECORD, batch)), default=PUBLIC_VERSION) >= PUBLIC_VERSION:
            return batch
    except TypeError:
        pass
    out = []
    for p in batch:
        version = p.record.schema_version
        if p.seq is None and not (type(version) is int and version >= PUBLIC_VERSION):
            p = p._replace(record=p.record._replace(schema_version=PUBLIC_VERSION), row=None)
        out.append(p)
    return out


_HEX64 = re.compile(r"[0-9a-f]{64}")


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
