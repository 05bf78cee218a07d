#!/usr/bin/env bash
# Promote the training program's state (models/program) to the shipped package, when the held-out
# comparison allows it: `defaker train compare` (paired bootstrap over the held-out real-photo images,
# the state's last scores against the shipped student's) must say promote, unless FORCE=1.
# Then the student becomes models/default-student (with promotion.json: the comparison), and the
# package is rebuilt as `make default-model` builds it: thresholds (image, band, pixel), INT8-CPU and
# INT8 behind their gates, the band refitted to where FP32 changes the INT8-CPU decision, export (the manifest records
# the promotion), verify. The ledger gets a "promotion" line and the baseline becomes the new student.
# Knobs: BIN (.venv/bin), WORK (runs/default: its data/manifest.jsonl is the recipe's data, with the val
# split thresholds are fitted on), CALIB_N (128), FORCE (0).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
WORK=${WORK:-runs/default}
DATA=$WORK/data/manifest.jsonl
STATE=models/program
PKG=defaker_edge/models/default
CALIB_N=${CALIB_N:-128}
OUT=runs/promote
say() { echo "== [$(date +%H:%M:%S)] $*" >&2; }
[ -f "$DATA" ] || { echo "no $DATA: make the recipe's data first (scripts/default_model.sh does)" >&2; exit 2; }
mkdir -p "$OUT"

say "held-out comparison: $STATE vs the shipped student"
$BIN/defaker train compare --candidate "$STATE/heldout_scores.json" --baseline "$STATE/baseline_scores.json" \
  --out "$OUT/comparison.json"
$BIN/python - "$OUT/comparison.json" "$STATE" <<'PY'
import hashlib, json, os, sys
c = json.load(open(sys.argv[1]))
w = os.path.join(sys.argv[2], "student", "model.safetensors")
sha = hashlib.sha256(open(w, "rb").read()).hexdigest()
if c["candidate"]["weights_sha256"] != sha:
    sys.exit(f"{w}: the held-out scores are of other weights ({c['candidate']['weights_sha256'][:12]}, "
             f"state {sha[:12]}): run `defaker train eval --heldout ...` first")
if not c["promote"] and os.environ.get("FORCE") != "1":
    sys.exit("not promoted: the gain is within the bootstrap noise (FORCE=1 overrides)")
PY

say "student -> models/default-student"
# the shipped tile size is an export choice (576: README, Benchmark); the program's config may carry another
SHIPPED_TILE=$($BIN/python -c 'import json; print(json.load(open("models/default-student/config.json"))["tile"])')
rm -rf models/default-student && mkdir -p models/default-student
cp "$STATE/student/config.json" "$STATE/student/model.safetensors" models/default-student/
$BIN/python scripts/set_tile.py models/default-student "$SHIPPED_TILE"
cp "$OUT/comparison.json" models/default-student/promotion.json
$BIN/python - models/default-student/report.json models/ledger.jsonl "$OUT/comparison.json" <<'PY'
import json, sys
lines = [json.loads(x) for x in open(sys.argv[2]) if x.strip()]
runs = [x for x in lines if x.get("kind") in (None, "eval")]
last = runs[-1] if runs else {}
json.dump({"format": "defaker-program-report/1", "step": last.get("step"), "examples": last.get("examples"),
           "cpu_hours": last.get("cpu_hours"), "heldout": last.get("heldout"),
           "promotion": json.load(open(sys.argv[3])), "ledger": "models/ledger.jsonl"},
          open(sys.argv[1], "w"), indent=2)
PY

NEW_CALIB=0 BIN=$BIN WORK=$WORK DATA=$DATA CALIB_N=$CALIB_N bash scripts/build_package.sh

say "ledger: promotion line; the promoted student is the new baseline"
cp "$STATE/heldout_scores.json" "$STATE/baseline_scores.json"
$BIN/python - "$STATE/baseline_scores.json" "$OUT/comparison.json" models/ledger.jsonl "$PKG/manifest.json" <<'PY'
import datetime, hashlib, json, sys
b = json.load(open(sys.argv[1])); b["student"] = "models/default-student"; json.dump(b, open(sys.argv[1], "w"))
c = json.load(open(sys.argv[2]))
line = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "kind": "promotion",
        "step": c["candidate"]["step"], "weights_sha256": c["candidate"]["weights_sha256"],
        "package_manifest_sha256": hashlib.sha256(open(sys.argv[4], "rb").read()).hexdigest(),
        "auc_delta": c["slices"]["all"]["auc_delta"], "forced": not c["promote"]}
open(sys.argv[3], "a").write(json.dumps(line) + "\n")
PY
say "done: $PKG"
