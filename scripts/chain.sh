#!/usr/bin/env bash
# The compression chain on one teacher, end to end, with its retention report:
#   teacher -> (distilled edge student, when the teacher is not one) -> LoRA-pruned student, distilled
#   from the teacher on the same crops -> recovery: KD from the teacher vs ground truth only, at equal
#   minutes -> the better one calibrated, quantized (INT8 behind the gate) and exported -> every stage
#   scored on the held-out set -> `defaker train chain` (per domain, bootstrap intervals, retention).
#   scripts/chain.sh [TEACHER]
# TEACHER: a student dir (the stand-in: default, the training program's committed student) or any
# checkpoint `defaker distill --teacher` reads (a DeFakerOne / Sa2VA checkpoint): then an edge student
# is first distilled from it for DISTILL_MINUTES, starting from the shipped student.
# Knobs: WORK (runs/chain), DATA (runs/default/data/manifest.jsonl), HELD (data/heldout/manifest.jsonl),
# RATIO (0.35 of the prunable channels: about 55% of the parameters stay), PRUNE_STEPS (1200), RECOVER_CPU_MINUTES (24: process CPU minutes each, so both arms get the same CPU on a shared machine), DISTILL_MINUTES (30),
# TILE (576), BIN (.venv/bin). Each step is skipped when its output exists (delete it to redo), so a stopped chain resumes.
# Writes WORK/chain.json, WORK/chain.md, WORK/chain.png (the Pareto plot), WORK/package (the chain's deployment package).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
WORK=${WORK:-runs/chain}
DATA=${DATA:-runs/default/data/manifest.jsonl}
HELD=${HELD:-data/heldout/manifest.jsonl}
RATIO=${RATIO:-0.35}
PRUNE_STEPS=${PRUNE_STEPS:-1200}
RECOVER_CPU_MINUTES=${RECOVER_CPU_MINUTES:-24}
TILE=${TILE:-576}  # the package's tile size (the shipped one); every FP32 stage is scored at it too
BF16=$(grep -qw avx512_bf16 /proc/cpuinfo 2>/dev/null && echo --bf16 || true)
say() { echo "== [$(date +%H:%M:%S)] $*" >&2; }
mkdir -p "$WORK"
TEACHER=${1:-}
if [ -z "$TEACHER" ]; then  # the stand-in: a fixed copy of the program's committed student
  TEACHER=$WORK/teacher
  if [ ! -f "$TEACHER/model.safetensors" ]; then
    mkdir -p "$TEACHER"
    for f in config.json model.safetensors; do git show "HEAD:models/program/student/$f" > "$TEACHER/$f"; done
  fi
fi
IS_STUDENT=$($BIN/python -c 'import sys; from defaker_edge.distill.targets import is_student_dir as s; print(int(s(sys.argv[1])))' "$TEACHER")
score() {  # NAME STUDENT_DIR [CUT]: held-out scores of a torch stage
  [ -f "$WORK/scores-$1.json" ] || { say "held-out scores: $1"; $BIN/defaker train score --student "$2" --heldout "$HELD" \
    --pixel-threshold "${3:-0.5}" --tile "$TILE" --out "$WORK/scores-$1.json" > /dev/null; }
}
set_tile() {  # DIR: this chain's own output is packaged at TILE (the student is fully convolutional)
  $BIN/python scripts/set_tile.py "$1" "$TILE"
}
if [ "$IS_STUDENT" = 1 ]; then
  UNPRUNED=$TEACHER  # already an edge student: the pruning distils it into its own smaller copy
else
  UNPRUNED=$WORK/distilled
  [ -f "$UNPRUNED/model.safetensors" ] || { say "distil an edge student from $TEACHER (${DISTILL_MINUTES:-30} min)"; \
    $BIN/defaker distill --teacher "$TEACHER" --data "$DATA" --init models/default-student --minutes "${DISTILL_MINUTES:-30}" \
      --steps 1000000 --batch 16 --crop 256 --threads 2 --eval-max 0 $BF16 --out "$UNPRUNED"; }
fi
[ -f "$WORK/pruned/model.safetensors" ] || { say "LoRA-prune $RATIO of the channels ($PRUNE_STEPS steps, KD from the teacher)"; \
  $BIN/defaker prune --student "$UNPRUNED" --teacher "$TEACHER" --data "$DATA" --ratio "$RATIO" --steps "$PRUNE_STEPS" \
    --batch 16 --crop 256 --threads 2 --eval-max 0 --seed 21 --out "$WORK/pruned"; }
set_tile "$WORK/pruned"
# recovery at equal CPU (process CPU minutes, all threads): KD from the teacher vs ground truth alone
for how in kd gt; do
  [ -f "$WORK/recovered-$how/model.safetensors" ] && continue
  say "recover the pruned student: $how, $RECOVER_CPU_MINUTES CPU minutes"
  SRC=(--teacher "$TEACHER"); [ $how = gt ] && SRC=(--ground-truth-only)
  $BIN/defaker distill "${SRC[@]}" --data "$DATA" --init "$WORK/pruned" --cpu-minutes "$RECOVER_CPU_MINUTES" --steps 1000000 \
    --lr 1e-3 --batch 16 --crop 256 --threads 2 --seed 23 --eval-max 0 $BF16 --out "$WORK/recovered-$how"
  set_tile "$WORK/recovered-$how"
done
score recovered-kd "$WORK/recovered-kd"; score recovered-gt "$WORK/recovered-gt"
BEST=$($BIN/python - "$WORK" <<'PY'
import json, sys
from defaker_edge.metrics import image_auc
a = {h: json.load(open(f"{sys.argv[1]}/scores-recovered-{h}.json"))["images"] for h in ("kd", "gt")}
auc = {h: image_auc([r["label"] for r in v], [r["fake_prob"] for r in v]) for h, v in a.items()}
print(max(auc, key=auc.get))
PY
)
say "the better recovery on the held-out set: $BEST"
STUDENT=$WORK/recovered-$BEST
[ -f "$WORK/package/manifest.json" ] || { say "calibrate, quantize, export $STUDENT"; \
  MODEL=$STUDENT PKG=$WORK/package WORK=$WORK/build DATA=$DATA bash scripts/build_package.sh; }
[ -f "$WORK/int8/scores.json" ] || { say "the package on the held-out set (INT8-CPU, FP32 re-runs in its band)"; \
  PYTHON=$BIN/python bash scripts/eval_heldout.sh "$WORK/package" "$HELD" "$WORK/int8" > /dev/null; }
CUT=$($BIN/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["thresholds"]["pixel_threshold"])' "$WORK/package/manifest.json")
# FP32 stages cut at the package's calibrated pixel threshold, so every pixel F1 is at the shipped cut
score teacher "$TEACHER" "$CUT"; score pruned "$WORK/pruned" "$CUT"; score student "$STUDENT" "$CUT"
say "the chain"
$BIN/defaker train chain --stage "teacher=$WORK/scores-teacher.json,model=$TEACHER,note=stand-in teacher (FP32)" \
  --stage "pruned=$WORK/scores-pruned.json,model=$WORK/pruned,note=LoRA-pruned + distilled (FP32)" \
  --stage "recovered-$BEST=$WORK/scores-student.json,model=$STUDENT,note=recovered by $BEST (FP32)" \
  --stage "int8-cpu=$WORK/int8/scores.json,model=$STUDENT,note=the package: INT8-CPU + FP32 band" \
  --out "$WORK/chain.json" --markdown "$WORK/chain.md" --plot "$WORK/chain.png"
