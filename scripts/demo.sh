#!/usr/bin/env bash
# The main job on the shipped default model: check the sample images that ship with the repo,
# write their masks and overlays, then score the verdicts against the samples' ground truth.
# Before a default package exists it runs the data + metrics path instead (never a no-op).
# `make demo` runs it with DEMO_BIN=.venv-runtime/bin: the device install (`pip install .`, no
# torch); checking and scoring need nothing more. Verdicts are scored at the package's own
# calibrated threshold, the one `is_fake` uses, not at 0.5.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${DEMO_BIN:-.venv/bin}
OUT=${DEMO_OUT:-runs/demo}
mkdir -p "$OUT"

if [ -f defaker_edge/models/default/manifest.json ]; then
  echo "== defaker check samples/ (default package: defaker_edge/models/default)" >&2
  # --overwrite: the demo's own outputs from an earlier run (never the samples: they are not in $OUT)
  $BIN/defaker check samples/ --json --mask-dir "$OUT/masks" --overlay --overwrite > "$OUT/verdicts.jsonl"
  cat "$OUT/verdicts.jsonl"
  THR=$($BIN/python -c 'import json, sys; print({json.loads(l)["threshold"] for l in open(sys.argv[1])}.pop())' \
        "$OUT/verdicts.jsonl")
  $BIN/python scripts/demo_score.py "$OUT/verdicts.jsonl" samples/manifest.jsonl > "$OUT/predictions.jsonl"
  $BIN/defaker eval --predictions "$OUT/predictions.jsonl" --data samples/manifest.jsonl --threshold "$THR" \
    --out "$OUT/eval.json" >/dev/null
  $BIN/python - "$OUT/eval.json" "$THR" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["overall"]
print(f"samples: n={r['n']}  image AUC={r['image_auc']:.3f}  balanced acc={r['balanced_acc']:.3f} "
      f"(at the package threshold {float(sys.argv[2]):.3f})  pixel F1={r['pixel_f1']:.3f} (binary mask, at the "
      f"package's pixel threshold; best cut {r['pixel_f1_best']:.3f}, pixel AUC {r['pixel_auc']:.3f})", file=sys.stderr)
PY
  echo "masks and overlays in $OUT/masks" >&2
else
  echo "== no default package yet: synthetic data + metrics path (needs the build install: make setup)" >&2
  BIN=.venv/bin
  $BIN/defaker data synth --out "$OUT/data" --n 16 --seed 0
  $BIN/python scripts/demo_score.py --oracle "$OUT/data/manifest.jsonl" > "$OUT/predictions.jsonl"
  $BIN/defaker eval --predictions "$OUT/predictions.jsonl" --data "$OUT/data/manifest.jsonl" --out "$OUT/eval.json"
fi
