"""Build the optional compiled modules.

Everything else is configured in ``pyproject.toml``. Both extensions are optional: where
no C compiler is available (or, for ``_speedups``, no OpenSSL headers: Debian's
libssl-dev) the build goes on without them and the pure-Python paths run.

* ``otel_audit._speedups``: the worker's hot path (sealing, JSON texts, COPY text);
* ``otel_audit._pqcopy``: PostgreSQL COPY through psycopg's own libpq with the GIL
  released for a whole batch (no libpq headers needed: it resolves libpq at run time).
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("otel_audit._speedups", ["otel_audit/_speedups.c"],
              libraries=["crypto"], optional=True),
    Extension("otel_audit._pqcopy", ["otel_audit/_pqcopy.c"], optional=True),
])
