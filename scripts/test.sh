#!/usr/bin/env bash
# The test suite: set up (idempotent), then run every fast CPU test.
set -euo pipefail
cd "$(dirname "$0")/.."
GENLAB_TEXT=${GENLAB_TEXT:-1} bash scripts/setup.sh  # with the text extra, so the real text encoder is tested
# Headless Chromium for the report's layout test (tests/test_report.py; GENLAB_SKIP_BROWSER=1 skips it instead)
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "${GENLAB_SKIP_BROWSER:-0}" != 1 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
  echo "[test] installing headless Chromium (apt-get install chromium)"
  ($SUDO apt-get update -qq >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "[test] could not install chromium: tests/test_report.py's browser checks will fail (GENLAB_SKIP_BROWSER=1 skips them)"
fi
exec .venv/bin/python -m pytest -q tests "$@"
