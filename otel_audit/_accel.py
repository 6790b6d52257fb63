"""The one place that chooses between the compiled modules and the pure-Python paths.

``otel_audit._speedups`` (pure CPU transforms: batch texts, sealing, COPY text, the
call's snapshot) and ``otel_audit._pqcopy`` (COPY through psycopg's libpq) are optional:
they are built where a C compiler is. Every module that can use them imports them from
here, so one switch turns them all off: ``OTEL_AUDIT_PUREPYTHON=1`` (read once, at
import) forces the pure-Python paths everywhere, as ``MSGPACK_PUREPYTHON`` does for
msgpack. The test suite runs both ways.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # at run time: __getattr__ below, on first use
    from . import _pqcopy as pqcopy

# the compiled functions are listed too: they are what this module is for (present only
# where the compiled module is used)
__all__ = [
    "PURE_PYTHON_ENV",
    "copy_text",
    "plain_texts",
    "pqcopy",
    "pqcopy_allowed",
    "pure_python",
    "seal_plain",
    "snapshot",
    "speedups",
    "sqlite_params",
    "texts_special",
    "untrack",
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


def pqcopy_allowed() -> bool:
    """Whether the writer may load the compiled COPY module (``otel_audit._pqcopy``)."""
    return not pure_python


def __getattr__(name: str) -> ModuleType:
    """``pqcopy``: the compiled COPY module, imported on first use (the writer asks for
    it only for PostgreSQL); an ImportError where it is not built or not allowed."""
    if name == "pqcopy":
        if pure_python:
            raise ImportError(f"{PURE_PYTHON_ENV} is set: otel_audit._pqcopy is not used")
        from . import _pqcopy

        return _pqcopy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
