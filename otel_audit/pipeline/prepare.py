"""Preparing records for the store: redaction, transforms, normalisation, sealing.

Runs on the worker (a batch at a time, before anything reaches the spool) and on the
caller's thread for ``sync``, ``durable`` and outbox writes. No value stops it: a record
that cannot be prepared is prepared on its own, else in its safe form
(:func:`.quarantine.safe_record`), redacted, so a secret never gets past a broken
transform. A batch in which nothing needs redacting or normalising is checked column
by column (C-level ``map``/``zip`` passes) rather than record by record.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import operator
import uuid
from collections.abc import Callable, Sequence
from itertools import repeat

from .._internal import log_internal_error
from ..errors import StoreError
from ..prepared import PreparedRecord
from ..record import NORMALISATION_KEY, AuditRecord, normalise, plain_texts
from ..redact import Redactor
from .items import DeferredRecords, Item, resolve_items
from .quarantine import safe_record, safe_texts
from .stats import PipelineCounters

_unsealed: Callable[[list[AuditRecord], list[dict[str, str | None]], type],
                    list[PreparedRecord]] | None
try:  # the compiled form of unsealed() (optional: built where a C compiler is)
    from .._accel import unsealed as _unsealed
except ImportError:  # pragma: no cover - depends on the build
    _unsealed = None


def python_custody(batch: list[PreparedRecord], prepared_type: type, held: bool) -> None:
    """The pure-Python twin of the compiled ``custody``: Python code cannot take an
    object out of the cycle collector, so every record stays in it (the records'
    values are the same either way)."""


_custody: Callable[[list[PreparedRecord], type, bool], None]
try:  # compiled (optional: built where a C compiler is)
    from .._accel import custody as _custody
except ImportError:  # pragma: no cover - depends on the build
    _custody = python_custody

__all__ = ["Preparation"]

#: the range of the ``schema_version`` column (INTEGER, 32 bits, on every store)
_VERSION_RANGE = (-(2**31), 2**31 - 1)


class Preparation(PipelineCounters):
    """Redaction, normalisation and sealing of batches (a layer of the pipeline)."""

    def _prepare_batch(self, batch: Sequence[Item]) -> list[PreparedRecord]:
        try:
            prepared = self._prepare(batch)
        except Exception:  # one record's value or a transform bug: record by record
            log_internal_error("prepare", logging.ERROR,
                               "audit record preparation failed", exc_info=True)
            prepared = [self._prepare_one(item) for item in resolve_items(batch)]
        self._guard(prepared)
        return prepared

    def _prepare_one(self, item: AuditRecord | PreparedRecord) -> PreparedRecord:
        """Prepare one record without raising: fully, else untransformed (a transform
        bug), else in its safe form."""
        error: BaseException
        try:
            return self._prepare([item])[0]
        except Exception as exc:
            error = exc
        if self.transforms:
            try:
                return self._prepare_plain(item)
            except Exception as exc:
                error = exc
        return self._safe_prepared(item, f"could not be normalised: {error!r}")

    def _safe_prepared(self, item: Item, reason: str) -> PreparedRecord:
        """``item`` in its safe form (:func:`.quarantine.safe_record`), redacted, unsealed.

        A record whose redaction fails even in its safe form keeps none of its JSON
        documents nor free texts: a secret never gets past a broken redactor."""
        if isinstance(item, DeferredRecords):  # pragma: no cover - resolved before
            item = AuditRecord(id=uuid.uuid4().hex, timestamp=dt.datetime.now(dt.UTC),
                               action="unknown", user_id="unknown")
        safe = safe_record(item, reason)
        if self.redactor is not None and not isinstance(item, PreparedRecord):
            try:
                safe = self.redactor(safe)
            except Exception:
                withheld = "<withheld: redaction failed>"
                safe = safe._replace(old_values=None, new_values=None, changes=None,
                                     error_message=withheld, user_agent=None,
                                     context={NORMALISATION_KEY: [
                                         {"field": "record", "kind": "withheld",
                                          "reason": reason[:500]}]})
        return safe_texts(safe)

    def _guard(self, prepared: list[PreparedRecord]) -> None:
        """Replace, before sealing, records the store would refuse for a value that
        normalisation does not bound (an out-of-range ``schema_version``): once sealed, a
        refused record would leave a hole in its chain. C-level passes over the column."""
        versions = list(map(_VERSION_OF, map(_RECORD, prepared)))
        if (set(map(type, versions)) <= {int} and versions
                and _VERSION_RANGE[0] <= min(versions) and max(versions) <= _VERSION_RANGE[1]):
            return
        for i, version in enumerate(versions):
            if (type(version) is not int or not _VERSION_RANGE[0] <= version <= _VERSION_RANGE[1]
                    ) and prepared[i].seq is None:
                prepared[i] = self._safe_prepared(
                    prepared[i], "schema_version out of the column's range")

    def own_code_only(self) -> bool:
        """Whether nothing but the library's code sees the records this pipeline holds:
        every transform, sealer and post-write hook is an instance of one of its classes
        (:func:`library_object`) and the writer is its own store (:func:`library_writer`).
        Only then may a record be kept out of the cycle collector while queued or held
        (a cycle through it needs code that keeps it): the caller's queued copy
        (``AuditTrail.record``) and the worker's custody (:meth:`_hold`). The answer is
        kept for the stage lists as they are and found again when one changes."""
        seen = self._stages_seen
        if (seen is not None and seen[2] == self.on_written and seen[1] == self.sealers
                and seen[0] == self.transforms):
            return seen[3]
        answer = (all(map(library_object, self.transforms))
                  and all(map(library_object, self.sealers))
                  and all(map(library_object, self.on_written))
                  and library_writer(self.writer))
        self._stages_seen = (list(self.transforms), list(self.sealers),
                             list(self.on_written), answer)
        return answer

    def _hold(self, prepared: list[PreparedRecord]) -> None:
        """Take the records of a batch sealed on the worker out of the cycle collector
        while the pipeline holds them (``custody`` in ``otel_audit/_speedups_prepare.c``:
        each would otherwise live through the collections of the young generations into
        the oldest, and bring on full collections of the whole process). Only while
        :meth:`own_code_only`: the library's code is the only code that sees the records
        before :meth:`_let_go` (a record not sealed yet is sealed again on the store
        stage)."""
        if self.own_code_only():
            _custody(prepared, PreparedRecord, True)

    @staticmethod
    def _let_go(prepared: list[PreparedRecord]) -> None:
        """Put the records :meth:`_hold` took back in the cycle collector, before code of
        another module sees them (it could make a cycle through them)."""
        _custody(prepared, PreparedRecord, False)

    def _seal_ahead(self, prepared: list[PreparedRecord]) -> None:
        """Seal on the worker, so that the store stage only writes.

        Batches are sealed here in the order the store stage commits them. A sealer
        that cannot start (the store holding a named stream's head is down) leaves the
        batch unsealed: the store stage seals it inside its retry loop.
        The pipeline then holds the records out of the cycle collector (:meth:`_hold`).
        """
        with contextlib.suppress(StoreError):
            self._seal_safely(prepared)
        self._hold(prepared)

    def _seal_safely(self, prepared: list[PreparedRecord]) -> bool:
        """:meth:`_seal`, where a record a sealer cannot hash (a value its serialiser
        refuses) is found by halving the batch and sealed in its safe form; raises
        only :class:`StoreError` (the head of a named stream is unreadable)."""
        try:
            return self._seal(prepared)
        except StoreError:
            raise
        except Exception as exc:  # the sealer left its chain as it was (all or nothing)
            if len(prepared) == 1:
                prepared[0] = self._safe_prepared(prepared[0], f"could not be sealed: {exc!r}")
                try:
                    return self._seal(prepared)
                except StoreError:
                    raise
                except Exception:  # left unsealed: the store stage tries again
                    log_internal_error("seal", logging.ERROR,
                                       "audit record %s cannot be sealed", prepared[0].record.id,
                                       exc_info=True)
                    return True
            mid = len(prepared) // 2
            for start, end in ((0, mid), (mid, len(prepared))):
                part = prepared[start:end]
                self._seal_safely(part)
                prepared[start:end] = part
            return True

    def _prepare_plain(self, item: AuditRecord | PreparedRecord) -> PreparedRecord:
        if isinstance(item, PreparedRecord):
            return item
        if self.redactor is not None:
            item = self.redactor(item)
        return PreparedRecord(*normalise(item, max_record_bytes=self.config.max_record_bytes))

    def _prepare(self, records: Sequence[Item]) -> list[PreparedRecord]:
        cap = self.config.max_record_bytes
        redactor = self.redactor
        if not self.transforms and {AuditRecord} == set(map(type, records)):
            # the common batch: redaction and normalisation checked column by column
            plain: list[AuditRecord] = list(records)  # type: ignore[arg-type]
            if redactor is not None and isinstance(redactor, Redactor):
                plain = redactor.redact_batch(plain)
            elif redactor is not None:
                plain = [redactor(record) for record in plain]
            texts = plain_texts(plain, cap)
            if texts is not None:
                return unsealed(plain, texts)
            resolved: list[AuditRecord | PreparedRecord] = plain  # type: ignore[assignment]
            redactor = None  # done above
        else:
            resolved = resolve_items(records)
        out: list[PreparedRecord] = []
        for record in resolved:
            if isinstance(record, PreparedRecord):  # journalled or spooled: already done
                out.append(record)
                continue
            if redactor is not None:
                record = redactor(record)
            for transform in self.transforms:
                record = transform(record)
            out.append(PreparedRecord(*normalise(record, max_record_bytes=cap)))
        return out

    def _seal(self, prepared: list[PreparedRecord]) -> bool:
        """Run the sealers on the records without a chain position, in place; return
        whether any record was sealed.

        A record sealed before (then spooled or retried) keeps its ``seq``/``hash``.
        """
        if not self.sealers or None not in map(_SEQ, prepared):  # all sealed already
            return False
        if {None} == set(map(_SEQ, prepared)):  # none sealed yet: the whole batch
            whole = list(prepared)  # a sealer that fails leaves ``prepared`` as it was
            for sealer in self.sealers:
                whole = sealer(whole)
            if len(whole) != len(prepared):
                raise ValueError("a sealer returned a batch of another length")
            prepared[:] = whole
            return True
        todo = [i for i, p in enumerate(prepared) if p.seq is None]
        batch = [prepared[i] for i in todo]
        for sealer in self.sealers:
            batch = sealer(batch)
        for i, sealed in zip(todo, batch, strict=True):
            prepared[i] = sealed
        return True


def library_object(obj: object) -> bool:
    """Whether ``obj`` is an instance of a class of this library (not a subclass
    defined elsewhere, nor a function)."""
    return type(obj).__module__.startswith("otel_audit.")


def library_writer(writer: object) -> bool:
    """Whether ``writer`` and the exporter it writes with are the library's own stores
    (not an exporter of the application's, which sees every record)."""
    return (library_object(writer) and not hasattr(writer, "destination")
            and library_object(getattr(writer, "exporter", None)))


def unsealed(records: list[AuditRecord], texts: list[dict[str, str | None]], *,
             compiled: bool = True) -> list[PreparedRecord]:
    """``PreparedRecord(record, texts)`` for each pair, not sealed (in compiled code when
    the extension is built; both give equal records)."""
    if compiled and _unsealed is not None:
        return _unsealed(records, texts, PreparedRecord)
    # tuple.__new__ directly: the NamedTuple's __new__ is a Python-level call
    return list(map(tuple.__new__, repeat(PreparedRecord),
                    zip(records, texts, *_NO_CHAIN, strict=False)))


_SEQ = operator.itemgetter(3)  # PreparedRecord.seq
_RECORD = operator.itemgetter(0)  # PreparedRecord.record
_VERSION_OF = operator.itemgetter(AuditRecord._fields.index("schema_version"))
#: The fields after ``record`` and ``texts`` of an unsealed PreparedRecord (its chain
#: position and row: all None), as columns for zip().
_NO_CHAIN = (repeat(None),) * (len(PreparedRecord._fields) - 2)
