"""DuckDB over a SQLite store, in a child process: one SQLite library per process.

DuckDB's ``sqlite_scanner`` carries its own copy of the SQLite library. A process that
also has the store open through Python's ``sqlite3`` (a trail's writer, the console's
own records, retention, verify) would then hold one file through two SQLite libraries,
which breaks SQLite's locking: POSIX advisory locks belong to the process, each copy
keeps its own lock bookkeeping (one copy's ``close()`` drops the other's locks), and the
first open of the second copy can reset the WAL index (``-shm``) the first has mapped;
a bus error was seen (https://sqlite.org/howtocorrupt.html, section 2.2).

So for a SQLite store, :class:`~otel_audit.analytics.AuditAnalytics` runs its locked
DuckDB connection here, in a child process that only DuckDB's SQLite touches. The
child runs the same lock-down as the in-process path (:func:`._guard.lock_down` after
attaching the store read-only, and :func:`._guard.checked_query` on every query it is
given) and answers a fixed set of requests: ``query`` (one checked read; the rows come
back as Arrow IPC), ``copy`` (a checked read written to a file with DuckDB's ``COPY``),
``refresh`` (reload the snapshot) and ``close``. Nothing else is reachable.

The parent never unpickles what the child sends (a JSON header and Arrow IPC bytes);
the child unpickles only its parent's requests, on its standard input. It is started
with ``sys.executable`` (``subprocess``, not ``multiprocessing``: the caller's
``__main__`` is never imported again), on first use; it ends on ``close()``, when its
:class:`IsolatedDuck` is collected, at interpreter exit, or when its parent dies (its
input closes); a child that died is started again by the next request.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import pickle
import struct
import subprocess
import sys
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import duckdb

from ..errors import ConfigError, QueryError, QueryRefusedError, StoreError
from .framing import read_exact, read_reply, write_reply

__all__ = ["ChildSpec", "IsolatedDuck", "arrow_relation", "call_in_child"]

_ERRORS: dict[str, type[Exception]] = {
    "QueryRefusedError": QueryRefusedError, "QueryError": QueryError,
    "ConfigError": ConfigError, "StoreError": StoreError,
}

#: The functions :func:`call_in_child` may run (``module:function``), by name.
_CALLS = {"prune_export": "otel_audit.retention:export_old_records"}

# the child: its protocol writes go to a private copy of file descriptor 1, and fd 1
# itself is pointed at stderr, so nothing a library prints can corrupt a frame. The
# packages otel_audit and otel_audit.analytics are set up without running their
# __init__ (the trail, OpenTelemetry): the child imports only what it runs.
_BOOT = (
    "import importlib.util, json, os, signal, sys, types\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "sys.path[:0] = json.loads(sys.argv[1])\n"
    "out = os.fdopen(os.dup(1), 'wb')\n"
    "os.dup2(2, 1)\n"
    "for name in ('otel_audit', 'otel_audit.analytics'):\n"
    "    spec = importlib.util.find_spec(name)\n"
    "    package = types.ModuleType(name)\n"
    "    package.__spec__ = spec\n"
    "    package.__path__ = list(spec.submodule_search_locations or [])\n"
    "    sys.modules[name] = package\n"
    "from otel_audit.analytics.isolated import serve\n"
    "serve(sys.stdin.buffer, out)\n"
    "os._exit(0)\n"
)

# a one-shot child (call_in_child): the whole package, one call, one JSON answer
_CALL_BOOT = (
    "import json, os, signal, sys\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "sys.path[:0] = json.loads(sys.argv[1])\n"
    "out = os.fdopen(os.dup(1), 'wb')\n"
    "os.dup2(2, 1)\n"
    "from otel_audit.analytics.isolated import serve_call\n"
    "serve_call(sys.stdin.buffer, out)\n"
    "os._exit(0)\n"
)

#: Children alive in this process, closed at interpreter exit.
_LIVE: weakref.WeakSet[IsolatedDuck] = weakref.WeakSet()


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """What the child opens: the store, the view and its lock-down."""

    url: str  #: the SQLite store's SQLAlchemy URL
    store: str  #: the store as named in errors
    archive_glob: str | None
    where: str | None  #: the scope's predicate of the view
    snapshot: bool
    readable: tuple[str, ...]  #: directories queries may read (the archives)
    spill_dir: str
    scoped: bool


# ------------------------------------------------------------------------ child

def _open(spec: ChildSpec) -> duckdb.DuckDBPyConnection:
    from sqlalchemy.engine import make_url

    from ._guard import lock_down
    from .duck import attach_store, create_view

    con = duckdb.connect(":memory:", config={"python_enable_replacements": False})
    try:
        con.execute("SET TimeZone = 'UTC'")
        attach_store(con, make_url(spec.url))
        view = "audit_trails_source" if spec.snapshot else "audit_trails"
        create_view(con, "live", spec.archive_glob, name=view, store=spec.store,
                    where=spec.where)
        lock_down(con, readable=[Path(p) for p in spec.readable],
                  spill_dir=Path(spec.spill_dir))
        if spec.snapshot:
            _refresh(con)
    except BaseException:
        con.close()
        raise
    return con


def _refresh(con: duckdb.DuckDBPyConnection) -> None:
    from .duck import snapshot

    try:
        snapshot(con, "audit_trails_source")
    except duckdb.Error as exc:
        raise QueryError(f"cannot load the snapshot: {exc}") from exc


def _checked(con: duckdb.DuckDBPyConnection, spec: ChildSpec, query: str,
             params: Any) -> duckdb.DuckDBPyRelation:
    from ._guard import checked_query

    statement = checked_query(con, query, scoped=spec.scoped)
    try:
        return con.sql(statement, params=params)
    except duckdb.PermissionException as exc:  # the locked connection said no
        raise QueryRefusedError(
            f"analytics reads only the trail and its archive directory: {exc}") from exc


def _query(con: duckdb.DuckDBPyConnection, spec: ChildSpec, request: dict[str, Any],
           out: IO[bytes]) -> None:
    import pyarrow as pa

    relation = _checked(con, spec, request["query"], request["params"])
    columns = list(relation.columns)
    types = [str(t) for t in relation.types]
    # columns travel by position (c1, c2, ...): a result may repeat a name
    positions = range(1, len(columns) + 1)
    table = relation.project(", ".join(f"#{i} AS c{i}" for i in positions)).to_arrow_table()
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    write_reply(out, {"ok": True, "columns": columns, "types": types}, sink.getvalue())


def _copy(con: duckdb.DuckDBPyConnection, spec: ChildSpec, request: dict[str, Any],
          out: IO[bytes]) -> None:
    from .duck import export_relation

    relation = _checked(con, spec, request["query"], request["params"])
    try:
        export_relation(relation, request["path"], request["options"])
    except duckdb.Error as exc:
        raise QueryError(f"export failed: {exc}") from exc
    write_reply(out, {"ok": True})


def serve(inp: IO[bytes], out: IO[bytes]) -> None:
    """The child's loop: open the store from the first request, then answer requests
    until ``close`` or the end of ``inp`` (the parent went away). The boot code then
    ends the process at once (``os._exit``: nothing is left to flush)."""
    con: duckdb.DuckDBPyConnection | None = None
    spec: ChildSpec | None = None
    while True:
        size = read_exact(inp, 8)
        body = read_exact(inp, struct.unpack(">Q", size)[0]) if size is not None else None
        if body is None:
            break
        request: dict[str, Any] = pickle.loads(body)  # the parent's own requests, never the reverse
        op = request.get("op")
        try:
            if op == "open":
                spec = request["spec"]
                assert isinstance(spec, ChildSpec) and con is None
                con = _open(spec)
                write_reply(out, {"ok": True})
            elif op == "close":
                write_reply(out, {"ok": True})
                break
            elif con is None or spec is None:
                raise QueryError("the analytics process has no store open")
            elif op == "query":
                _query(con, spec, request, out)
            elif op == "copy":
                _copy(con, spec, request, out)
            elif op == "refresh":
                _refresh(con)
                write_reply(out, {"ok": True})
            else:
                raise QueryRefusedError(f"unknown analytics request {op!r}")
        except BaseException as exc:  # every failure is an answer, never a dead child
            kind = type(exc).__name__ if type(exc).__name__ in _ERRORS else "QueryError"
            plain = (kind in _ERRORS and type(exc) is _ERRORS[kind]) or isinstance(
                exc, duckdb.Error)
            message = str(exc) if plain else f"{type(exc).__name__}: {exc}"
            write_reply(out, {"ok": False, "kind": kind, "message": message})
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                break
    if con is not None:
        con.close()


def serve_call(inp: IO[bytes], out: IO[bytes]) -> None:
    """A one-shot child: run the named function of :data:`_CALLS` on the pickled
    arguments read from ``inp``; answer with its JSON result (or the error)."""
    import importlib

    try:
        size = read_exact(inp, 8)
        body = read_exact(inp, struct.unpack(">Q", size)[0]) if size is not None else None
        if body is None:
            return
        request: dict[str, Any] = pickle.loads(body)  # the parent's own request
        module, function = _CALLS[request["call"]].split(":")
        result = getattr(importlib.import_module(module), function)(*request["args"])
        write_reply(out, {"ok": True}, json.dumps(result).encode())
    except BaseException as exc:  # every failure is an answer
        kind = type(exc).__name__ if type(exc).__name__ in _ERRORS else "QueryError"
        plain = kind in _ERRORS and type(exc) is _ERRORS[kind]
        write_reply(out, {"ok": False, "kind": kind,
                           "message": str(exc) if plain else f"{type(exc).__name__}: {exc}"})


# ----------------------------------------------------------------------- parent

def call_in_child(name: str, *args: Any) -> Any:
    """Run the function ``name`` (see :data:`_CALLS`) in a child process of its own
    and return its JSON result; its errors are raised here with their own type.

    For work that opens a SQLite store through DuckDB's bundled SQLite outside
    :class:`~otel_audit.analytics.AuditAnalytics` (retention's export).
    """
    if name not in _CALLS:
        raise QueryRefusedError(f"no such child call {name!r}")
    proc, kept = _spawn(_CALL_BOOT)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        body = pickle.dumps({"call": name, "args": args}, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            proc.stdin.write(struct.pack(">Q", len(body)) + body)
            proc.stdin.close()
            reply = read_reply(proc.stdout)
        except OSError:
            reply = None
        if reply is None:
            raise StoreError(_death_message(proc, kept, "the next call starts a new one"))
        payload = _unwrap(reply)[1]
        return json.loads(payload)
    finally:
        _stop(proc)


def _spawn(boot: str) -> tuple[subprocess.Popen[bytes], list[bytes]]:
    """Start ``python -c boot`` with this process's ``sys.path``; its stderr is drained
    into the returned list (the last 8 KB)."""
    paths = [p for p in sys.path if p]
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", boot, json.dumps(paths)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            close_fds=True)
    except OSError as exc:
        raise QueryError(
            f"cannot start the analytics process ({sys.executable}): {exc}") from exc
    kept: list[bytes] = []
    threading.Thread(target=_drain, args=(proc, kept), daemon=True,
                     name="otel-audit-analytics-stderr").start()
    return proc, kept


def _death_message(proc: subprocess.Popen[bytes], kept: list[bytes], then: str) -> str:
    try:
        code = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        code = None
    tail = b"".join(kept).decode(errors="replace").strip().splitlines()[-3:]
    detail = f": {' | '.join(tail)}" if tail else ""
    return f"the analytics process ended unexpectedly (exit status {code}){detail}; {then}"


class IsolatedDuck:
    """The parent's handle of one child: requests go one at a time (a lock), replies
    are a JSON header and, for ``query``, Arrow IPC bytes."""

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: list[bytes] = []
        self._closed = False
        self.starts = 0  #: how many children were started (1 unless one died)
        _LIVE.add(self)

    @property
    def pid(self) -> int | None:
        """The running child's process ID (``None`` before the first request)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def query(self, query: str, params: Any) -> tuple[list[str], list[str], Any]:
        """Run one checked read in the child: (columns, types, pyarrow table c1..cn)."""
        import pyarrow as pa

        header, payload = self._request({"op": "query", "query": query, "params": params})
        with pa.ipc.open_stream(payload) as reader:
            table = reader.read_all()
        return list(header["columns"]), list(header["types"]), table

    def copy(self, query: str, params: Any, path: str, options: str) -> None:
        """Write one checked read to ``path`` with DuckDB's ``COPY`` (in the child)."""
        self._request({"op": "copy", "query": query, "params": params, "path": path,
                       "options": options})

    def refresh(self) -> None:
        """Reload the child's snapshot."""
        self._request({"op": "refresh"})

    def close(self) -> None:
        """End the child (politely, then by force)."""
        with self._lock:
            self._closed = True
            proc, self._proc = self._proc, None
        if proc is not None:
            _stop(proc)

    # -------------------------------------------------------------- internals

    def _request(self, request: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        body = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)  # before any write
        with self._lock:
            if self._closed:
                raise QueryError("this AuditAnalytics is closed")
            proc = self._running()
            try:
                reply = self._exchange(proc, body)
            except BaseException:
                # an interrupted exchange leaves the pipe mid-frame: that child is done
                self._proc = None
                _stop(proc)
                raise
        return _unwrap(reply)

    def _exchange(self, proc: subprocess.Popen[bytes],
                  body: bytes) -> tuple[dict[str, Any], bytes]:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(struct.pack(">Q", len(body)) + body)
            proc.stdin.flush()
            reply = read_reply(proc.stdout)
        except (BrokenPipeError, OSError):
            reply = None
        if reply is None:
            raise QueryError(self._death(proc))
        return reply

    def _running(self) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            return proc
        self._proc = None
        proc = self._start()
        try:
            header, payload = self._exchange(proc, pickle.dumps(
                {"op": "open", "spec": self.spec}, protocol=pickle.HIGHEST_PROTOCOL))
            _unwrap((header, payload))
        except BaseException:
            _stop(proc)
            raise
        self._proc = proc
        return proc

    def _start(self) -> subprocess.Popen[bytes]:
        proc, self._stderr = _spawn(_BOOT)
        self.starts += 1
        return proc

    def _death(self, proc: subprocess.Popen[bytes]) -> str:
        return _death_message(proc, self._stderr, "the next query starts a new one")


def _drain(proc: subprocess.Popen[bytes], kept: list[bytes]) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        kept.append(line)
        while sum(len(x) for x in kept) > 8192 and len(kept) > 1:
            del kept[0]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        if proc.poll() is None and proc.stdin is not None:
            try:
                body = pickle.dumps({"op": "close"})
                proc.stdin.write(struct.pack(">Q", len(body)) + body)
                proc.stdin.close()
            except (OSError, ValueError):  # gone already, or its input closed
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
    finally:
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _unwrap(reply: tuple[dict[str, Any], bytes]) -> tuple[dict[str, Any], bytes]:
    header, payload = reply
    if header.get("ok"):
        return header, payload
    error = _ERRORS.get(str(header.get("kind")), QueryError)
    raise error(str(header.get("message")))


def arrow_relation(con: duckdb.DuckDBPyConnection, columns: Sequence[str],
                   types: Sequence[str], table: Any) -> duckdb.DuckDBPyRelation:
    """A relation of ``con`` over ``table`` (columns ``c1..cn``) with the child's column
    names and types (types the Arrow hop flattens, such as JSON, are cast back)."""
    source = con.from_arrow(table)
    plain = [f"c{i} AS {_quote(name)}" for i, name in enumerate(columns, start=1)]
    cast = [f"c{i} AS {_quote(name)}" if str(got) == wanted
            else f"CAST(c{i} AS {wanted}) AS {_quote(name)}"
            for i, (name, wanted, got) in enumerate(zip(columns, types, source.types,
                                                        strict=True), start=1)]
    if cast == plain:
        return source.project(", ".join(plain))
    try:
        return source.project(", ".join(cast))
    except duckdb.Error:  # a type of the child's catalog (an ENUM) this one cannot name
        return source.project(", ".join(plain))


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


@atexit.register
def _close_all() -> None:
    for child in list(_LIVE):
        child.close()

