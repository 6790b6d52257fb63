#!/usr/bin/env bash
# Set up a virtual environment and run the demo against the embedded SQLite default,
# then print the commands to try next (the CLI lives in .venv/bin, not on the PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[all]"
# --format table: the summary is for a person reading it, even through `| tee`
.venv/bin/otel-audit demo --format table "$@"

cat <<'EOF'

Next: the otel-audit command is in .venv/bin. Activate the environment
(`source .venv/bin/activate`) or run it by its path, from this folder:

  .venv/bin/otel-audit --help
  .venv/bin/otel-audit report --list
  .venv/bin/otel-audit report failed_then_success
  .venv/bin/otel-audit report bulk_export_outliers --help
  .venv/bin/otel-audit query "SELECT action, count(*) AS n FROM audit_trails GROUP BY ALL"
  .venv/bin/otel-audit trace TRACE_ID        (a trace_id from the table above)
  .venv/bin/otel-audit verify

The notebook (notebooks/compliance_analysis.ipynb) reads this audit.db; to open it:

  .venv/bin/python -m pip install -e ".[jupyter]"
  .venv/bin/jupyter lab notebooks/compliance_analysis.ipynb
EOF
