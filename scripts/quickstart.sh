#!/usr/bin/env bash
# The main job: set up, train a small DDPM on Fashion-MNIST on the CPU, sample with DDIM, write the report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-runs/quickstart}
RESUME=""
[ -d "$OUT/checkpoints" ] && [ -n "$(ls -A "$OUT/checkpoints" 2>/dev/null)" ] && RESUME="--resume"
start=$(date +%s)
.venv/bin/genlab train ddpm --config ddpm-fmnist-quick --out "$OUT" $RESUME "$@"
echo "quickstart finished in $(( $(date +%s) - start )) s of training and sampling; open $OUT/report.html"
