#!/usr/bin/env bash
# `make bench`: the committed CPU benchmark of the default package on the held-out real-photo set
# (forgeries made by an independently written generator on photo packages the training never used),
# with the real-size teacher's latency in the same run.
# Run it on an idle machine: report.md flags a loaded CPU. Knobs: RUNS, TEACHER_RUNS, OUT, ROBUST_N
# (0: no robustness sweep).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=${OUT:-bench/results/cpu-2core}
PHOTOS=${PHOTOS:-data/photos}
DATA=runs/bench/heldout
if [ ! -f "$DATA/manifest.jsonl" ]; then
  $BIN/defaker data photos --out "$PHOTOS"
  $BIN/defaker data heldout --photos "$PHOTOS" --out "$DATA" --n 300 --seed 7
fi
TEACHER_ARGS=()
if [ "${TEACHER_RUNS:-1}" -gt 0 ]; then
  TEACHER_ARGS=(--teacher-preset defakerone-2b --random-weights --teacher-runs "${TEACHER_RUNS:-1}" --teacher-warmup 0)
fi
ROBUST=()
if [ "${ROBUST_N:-40}" -gt 0 ]; then ROBUST=(--robustness --robustness-limit "${ROBUST_N:-40}"); fi
$BIN/defaker bench --package models/default --data "$DATA/manifest.jsonl" --out "$OUT" \
  --runs "${RUNS:-50}" "${ROBUST[@]}" "${TEACHER_ARGS[@]}"
