#!/usr/bin/env bash
# models/default-student -> the shipped package (defaker_edge/models/default), the way every path that
# changes the shipped weights builds it (scripts/default_model.sh after training, scripts/promote.sh
# after a promotion): calibration set, thresholds (image threshold, band, pixel threshold), INT8-CPU and
# INT8 behind their accuracy gates (and FP8 as a recipe when FP8=1), the band widened to cover the
# INT8-CPU disagreements, export, a check that no shipped file failed its gate, verify.
# Knobs (environment): BIN (.venv/bin), WORK (runs/default), DATA ($WORK/data/manifest.jsonl: its val
# split fits the thresholds), CALIB_N (128), FP8 (0), NEW_CALIB (1: rebuild $WORK/calib), OVERLAP (the
# tile overlap the thresholds are fitted at and the package ships with; default: the runtime's), PKG
# (defaker_edge/models/default), MODEL (models/default-student).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
WORK=${WORK:-runs/default}
DATA=${DATA:-$WORK/data/manifest.jsonl}
CALIB_N=${CALIB_N:-128}  # ModelOpt fake-quant calibration is ~1 s per tile on 2 cores
PKG=${PKG:-defaker_edge/models/default}
MODEL=${MODEL:-models/default-student}  # the student dir to package (scripts/chain.sh: the chain's student)
OV=(${OVERLAP:+--overlap "$OVERLAP"})
say() { echo "== [$(date +%H:%M:%S)] $*" >&2; }

say "calibration set and thresholds"
# calibration tiles at the model's own tile size (its config.json); a set cut at another size is rebuilt
TILE=$($BIN/python -c 'import json, sys; print(json.load(open(sys.argv[1] + "/config.json"))["tile"])' "$MODEL")
CALIB_TILE=$($BIN/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["tile"])' "$WORK/calib/manifest.json" 2>/dev/null || echo none)
if [ "${NEW_CALIB:-1}" = 1 ] || [ "$CALIB_TILE" != "$TILE" ]; then
  rm -rf "$WORK/calib"
  $BIN/defaker calibrate build --data "$DATA" --out "$WORK/calib" --tile "$TILE"
fi
$BIN/defaker calibrate thresholds --model "$MODEL" --data "$DATA" "${OV[@]}"

PRECISIONS="int8-cpu int8"
[ "${FP8:-0}" = 1 ] && PRECISIONS="$PRECISIONS fp8"
for p in $PRECISIONS; do
  say "quantize $p"
  rm -rf "$WORK/q-$p"
  # fp8 is kept as a recipe, not shipped: ORT's CPU emulation of FP8 Q/DQ does not predict what
  # TensorRT's FP8 kernels do, so its gate fails here (--force writes it to $WORK/q-fp8 anyway, for
  # `defaker engine build` on an FP8 GPU). Only files that passed their gate go into the package.
  $BIN/defaker quantize --model "$MODEL" --calib "$WORK/calib" --precision "$p" \
    --data "$DATA" --calib-n "$CALIB_N" --out "$WORK/q-$p" $([ "$p" = fp8 ] && echo --force || echo --auto-exclude)
done

say "thresholds: the band where FP32 changes the CPU INT8 decision often enough, and the re-run margin"
$BIN/defaker calibrate thresholds --model "$MODEL" --data "$DATA" \
  --compare "$WORK/q-int8-cpu/model.onnx" "${OV[@]}"

say "export the package"
$BIN/defaker export --model "$MODEL" --quantized "$WORK/q-int8" "$WORK/q-int8-cpu" \
  --data "$DATA" --out "$PKG" --force "${OV[@]}"
# the shipped package must not carry a file whose gate failed (the runtime would only load it by name)
$BIN/python - "$PKG/manifest.json" <<'PY'
import json, sys
bad = [f["path"] for f in json.load(open(sys.argv[1]))["files"] if (f.get("gate") or {}).get("passed") is False]
sys.exit(f"{sys.argv[1]}: files that failed their accuracy gate: {bad}" if bad else 0)
PY
$BIN/defaker package verify "$PKG"
say "done: $PKG ($(du -sh "$PKG" | cut -f1))"
