"""The one place that chooses between the compiled modules and the pure-Python paths.

``otel_audit._speedups`` (pure CPU transforms: batch texts, sealing, COPY text, the
call's snapshot; no I/O, no other library's handles) is optional: it is built where a C
compiler is. Every module that can use it imports it from here, so one switch turns it
off: ``OTEL_AUDIT_PUREPYTHON=1`` (read once, at
import) forces the pure-Python paths everywhere, as ``MSGPACK_PUREPYTHON`` does for
msgpack. The test suite runs both ways.
"""

from __future__ import annotations

import contextlib
import os
from types import ModuleType

# the compiled functions are listed too: they are what this module is for (present only
# where the compiled module is used)
__all__ = [
    "PURE_PYTHON_ENV",
    "copy_rows",
    "copy_text",
    "custody",
    "merkle_extend",
    "otlp_attributes_to_fields",
    "otlp_decode_logs",
    "otlp_encode_logs",
    "plain_texts",
    "pure_python",
    "queued_copy",
    "redact_clean",
    "seal_plain",
    "snapshot",
    "speedups",
    "sqlite_params",
    "texts_special",
    "unsealed",
    "untrack",
    "verify_flags",
]

#: Environment variable that forces the pure-Python paths (``1``, ``true``, ``yes``, ``on``).
PURE_PYTHON_ENV = "OTEL_AUDIT_PUREPYTHON"

#: Whether the pure-Python paths are forced for this process.
pure_python: bool = os.environ.get(PURE_PYTHON_ENV, "").strip().lower() in (
    "1", "true", "yes", "on")

#: The compiled module, or ``None`` (not built, or the pure path forced).
speedups: ModuleType | None = None
if not pure_python:
    try:
        from . import _speedups as speedups
    except ImportError:  # pragma: no cover - depends on the build
        speedups = None

if speedups is not None:
    # the compiled functions, importable from here only when they are to be used:
    # ``from otel_audit._accel import seal_plain`` raises ImportError otherwise, which
    # every import site already answers with its pure-Python path
    try:
        from ._speedups import (
            copy_text,
            plain_texts,
            seal_plain,
            snapshot,
            sqlite_params,
            texts_special,
            untrack,
        )
    except ImportError:  # pragma: no cover - a build older than this source
        speedups = None
if speedups is not None:
    # OTLP's (otel_audit/_speedups_otlp.c): a build without it keeps the rest
    with contextlib.suppress(ImportError):
        from ._speedups import otlp_decode_logs, otlp_encode_logs
    with contextlib.suppress(ImportError):  # a build older than the mapping's twin
        from ._speedups import otlp_attributes_to_fields
if speedups is not None:
    # the caller's queued record (in the snapshot's section of _speedups.c): a build
    # without it keeps the rest
    with contextlib.suppress(ImportError):
        from ._speedups import queued_copy
if speedups is not None:
    # the worker's preparation (otel_audit/_speedups_prepare.c): a build without it keeps
    # the rest
    with contextlib.suppress(ImportError):
        from ._speedups import redact_clean, unsealed
    with contextlib.suppress(ImportError):  # a build older than the pipeline's custody
        from ._speedups import custody
if speedups is not None:
    # the store stage's (otel_audit/_speedups_store.c): a build without it keeps the rest
    with contextlib.suppress(ImportError):
        from ._speedups import merkle_extend
if speedups is not None:
    # the verifier's (otel_audit/_speedups_verify.c): a build without it keeps the rest
    with contextlib.suppress(ImportError):
        from ._speedups import verify_flags
if speedups is not None:
    # the verifier's COPY text reader (otel_audit/_speedups_copyparse.c): a build without
    # it keeps the rest
    with contextlib.suppress(ImportError):
        from ._speedups import copy_rows
