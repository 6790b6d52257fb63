"""Running the receiver under uvicorn: in the foreground (the CLI) or on a thread.

The token never needs to appear in a process list: :func:`resolve_token` takes it from
an argument, a file, or ``OTEL_AUDIT_SERVER_TOKEN``. :func:`check_exposure` refuses a
receiver that anyone on the network could write to, and :func:`build_server` checks the
TLS files before uvicorn would fail on them deep inside its startup.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from ..errors import ConfigError
from .app import IngestApp

__all__ = ["TOKEN_ENV", "build_server", "check_exposure", "check_tls", "is_loopback",
           "resolve_token", "serve_in_thread"]

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


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` is reachable only from this machine."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another name: it may resolve to any interface


def check_exposure(host: str, token: str | None, *, insecure: bool = False) -> None:
    """Refuse to listen beyond the loopback interface without a token.

    Without a token anyone who reaches the port can write audit records. Raises
    :class:`~otel_audit.errors.ConfigError` unless ``insecure`` (the caller then says so
    loudly).
    """
    if token or insecure or is_loopback(host):
        return
    raise ConfigError(
        f"refusing to listen on {host} without a bearer token: anyone who reaches it could "
        f"write audit records. Set {TOKEN_ENV} (or --token-file), listen on 127.0.0.1, or "
        f"pass --insecure if something in front of this server authenticates clients")


def check_tls(tls_cert: str | None, tls_key: str | None) -> None:
    """Raise :class:`~otel_audit.errors.ConfigError` unless the TLS files (if any) are a
    readable certificate/key pair, so a mistake is one clear line, not a traceback."""
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError("TLS needs both a certificate and a key")
    if not tls_cert or not tls_key:
        return
    for what, path in (("certificate", tls_cert), ("key", tls_key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"cannot read the TLS {what} {path}: "
                              f"{exc.strerror or exc}") from exc
    try:
        # an empty password: an encrypted key is refused here rather than prompted for
        # on a server's terminal (serve takes no key password)
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            tls_cert, tls_key, password="")
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(f"the TLS certificate {tls_cert} and key {tls_key} are not a "
                          f"usable PEM pair: {exc}") from exc


def build_server(
    app: IngestApp,
    *,
    host: str = "127.0.0.1",
    port: int = 4318,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    log_level: str = "info",
) -> uvicorn.Server:
    """Return a uvicorn server for ``app`` (graceful shutdown flushes the trail).

    Raises :class:`~otel_audit.errors.ConfigError` when only one TLS file is given or
    the files cannot be read or do not form a certificate/key pair.
    """
    check_tls(tls_cert, tls_key)
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
