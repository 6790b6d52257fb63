"""The OTLP/HTTP logs receiver: a Starlette application over one :class:`AuditTrail`.

``POST /v1/logs`` answers 200 only once the request's audit records are in the trail's
durable path (``ack_mode``: ``durable`` when the trail offers it, else ``sync``, i.e.
committed to the store). Everything else is an OTLP/HTTP error the SDK exporters and
the Collector understand:

====  ==================================================================  =========
code  when                                                                retried
====  ==================================================================  =========
400   body is not an ``ExportLogsServiceRequest``                         no
401   a token is configured and the request does not carry it             no
413   body (or its decompressed form) larger than ``max_body_bytes``      no
415   content type other than protobuf/JSON, or an unknown encoding       no
503   store unavailable, too many requests in flight, or shutting down    yes
====  ==================================================================  =========

503 responses carry ``Retry-After`` so Collectors and exporters back off and send the
same batch again; stable record IDs make that replay idempotent.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .. import config
from .._internal import log_internal_error
from ..errors import AuditWriteError, StoreError
from ..trail import AuditTrail
from . import otlp
from .ingest import IngestBatch, deliver, records_from_request

__all__ = ["DEFAULT_MAX_BODY_BYTES", "IngestApp", "IngestStats", "default_ack_mode"]

#: Largest accepted body, before and after decompression (the Collector's default
#: ``otlphttp`` batches stay far below this).
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024

# google.rpc.Code values used in error bodies
_INVALID_ARGUMENT, _UNAUTHENTICATED, _UNAVAILABLE, _INTERNAL = 3, 16, 14, 13


def default_ack_mode() -> str:
    """``durable`` when this release's trail offers it, otherwise ``sync``."""
    return "durable" if "durable" in config.MODES else "sync"


@dataclass
class IngestStats:
    """Counters of one receiver since it started."""

    requests: int = 0
    accepted_records: int = 0
    rejected_records: int = 0
    unavailable: int = 0
    client_errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        """Add ``counts`` to the named counters."""
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        """Return the counters as a plain ``dict``."""
        with self._lock:
            return {
                "requests": self.requests,
                "accepted_records": self.accepted_records,
                "rejected_records": self.rejected_records,
                "unavailable": self.unavailable,
                "client_errors": self.client_errors,
            }


