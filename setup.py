"""Build the optional compiled hot path (``otel_audit._speedups``).

Everything else is configured in ``pyproject.toml``. The extension is optional: where
no C compiler or no OpenSSL headers (Debian's libssl-dev) are available the build goes
on without it and the pure-Python path runs.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("otel_audit._speedups", ["otel_audit/_speedups.c"],
                             libraries=["crypto"], optional=True)])
