"""The OTLP/HTTP logs receiver: a Starlette application over one :class:`AuditTrail`.

``POST /v1/logs`` answers 200 only once the request's audit records are in the trail's
durable path (``ack_mode``: ``durable`` when the trail offers it, else ``sync``, i.e.
committed to the store), each record at least in its own mode: the trail's
``mode_by_action`` / ``mode_by_classification`` rules apply per record, so a request
holding a record ruled ``sync`` is answered only once that record is committed (503
if it cannot be, and the sender retries the whole request). Every other answer is
chosen so that a sender never drops what could still be kept: the Collector's
``otlphttp`` exporter retries only 429, 502, 503 and 504 (and connection errors) and
drops a batch on any other status, so everything an operator can fix answers 503.

====  ====================================================================  ==============
code  when                                                                  the sender
====  ====================================================================  ==============
200   stored (``partial_success`` counts log records that are not audit)    done
400   body can never be an ``ExportLogsServiceRequest`` (bad protobuf,     drops it
      JSON, gzip member, trailing bytes)
401   a token is configured and the request does not carry it               drops it
413   body, or its decompressed form, larger than ``max_body_bytes``       drops it
415   content type other than protobuf/JSON, or an unknown encoding         drops it
503   store unavailable, body not received within ``body_timeout``,        retries after
      too many requests in flight, shutting down, or an unexpected error   ``Retry-After``
====  ====================================================================  ==============

Every 4xx (and a POST to any other path: 404) is counted and logged at ERROR with the
peer's address (rate-limited to one line per kind a minute), so a sender that is
losing batches cannot go unnoticed; an empty bearer token (``Authorization: Bearer ``,
what a Collector sends when its ``OTEL_AUDIT_SERVER_TOKEN`` is unset) gets its own
hint. The body is read, under
``body_timeout``, before the request takes one of the ``max_inflight`` slots, so slow
or stalled clients never starve the writers; decompression, parsing, conversion and
the store write run on a worker thread, so ``/healthz`` answers while a large body is
being parsed. 503 responses carry ``Retry-After``; stable record IDs make a replay
idempotent.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .. import config
from .._internal import _RateLimitedLog, logger, suppress_instrumentation
from ..errors import AuditWriteError, StoreError
from ..pipeline.delivery import ModeChooser
from ..trail import AuditTrail
from . import otlp
from .ingest import IngestBatch, deliver, records_from_request

__all__ = ["DEFAULT_BODY_TIMEOUT", "DEFAULT_MAX_BODY_BYTES", "IngestApp", "IngestStats",
           "default_ack_mode"]

#: Largest accepted body, before and after decompression (16 MiB). A Collector's
#: ``otlphttp`` requests must stay below it (see ``collector-config/``): a larger body
#: answers 413, which the sender drops.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024

#: Seconds a client has to send its whole body once its headers have arrived; a body
#: still incomplete then answers 503 with ``Retry-After`` and the connection is closed
#: (408 would make the Collector drop the batch; 503 makes it retry).
DEFAULT_BODY_TIMEOUT = 30.0

#: Seconds between two log lines about the same kind of refused request.
CLIENT_ERROR_LOG_INTERVAL = 60.0

# google.rpc.Code values used in error bodies
_INVALID_ARGUMENT, _UNAUTHENTICATED, _UNAVAILABLE = 3, 16, 14


def default_ack_mode() -> str:
    """``durable`` when this release's trail offers it, otherwise ``sync``."""
    return "durable" if "durable" in config.MODES else "sync"


@dataclass
class IngestStats:
    """Counters of one receiver since it started.

    ``client_errors`` counts every 4xx answer (the sender drops those batches);
    ``unavailable`` every 503, of which ``body_timeouts`` and ``internal_errors`` are
    the bodies not received in time and the unexpected failures; ``unconverted_records``
    the audit log records stored as received because the mapping failed on them;
    ``committed_records`` the accepted records committed to the store before their
    request was answered (``sync`` acknowledgement, or a ``sync`` mode rule).
    """

    requests: int = 0
    accepted_records: int = 0
    rejected_records: int = 0
    unavailable: int = 0
    client_errors: int = 0
    body_timeouts: int = 0
    internal_errors: int = 0
    unconverted_records: int = 0
    committed_records: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        """Add ``counts`` to the named counters."""
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        """Return the counters as a plain ``dict``."""
        with self._lock:
            return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                    if not f.name.startswith("_")}


class _Refused(Exception):
    """A request that can never succeed: answered with ``status`` and dropped by the sender."""

    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.close = close


