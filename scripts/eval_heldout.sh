#!/usr/bin/env bash
# Score a deployment package on a held-out set (or any manifest with images/ beside it):
# `defaker check` over every image, then `defaker eval` at the package's own threshold.
#   scripts/eval_heldout.sh PACKAGE DATA/manifest.jsonl OUTDIR [extra `defaker check` options]
# Writes OUTDIR/predictions.jsonl, OUTDIR/masks/, OUTDIR/eval.json (overall, per_domain, per_kind)
# OUTDIR/eval.md (a table per domain x kind) and OUTDIR/scores.json (per image: a stage of `train chain`).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 PACKAGE MANIFEST OUTDIR [check options, e.g. --threads 1]" >&2
  exit 2
fi
PKG=$1; MAN=$2; OUT=$3; shift 3
PY=${PYTHON:-python}
ROOT=$(cd "$(dirname "$MAN")" && pwd)
mkdir -p "$OUT/masks"
OUT=$(cd "$OUT" && pwd)  # absolute: the mask paths in predictions.jsonl must resolve from anywhere
# --overwrite: OUT/masks holds only this script's own outputs (a rerun replaces them)
"$PY" -m defaker_edge check --package "$PKG" --json --mask-dir "$OUT/masks" --overwrite "$@" "$ROOT/images" \
  > "$OUT/predictions.jsonl"
# balanced accuracy at the threshold the package itself decides with (every line carries it)
THR=$("$PY" -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["threshold"])' "$OUT/predictions.jsonl")
"$PY" -m defaker_edge eval --predictions "$OUT/predictions.jsonl" --data "$MAN" --threshold "$THR" \
  --out "$OUT/eval.json" --markdown "$OUT/eval.md" --scores-out "$OUT/scores.json" > /dev/null
cat "$OUT/eval.md"