class IngestApp:
    """ASGI application receiving OTLP/HTTP logs into ``trail``.

    ``token``: bearer token required on ``/v1/logs`` (compared in constant time);
    ``max_body_bytes``: 413 above it; ``max_inflight``: concurrent requests being
    written before new ones get 503; ``retry_after``: seconds advertised on 503;
    ``ack_mode``: the trail mode a request must reach before 200 (default
    :func:`default_ack_mode`); ``close_trail``: shut the trail down with the app.
    """

    def __init__(
        self,
        trail: AuditTrail,
        *,
        token: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_inflight: int = 8,
        retry_after: int = 1,
        ack_mode: str | None = None,
        close_trail: bool = False,
    ) -> None:
        if max_body_bytes < 1 or max_inflight < 1 or retry_after < 0:
            raise ValueError("max_body_bytes and max_inflight must be positive, "
                             "retry_after non-negative")
        self.trail = trail
        self.ack_mode = ack_mode or default_ack_mode()
        if self.ack_mode not in config.MODES or self.ack_mode == "async":
            raise ValueError(f"ack_mode must be a mode that reaches durable storage; "
                             f"got {self.ack_mode!r}")
        self._token = token.encode("utf-8") if token else None
        self.max_body_bytes = max_body_bytes
        self.retry_after = retry_after
        self.stats = IngestStats()
        self._close_trail = close_trail
        self._closing = False
        self._inflight = anyio.Semaphore(max_inflight)
        self._app = Starlette(
            routes=[
                Route("/v1/logs", self._logs, methods=["POST"]),
                Route("/healthz", self._healthz, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        await self._app(scope, receive, send)

    @asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
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
                "ack_mode": self.ack_mode, **self.stats.as_dict()}
        return JSONResponse(body, status_code=status)

    async def _logs(self, request: Request) -> Response:
        self.stats.add(requests=1)
        # Error bodies follow the request's encoding when it is one we speak.
        content_type = request.headers.get("content-type")
        reply = otlp.JSON if (content_type or "").lower().startswith(otlp.JSON) else otlp.PROTOBUF
        if not self._authorised(request):
            self.stats.add(client_errors=1)
            return self._status(401, _UNAUTHENTICATED, "missing or invalid bearer token", reply,
                                {"WWW-Authenticate": "Bearer"})
        try:
            media = otlp.media_type(content_type)
        except otlp.UnsupportedMediaType as exc:
            self.stats.add(client_errors=1)
            return self._status(415, _INVALID_ARGUMENT, str(exc), reply)
        if self._closing:
            return self._unavailable("the receiver is shutting down", media)
        try:
            self._inflight.acquire_nowait()
        except anyio.WouldBlock:
            return self._unavailable("too many requests in flight", media)
        try:
            return await self._ingest(request, media)
        finally:
            self._inflight.release()

    async def _ingest(self, request: Request, media: str) -> Response:
        try:
            body = await self._read_body(request)
            payload = otlp.decompress(body, request.headers.get("content-encoding"),
                                      self.max_body_bytes)
            message = otlp.decode_request(payload, media)
        except otlp.PayloadTooLarge as exc:
            self.stats.add(client_errors=1)
            return self._status(413, _INVALID_ARGUMENT, str(exc), media)
        except otlp.UnsupportedMediaType as exc:
            self.stats.add(client_errors=1)
            return self._status(415, _INVALID_ARGUMENT, str(exc), media)
        except otlp.BadRequest as exc:
            self.stats.add(client_errors=1)
            return self._status(400, _INVALID_ARGUMENT, str(exc), media)
        try:
            # conversion and the blocking store write stay off the event loop
            batch = await run_in_threadpool(self._convert_and_deliver, message)
        except (AuditWriteError, StoreError) as exc:
            log_internal_error("ingest_store", logging.WARNING,
                               "OTLP ingest: store unavailable, answering 503: %s", exc)
            return self._unavailable(f"audit store unavailable: {exc}", media)
        except Exception:
            log_internal_error("ingest_internal", logging.ERROR,
                               "OTLP ingest failed", exc_info=True)
            return self._status(500, _INTERNAL, "internal error", media)
        self.stats.add(accepted_records=len(batch.records), rejected_records=batch.rejected)
        return Response(otlp.encode_response(batch.rejected, batch.message, media),
                        media_type=media)

    def _convert_and_deliver(self, message: ExportLogsServiceRequest) -> IngestBatch:
        batch = records_from_request(self.trail, message)
        deliver(self.trail, batch.records, self.ack_mode)
        return batch

    # ------------------------------------------------------------------ helpers

    def _authorised(self, request: Request) -> bool:
        if self._token is None:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer":
            # still compare, so a missing header costs the same as a wrong one
            credentials = ""
        return hmac.compare_digest(credentials.strip().encode("utf-8"), self._token)

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise otlp.PayloadTooLarge(f"body of {declared} bytes exceeds "
                                       f"{self.max_body_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise otlp.PayloadTooLarge(f"body exceeds {self.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _unavailable(self, message: str, media: str) -> Response:
        self.stats.add(unavailable=1)
        return self._status(503, _UNAVAILABLE, message, media,
                            {"Retry-After": str(self.retry_after)})

    @staticmethod
    def _status(code: int, rpc_code: int, message: str, media: str,
                headers: dict[str, str] | None = None) -> Response:
        return Response(otlp.encode_status(rpc_code, message, media), status_code=code,
                        media_type=media, headers=headers)
