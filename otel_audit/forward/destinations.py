"""Destinations: where the forwarder sends, each acknowledging a whole batch or raising.

A destination's :meth:`Destination.send` returns only once the batch is acknowledged
(the forwarder then moves its cursor) and otherwise raises
:class:`~otel_audit.forward.errors.RetryableError` or
:class:`~otel_audit.forward.errors.PermanentError`. What "acknowledged" means, per
destination, and the idempotency key each one sees, is in ``docs/forwarding.md``.

``parse_destination("otlp+http://host:4318")``, ``"syslog+tcp://host:514"``,
``"syslog+tls://host:6514"``, ``"file:///var/log/audit.jsonl"``.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import ConfigError
from .errors import RetryableError
from .formats import FORMATS
from .items import ForwardItem

__all__ = ["Destination", "FileDestination", "SyslogDestination", "destination_name",
           "parse_destination"]


class Destination(Protocol):
    """Where batches go: ``send`` returns once the batch is acknowledged."""

    name: str

    def send(self, items: Sequence[ForwardItem]) -> None:
        """Deliver ``items`` in order; raise a ``SendError`` unless acknowledged."""

    def close(self) -> None:
        """Release connections and files."""


def destination_name(url: str) -> str:
    """A stable name for ``url``: scheme, host, port and path, never credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"[:128]


class FileDestination:
    """JSON lines in a file, rotated by size (``path.1`` ... ``path.N``, newest first).

    A batch is acknowledged once written and ``fsync``-ed. After a crash in the middle
    of a write, the torn last line is ended before the batch is written again, so a
    reader skipping lines that do not parse sees every record.
    """

    def __init__(self, path: str | Path, *, max_bytes: int = 100 * 1024 * 1024,
                 backups: int = 5, formatter: Callable[[ForwardItem], str] = FORMATS["json"],
                 name: str | None = None) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.formatter = formatter
        self.name = name or f"file://{self.path}"[:128]

    def _rotate(self) -> None:
        if self.backups <= 0:
            self.path.unlink(missing_ok=True)
            return
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def send(self, items: Sequence[ForwardItem]) -> None:
        """Append ``items`` as lines, rotate first when the file would pass ``max_bytes``."""
        data = "".join(self.formatter(item) + "\n" for item in items).encode("utf-8",
                                                                              "surrogatepass")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_size > 0 and (
                    self.path.stat().st_size + len(data) > self.max_bytes):
                self._rotate()
            with open(self.path, "ab+") as fh:
                if fh.tell() > 0:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        # a line torn by a crash mid-write: end it, so the resent batch
                        # starts on its own line (the fragment stays, unparsable)
                        data = b"\n" + data
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:  # a full or read-only disk: it may be fixed, so retry
            raise RetryableError(f"cannot write {self.path}: {exc}") from exc

    def close(self) -> None:
        """Nothing stays open between batches."""


# RFC 5424: facility 13 ("log audit"), severity informational (6) or warning (4)
_FACILITY_LOG_AUDIT = 13
_SD_ID = "otel_audit@32473"  # 32473: the example enterprise number of RFC 5612


def _sd_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _header_token(value: str | None, limit: int) -> str:
    text = "".join(ch for ch in (value or "") if 33 <= ord(ch) <= 126)[:limit]
    return text or "-"