def _peer(request: Request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client else "an unknown peer"


class IngestApp:
    """ASGI application receiving OTLP/HTTP logs into ``trail``.

    ``token``: bearer token required on ``/v1/logs`` (compared in constant time);
    ``max_body_bytes``: 413 above it, compressed or decompressed;
    ``body_timeout``: seconds to receive the whole body, read before a slot is taken
    (503 + ``Retry-After`` after it); ``max_inflight``: requests being decoded and
    written at once before new ones get 503; ``retry_after``: seconds advertised on
    503; ``ack_mode``: the trail mode a request must reach before 200 (default
    :func:`default_ack_mode`), the floor under each record's own rule from the trail's
    ``mode_by_action`` / ``mode_by_classification`` (only ``sync`` rules change
    anything: they make the answer wait for the commit); ``close_trail``: shut the
    trail down with the app.
    """

    def __init__(
        self,
        trail: AuditTrail,
        *,
        token: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        max_inflight: int = 8,
        retry_after: int = 1,
        ack_mode: str | None = None,
        close_trail: bool = False,
    ) -> None:
        if max_body_bytes < 1 or max_inflight < 1 or retry_after < 0 or not body_timeout > 0:
            raise ValueError("max_body_bytes, max_inflight and body_timeout must be "
                             "positive, retry_after non-negative")
        self.trail = trail
        self.ack_mode = ack_mode or default_ack_mode()
        if self.ack_mode not in config.MODES or self.ack_mode == "async":
            raise ValueError(f"ack_mode must be a mode that reaches durable storage; "
                             f"got {self.ack_mode!r}")
        # the trail's rules with the acknowledgement mode in place of the trail's own:
        # a record without a rule goes in the request's mode
        self.mode_rules = ModeChooser(dataclasses.replace(trail.config, mode=self.ack_mode))
        self._token = token.encode("utf-8") if token else None
        self.max_body_bytes = max_body_bytes
        self.body_timeout = float(body_timeout)
        self.retry_after = retry_after
        self.stats = IngestStats()
        self._close_trail = close_trail
        self._closing = False
        self._inflight = anyio.Semaphore(max_inflight)
        # one limiter per app: each kind of refusal or failure is logged at once, then
        # at most once a minute (with the count of those left out)
        self._log = _RateLimitedLog(CLIENT_ERROR_LOG_INTERVAL)
        self._app = Starlette(
            routes=[
                Route("/v1/logs", self._logs, methods=["POST"]),
                Route("/healthz", self._healthz, methods=["GET"]),
            ],
            lifespan=self._lifespan,
            exception_handlers={404: self._not_found},
        )

    @property
    def auth(self) -> str:
        """``"configured"`` when a bearer token is required, else ``"disabled"``."""
        return "configured" if self._token is not None else "disabled"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        await self._app(scope, receive, send)

    @asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        with suppress_instrumentation():
            if self._token is None:
                logger.warning("OTLP ingest: authentication DISABLED: any client that can "
                               "reach this server can write audit records (set a bearer "
                               "token, e.g. OTEL_AUDIT_SERVER_TOKEN)")
            else:
                logger.info("OTLP ingest: bearer-token authentication configured")
        yield
        # uvicorn has stopped accepting and drained in-flight requests by now
        self._closing = True
        if self._close_trail:
            await run_in_threadpool(self.trail.shutdown)
        else:
            await run_in_threadpool(self.trail.flush, self.trail.config.shutdown_timeout)

    # ------------------------------------------------------------------ routes

    async def _healthz(self, _request: Request) -> Response:
        status = 503 if self._closing else 200
        body = {"status": "shutting down" if self._closing else "ok",
                "ack_mode": self.ack_mode, "auth": self.auth,
                "mode_by_action": dict(self.mode_rules.by_action),
                "mode_by_classification": dict(self.mode_rules.by_classification),
                "max_body_bytes": self.max_body_bytes, "body_timeout": self.body_timeout,
                **self.stats.as_dict()}
        return JSONResponse(body, status_code=status)

    async def _not_found(self, request: Request, _exc: Exception) -> Response:
        if request.method == "POST":  # a sender pointed at the wrong path loses its data
            self.stats.add(client_errors=1)
            self._log("refused_404", logging.ERROR,
                      "OTLP ingest: refused a POST to %s from %s with 404 (audit log records "
                      "go to /v1/logs); the sender drops the batch", request.url.path,
                      _peer(request))
        return PlainTextResponse("Not Found", status_code=404)

    async def _logs(self, request: Request) -> Response:
        self.stats.add(requests=1)
        # Error bodies follow the request's encoding when it is one we speak.
        content_type = request.headers.get("content-type")
        media = otlp.JSON if (content_type or "").lower().startswith(otlp.JSON) else otlp.PROTOBUF
        try:
            self._check_token(request)
            try:
                media = otlp.media_type(content_type)
            except otlp.UnsupportedMediaType as exc:
                raise _Refused(415, str(exc)) from exc
            if self._closing:
                return self._unavailable("the receiver is shutting down", media)
            try:
                # The body first, without a slot: a slow or stalled client costs a
                # coroutine and its bytes, never one of the writers' slots.
                with anyio.fail_after(self.body_timeout):
                    body = await self._read_body(request)
            except TimeoutError:
                self.stats.add(body_timeouts=1)
                self._log("body_timeout", logging.WARNING,
                          "OTLP ingest: %s did not send its body within %gs; answered 503 "
                          "(the sender retries)", _peer(request), self.body_timeout)
                return self._unavailable(f"request body not received within "
                                         f"{self.body_timeout:g}s", media, close=True)
            except ClientDisconnect:
                return Response(status_code=400)  # nobody is left to read an answer
            try:
                self._inflight.acquire_nowait()
            except anyio.WouldBlock:
                return self._unavailable("too many requests in flight", media)
            try:
                return await self._ingest(body, request.headers.get("content-encoding"),
                                          media)
            finally:
                self._inflight.release()
        except _Refused as refused:
            return self._refused(request, refused, media)

    async def _ingest(self, body: bytes, encoding: str | None, media: str) -> Response:
        try:
            # decompression, parsing, conversion and the blocking store write stay off
            # the event loop: a large body never stalls /healthz or other requests
            batch, committed = await run_in_threadpool(self._process, body, encoding,
                                                       media)
        except otlp.PayloadTooLarge as exc:
            raise _Refused(413, str(exc)) from exc
        except otlp.UnsupportedMediaType as exc:
            raise _Refused(415, str(exc)) from exc
        except otlp.BadRequest as exc:
            raise _Refused(400, str(exc)) from exc
        except (AuditWriteError, StoreError) as exc:
            self._log("store", logging.WARNING,
                      "OTLP ingest: store unavailable, answering 503: %s", exc)
            return self._unavailable(f"audit store unavailable: {exc}", media)
        except Exception:
            # a bug here must not make the sender drop the batch: 503 keeps it queued
            # until the operator fixes the cause
            self.stats.add(internal_errors=1)
            self._log("internal", logging.ERROR,
                      "OTLP ingest failed; answering 503 so the sender keeps the batch",
                      exc_info=True)
            return self._unavailable("internal error; retry later", media)
        self.stats.add(accepted_records=len(batch.records), rejected_records=batch.rejected,
                       unconverted_records=batch.unconverted, committed_records=committed)
        return Response(otlp.encode_response(batch.rejected, batch.message, media),
                        media_type=media)

    def _process(self, body: bytes, encoding: str | None, media: str
                 ) -> tuple[IngestBatch, int]:
        payload = otlp.decompress(body, encoding, self.max_body_bytes)
        message = otlp.decode_request(payload, media)
        # the protobuf bytes are read again by the compiled decoder where it is built
        batch = records_from_request(self.trail, message,
                                     payload if media == otlp.PROTOBUF else None)
        return batch, deliver(self.trail, batch.records, self.ack_mode, self.mode_rules)

    # ------------------------------------------------------------------ helpers

    def _check_token(self, request: Request) -> None:
        if self._token is None:
            return
        header = request.headers.get("authorization")
        scheme, _, credentials = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            # still compare, so a missing header costs the same as a wrong one
            credentials = ""
        credentials = credentials.strip()
        if hmac.compare_digest(credentials.encode("utf-8"), self._token):
            return
        if header is not None and scheme.lower() == "bearer" and not credentials:
            self._log("empty_token", logging.ERROR,
                      "OTLP ingest: %s sent an empty bearer token (`Authorization: Bearer `):"
                      " the sender's OTEL_AUDIT_SERVER_TOKEN is probably unset; every batch "
                      "it sends is refused with 401 and dropped", _peer(request))
            raise _Refused(401, "empty bearer token")
        raise _Refused(401, "missing or invalid bearer token")

    def _refused(self, request: Request, refused: _Refused, media: str) -> Response:
        self.stats.add(client_errors=1)
        if refused.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
            if str(refused) != "empty bearer token":  # that one has its own hint
                self._log("unauthorised", logging.ERROR,
                          "OTLP ingest: refused %s with 401 (%s); the sender drops the batch",
                          _peer(request), refused)
            return self._status(401, _UNAUTHENTICATED, str(refused), media, headers)
        self._log(f"refused_{refused.status}", logging.ERROR,
                  "OTLP ingest: refused a request from %s with %d (%s); the sender drops "
                  "the batch", _peer(request), refused.status, refused)
        return self._status(refused.status, _INVALID_ARGUMENT, str(refused), media,
                            {"Connection": "close"} if refused.close else None)

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise _Refused(413, f"body of {declared} bytes exceeds {self.max_body_bytes} "
                                f"bytes", close=True)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _Refused(413, f"body exceeds {self.max_body_bytes} bytes", close=True)
            chunks.append(chunk)
        return b"".join(chunks)

    def _unavailable(self, message: str, media: str, *, close: bool = False) -> Response:
        self.stats.add(unavailable=1)
        headers = {"Retry-After": str(self.retry_after)}
        if close:
            headers["Connection"] = "close"
        return self._status(503, _UNAVAILABLE, message, media, headers)

    @staticmethod
    def _status(code: int, rpc_code: int, message: str, media: str,
                headers: dict[str, str] | None = None) -> Response:
        return Response(otlp.encode_status(rpc_code, message, media), status_code=code,
                        media_type=media, headers=headers)
