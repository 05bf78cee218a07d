#!/usr/bin/env bash
# `make train`: one session of the default model's training program (defaker train), from a fresh
# clone or a warm machine. Makes what is missing (the photo corpus, the held-out set, the recipe's
# training forgeries: the same commands and seeds as scripts/default_model.sh, so every session trains
# on the same data and scores on the same held-out images), scores the shipped student once as the
# baseline, then resumes the committed state for MINUTES of wall clock in the background-friendly way:
# nice, bf16 where the CPU has it. SIGTERM (or Ctrl-C) ends it early with a checkpoint and a held-out
# score. Commit models/program and models/ledger.jsonl afterwards.
# FRESH=1 (the default) trains this session on forgeries no earlier session saw: the same recipe and
# photos, synthesized with a seed taken from the program's step (6,000 + 1,600 images, about 4 CPU
# minutes on 2 cores), in $WORK/fresh (replaced each session), so the program never settles on one
# fixed set. Its effect on the held-out score is within the curve's noise (README). FRESH=0 trains on
# the recipe's fixed set ($WORK/data), as the program did up to step 28,822. The recipe's val split for thresholds and
# the held-out set stay the same either way.
# Knobs: MINUTES (100), EVAL_MINUTES (35), NICE (10), BIN (.venv/bin), WORK (runs/default), FRESH (1),
# N_PHOTO (6000) and N_PROC (1600): the fresh set's size.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
WORK=${WORK:-runs/default}
DATA=$WORK/data/manifest.jsonl
HELD=data/heldout/manifest.jsonl
say() { echo "== [$(date +%H:%M:%S)] $*" >&2; }
[ -f data/photos/photos.jsonl ] || { say "photo corpus"; $BIN/defaker data photos --out data/photos; }
[ -f "$HELD" ] || { say "held-out set"; $BIN/defaker data heldout --photos data/photos --out data/heldout --n 300 --seed 7; }
if [ ! -f "$DATA" ]; then
  say "training forgeries (the recipe's seeds)"
  $BIN/defaker data synth --photos data/photos --out "$WORK/photo" --n 6000 --seed 11 \
    --domains natural,document --size-min 384 --size-max 1024 --overwrite
  $BIN/defaker data synth --out "$WORK/proc" --n 1600 --seed 12 --domains face,aigc \
    --size-min 256 --size-max 768 --overwrite
  $BIN/defaker data merge --out "$DATA" "$WORK/photo" "$WORK/proc"
fi
if [ "${FRESH:-1}" = 1 ]; then
  SEED=$($BIN/python scripts/fresh_seed.py)
  if [ ! -f "$WORK/fresh/seed-$SEED" ]; then
    say "fresh training forgeries (seed $SEED: 1000 + the program's step)"
    rm -rf "$WORK/fresh"
    $BIN/defaker data synth --photos data/photos --out "$WORK/fresh/photo" --n "${N_PHOTO:-6000}" --seed "$SEED" \
      --domains natural,document --size-min 384 --size-max 1024 --overwrite
    $BIN/defaker data synth --out "$WORK/fresh/proc" --n "${N_PROC:-1600}" --seed "$((SEED + 1))" --domains face,aigc \
      --size-min 256 --size-max 768 --overwrite
    $BIN/defaker data merge --out "$WORK/fresh/manifest.jsonl" "$WORK/fresh/photo" "$WORK/fresh/proc"
    touch "$WORK/fresh/seed-$SEED"
  fi
  DATA=$WORK/fresh/manifest.jsonl
fi
[ -f models/program/baseline_scores.json ] || { say "baseline: the shipped student on the held-out set"; \
  $BIN/defaker train baseline --heldout "$HELD"; }
BF16=$(grep -qw avx512_bf16 /proc/cpuinfo 2>/dev/null && echo --bf16 || true)
say "train ${MINUTES:-100} minutes"
exec nice -n "${NICE:-10}" $BIN/defaker train run --data "$DATA" --heldout "$HELD" --minutes "${MINUTES:-100}" \
  --eval-minutes "${EVAL_MINUTES:-35}" $BF16
