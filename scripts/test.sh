#!/usr/bin/env bash
# The test suite: set up (idempotent), then run every fast CPU test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q tests "$@"
