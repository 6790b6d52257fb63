#!/usr/bin/env bash
# Set up a virtual environment and run the demo against the embedded SQLite default.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[all]"
.venv/bin/otel-audit demo "$@"
