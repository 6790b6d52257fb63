"""Running the receiver under uvicorn: in the foreground (the CLI) or on a thread.

The token never needs to appear in a process list: :func:`resolve_token` takes it from
an argument, a file, or ``OTEL_AUDIT_SERVER_TOKEN``.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from ..errors import ConfigError
from .app import IngestApp

__all__ = ["TOKEN_ENV", "build_server", "resolve_token", "serve_in_thread"]

#: Environment variable holding the bearer token.
TOKEN_ENV = "OTEL_AUDIT_SERVER_TOKEN"

#: Seconds uvicorn gives in-flight requests to finish on shutdown before it cancels
#: them (the Collector and exporters retry a cancelled request).
GRACEFUL_SHUTDOWN_SECONDS = 30


def resolve_token(token: str | None = None, token_file: str | os.PathLike[str] | None = None,
                  ) -> str | None:
    """Return the bearer token: ``token``, else the file's content, else the environment."""
    if token and token_file:
        raise ConfigError("give the token directly or as a file, not both")
    if token_file:
        try:
            value = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {token_file}: {exc}") from exc
        if not value:
            raise ConfigError(f"the token file {token_file} is empty")
        return value
    return token or os.environ.get(TOKEN_ENV) or None


def build_server(
    app: IngestApp,
    *,
    host: str = "127.0.0.1",
    port: int = 4318,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    log_level: str = "info",
) -> uvicorn.Server:
    """Return a uvicorn server for ``app`` (graceful shutdown flushes the trail)."""
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError("TLS needs both a certificate and a key")
    cfg = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        log_level=log_level,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    return uvicorn.Server(cfg)


@contextmanager
def serve_in_thread(app: IngestApp, *, host: str = "127.0.0.1", port: int = 0,
                    tls_cert: str | None = None, tls_key: str | None = None,
                    log_level: str = "warning") -> Iterator[str]:
    """Serve ``app`` on a background thread; yields the base URL (``http(s)://host:port``).

    The socket is bound and listening before the thread starts, so clients may connect
    at once (the kernel queues them until uvicorn accepts). On exit the server shuts down
    gracefully: in-flight requests finish, then the app's shutdown flushes the trail.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    bound_port = sock.getsockname()[1]
    server = build_server(app, host=host, port=bound_port, tls_cert=tls_cert, tls_key=tls_key,
                          log_level=log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="otel-audit-serve", daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls_cert else 'http'}://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(GRACEFUL_SHUTDOWN_SECONDS + 10)
        sock.close()
