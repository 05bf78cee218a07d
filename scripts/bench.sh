#!/usr/bin/env bash
# `make bench`: the committed CPU benchmark of the default package on images nothing trained on
# (a synthetic set with its own seed), with the real-size teacher's latency in the same run.
# Run it on an idle machine: report.md flags a loaded CPU. Knobs: RUNS, TEACHER_RUNS, OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=${OUT:-bench/results/cpu-2core}
DATA=runs/bench/data
[ -f "$DATA/manifest.jsonl" ] || $BIN/defaker data synth --out "$DATA" --n 200 --seed 20261127
TEACHER_ARGS=()
if [ "${TEACHER_RUNS:-1}" -gt 0 ]; then
  TEACHER_ARGS=(--teacher-preset defakerone-2b --random-weights --teacher-runs "${TEACHER_RUNS:-1}" --teacher-warmup 0)
fi
$BIN/defaker bench --package models/default --data "$DATA/manifest.jsonl" --out "$OUT" \
  --runs "${RUNS:-50}" --robustness --robustness-limit "${ROBUST_N:-40}" "${TEACHER_ARGS[@]}"