class SyslogDestination:
    """RFC 5424 messages over TCP or TLS, octet-counting framing (RFC 6587 / RFC 5425).

    One connection per batch: after the frames the forwarder half-closes its side and
    waits for the receiver to close; a receiver closes only after reading everything
    before the end of stream, so that close is the acknowledgement (plain syslog has
    no application-level one). Structured data ``[otel_audit@32473 id= stream= seq=]``
    carries the record ID.
    """

    def __init__(self, host: str, port: int, *, tls: ssl.SSLContext | None = None,
                 formatter: Callable[[ForwardItem], str] = FORMATS["json"],
                 app_name: str = "otel-audit", timeout: float = 30.0,
                 name: str | None = None) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.formatter = formatter
        self.app_name = app_name
        self.timeout = timeout
        self.hostname = _header_token(socket.gethostname(), 255)
        self.name = name or f"syslog+{'tls' if tls else 'tcp'}://{host}:{port}"

    def frame(self, item: ForwardItem) -> bytes:
        """The octet-counted RFC 5424 frame of one record."""
        r = item.record
        severity = 6 if r.success else 4
        ts = r.timestamp.astimezone(dt.UTC).isoformat(timespec="microseconds").replace(
            "+00:00", "Z")
        sd = (f'[{_SD_ID} id="{_sd_value(r.id)}" stream="{_sd_value(item.stream)}" '
              f'seq="{item.seq}"]')
        message = (f"<{_FACILITY_LOG_AUDIT * 8 + severity}>1 {ts} {self.hostname} "
                   f"{_header_token(self.app_name, 48)} - {_header_token(r.action, 32)} {sd} "
                   ).encode() + self.formatter(item).encode("utf-8", "surrogatepass")
        return str(len(message)).encode() + b" " + message

    def send(self, items: Sequence[ForwardItem]) -> None:
        """Send the frames on a new connection and wait for the receiver's close."""
        data = b"".join(self.frame(item) for item in items)
        try:
            raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
            sock: socket.socket = raw
            try:
                if self.tls is not None:
                    sock = self.tls.wrap_socket(raw, server_hostname=self.host)
                sock.sendall(data)
                if isinstance(sock, ssl.SSLSocket):
                    try:
                        # close_notify: the receiver sees the end of the stream
                        raw = sock.unwrap()
                    except ssl.SSLEOFError:
                        # the receiver closed in answer to close_notify, which it reads
                        # only after every record before it: that close is the ack
                        return
                raw.shutdown(socket.SHUT_WR)
                while raw.recv(4096):  # until the receiver closes after reading everything
                    pass
            finally:
                raw.close()
        except (OSError, ssl.SSLError) as exc:
            raise RetryableError(f"syslog {self.host}:{self.port}: {exc}") from exc

    def close(self) -> None:
        """Nothing stays open between batches."""


def _tls_context(query: Mapping[str, list[str]]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=query.get("ca", [None])[0])
    cert = query.get("cert", [None])[0]
    if cert:
        context.load_cert_chain(cert, query.get("key", [None])[0])
    return context


def parse_destination(url: str, *, fmt: str = "json", headers: Mapping[str, str] | None = None,
                      name: str | None = None, timeout: float = 30.0) -> Destination:
    """Build the destination ``url`` names (see the module docstring).

    Query parameters: ``file://...?max_bytes=N&backups=K``; ``syslog+tls://...?ca=FILE
    &cert=FILE&key=FILE``. ``fmt`` is the body of text destinations (``json``, ``cef``,
    ``leef``); OTLP always sends OTLP log records.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    formatter = FORMATS[fmt]
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    shown = name or destination_name(url)
    if parts.scheme in ("otlp+http", "otlp+https"):
        from .otlp import OtlpAuditExporter

        base = f"{parts.scheme.removeprefix('otlp+')}://{parts.netloc}{parts.path}"
        return OtlpAuditExporter(base, headers=headers, timeout=timeout, name=shown)
    if parts.scheme in ("syslog+tcp", "syslog+tls"):
        if not parts.hostname or not parts.port:
            raise ConfigError(f"{url}: syslog destinations need host:port")
        tls = _tls_context(query) if parts.scheme == "syslog+tls" else None
        return SyslogDestination(parts.hostname, parts.port, tls=tls, formatter=formatter,
                                 timeout=timeout, name=shown)
    if parts.scheme == "file":
        path = unquote(parts.netloc + parts.path)
        if not path:
            raise ConfigError(f"{url}: no file path")
        try:
            max_bytes = int(query.get("max_bytes", [100 * 1024 * 1024])[0])
            backups = int(query.get("backups", [5])[0])
        except ValueError as exc:
            raise ConfigError(f"{url}: max_bytes and backups are integers") from exc
        return FileDestination(path, max_bytes=max_bytes, backups=backups,
                               formatter=formatter, name=name or f"file://{path}"[:128])
    raise ConfigError(f"{url}: destinations are otlp+http(s)://, syslog+tcp://, "
                      f"syslog+tls:// or file://")
