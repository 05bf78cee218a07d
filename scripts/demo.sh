#!/usr/bin/env bash
# The main job on the shipped default model: check the sample images that ship with the repo,
# write their masks and overlays, then score the verdicts against the samples' ground truth.
# Before a default package exists it runs the data + metrics path instead (never a no-op).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=${DEMO_OUT:-runs/demo}
mkdir -p "$OUT"

if [ -f defaker_edge/models/default/manifest.json ]; then
  echo "== defaker check samples/ (default package: defaker_edge/models/default)" >&2
  set +e
  $BIN/defaker check samples/ --json --mask-dir "$OUT/masks" --overlay > "$OUT/verdicts.jsonl"
  rc=$?
  set -e
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ]; then echo "defaker check failed ($rc)" >&2; exit "$rc"; fi
  cat "$OUT/verdicts.jsonl"
  $BIN/python scripts/demo_score.py "$OUT/verdicts.jsonl" samples/manifest.jsonl "$OUT/masks" > "$OUT/predictions.jsonl"
  $BIN/defaker eval --predictions "$OUT/predictions.jsonl" --data samples/manifest.jsonl --out "$OUT/eval.json" >/dev/null
  $BIN/python - "$OUT/eval.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["overall"]
print(f"samples: n={r['n']}  image AUC={r['image_auc']:.3f}  balanced acc={r['balanced_acc']:.3f}  "
      f"pixel F1={r['pixel_f1']:.3f}", file=sys.stderr)
PY
  echo "masks and overlays in $OUT/masks" >&2
else
  echo "== no default package yet: synthetic data + metrics path" >&2
  $BIN/defaker data synth --out "$OUT/data" --n 16 --seed 0
  $BIN/python scripts/demo_score.py --oracle "$OUT/data/manifest.jsonl" > "$OUT/predictions.jsonl"
  $BIN/defaker eval --predictions "$OUT/predictions.jsonl" --data "$OUT/data/manifest.jsonl" --out "$OUT/eval.json"
fi
