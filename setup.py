"""Build the optional compiled modules.

Everything else is configured in ``pyproject.toml``. The one extension,
``otel_audit._speedups`` (pure CPU transforms on the worker: sealing, JSON texts, COPY
text), is optional: where no C compiler is available (or no OpenSSL headers: Debian's
libssl-dev) the build goes on without it and the pure-Python paths run.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("otel_audit._speedups", ["otel_audit/_speedups.c",
                                              "otel_audit/_speedups_verify.c",
                                              "otel_audit/_speedups_store.c",
                                              "otel_audit/_speedups_otlp.c",
                                              "otel_audit/_speedups_prepare.c",
                                              "otel_audit/_speedups_copyparse.c"],
              depends=["otel_audit/_speedups_buffer.h"],
              libraries=["crypto"], optional=True),
])
