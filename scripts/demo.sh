#!/usr/bin/env bash
# The end-to-end slice on the bundled SmolLM2-135M with the default SQLite store:
#   profile -> select -> search -> query -> plot
# Usage: scripts/demo.sh [RUN_DIR]   (make demo calls it; every step is resumable)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/smollm2}
AMOEBA=${AMOEBA:-.venv/bin/amoeba}
MODEL=smollm2-135m
WIDTHS=1,0.875,0.75,0.625
mkdir -p "$RUN"
t0=$(date +%s)
step() { printf '\n\033[1m== %s\033[0m (%ss elapsed)\n' "$1" "$(( $(date +%s) - t0 ))"; }

step "1/5 profile: measured cpu-host PyTorch decode latency table for $MODEL (paired with d30-w1)"
# decode only: the search and the query below ask for ms/token; add --phases prefill,decode for both
$AMOEBA profile --device cpu-host --flow pytorch --model $MODEL \
    --depths 6,12,18,24,30 --widths $WIDTHS --phases decode --prompt-len 128 --threads 2

step "2/5 select: Stage 1 strategy (DP depth + importance width) on the real model"
# DEMO_SELECT_ARGS trades calibration text for time; the full-budget run is `amoeba select` with defaults.
$AMOEBA select --model $MODEL --min-depth 15 --widths $WIDTHS --out "$RUN/strategy.yaml" \
    ${DEMO_SELECT_ARGS:---calib-seq-len 128 --calib-windows 1 --stats-windows 2 --val-windows 1}

step "3/5 search: hierarchical search of the accuracy-latency front (SQLite store in $RUN)"
$AMOEBA search --strategy "$RUN/strategy.yaml" --device cpu-host --flow pytorch \
    --method hierarchical --run "$RUN" \
    ${DEMO_SEARCH_ARGS:---widths 0.5:1:1/16 --trials 60 --seq-len 128 --max-windows 4}

step "4/5 query: best shape within 75% of the full model's ms/token on this host"
# A share of the full model, not a fixed time: a fixed 40ms has no answer on a slower or busier host.
$AMOEBA query --device cpu-host --flow pytorch --budget 75% --run "$RUN"

step "5/5 plot"
$AMOEBA plot --run "$RUN" --budget 75%
echo "demo finished in $(( $(date +%s) - t0 )) s"
