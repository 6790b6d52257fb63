#!/usr/bin/env bash
# Set up a virtual environment with every extra, then run the whole test suite twice:
# with the compiled modules, then with OTEL_AUDIT_PUREPYTHON=1 (the pure-Python paths).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[all]"
.venv/bin/python -m ruff check otel_audit tests benchmarks notebooks
.venv/bin/python -m mypy
.venv/bin/python -m pytest "$@"
OTEL_AUDIT_PUREPYTHON=1 .venv/bin/python -m pytest "$@"
