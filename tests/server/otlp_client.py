"""A service that emits audit log records with the official OTLP/HTTP exporter.

Run as a script (``python otlp_client.py ENDPOINT SERVICE COUNT``) it is one of several
client processes; it prints the trace IDs it used, one per line. Imported, it offers
:func:`emit` to the tests.
"""

from __future__ import annotations

import sys

from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider


def emit(endpoint: str, service: str, count: int, *, token: str | None = None,
         batch_size: int = 512, timeout: float = 30,
         certificate_file: str | None = None) -> tuple[set[str], bool]:
    """Emit ``count`` audit log records inside spans; returns (trace IDs, flushed)."""
    resource = Resource.create({"service.name": service})
    tracer = TracerProvider(resource=resource).get_tracer("otlp-client")
    headers = {"authorization": f"Bearer {token}"} if token else None
    exporter = OTLPLogExporter(endpoint=endpoint, compression=Compression.Gzip,
                               headers=headers, timeout=timeout,
                               certificate_file=certificate_file)
    provider = LoggerProvider(resource=resource)
    provider.add_log_record_processor(BatchLogRecordProcessor(
        exporter, max_export_batch_size=batch_size, max_queue_size=max(count, 2048),
        export_timeout_millis=int(timeout * 1000)))
    logger = provider.get_logger("otlp-client")
    trace_ids: set[str] = set()
    for i in range(count):
        with tracer.start_as_current_span(f"request-{i}") as span:
            trace_ids.add(format(span.get_span_context().trace_id, "032x"))
            logger.emit(event_name="audit", body="tool deleted", attributes={
                "audit.action": "DELETE", "user.id": f"{service}-user-{i % 7}",
                "audit.resource.type": "tool", "audit.resource.id": f"{service}-{i}",
                "audit.new_values": '{"deleted": true}',
            })
            if i % 10 == 0:  # ordinary application logs travel the same pipe
                logger.emit(body="cache miss", attributes={"cache.key": str(i)})
    flushed = provider.force_flush(int(timeout * 1000))
    provider.shutdown()
    return trace_ids, flushed


if __name__ == "__main__":
    ids, ok = emit(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    print("\n".join(sorted(ids)))
    sys.exit(0 if ok else 1)
