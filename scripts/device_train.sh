#!/usr/bin/env bash
# A lent GPU machine counts at once: one call trains the default model's program there and brings the
# state back. Two halves:
#
#   scripts/device_train.sh prepare      here: runs/device/photos <- the photo corpus without the .debs
#                                        (~40 MB; it travels with the call as a carried path)
#   scripts/device_train.sh run          there (the device tool's command), or here with a tiny config:
#                                        synthesize the training forgeries from the carried photos on every
#                                        core, resume the program from models/program (committed, so it
#                                        travels), train MINUTES of wall clock on the GPU with WORKERS
#                                        batch-cutting processes, then copy the new state and ledger lines
#                                        to $OUT (state.tar + ledger.jsonl)
#   scripts/device_train.sh adopt DIR    here: unpack what came back (DIR = the run's files_at) into
#                                        models/program and append its ledger lines; then score it with
#                                        `defaker train eval --heldout data/heldout/manifest.jsonl`
#
# The device tool's call (one command; the machine has torch with CUDA, opencv, Pillow, 16 cores, no
# network, at most 10 minutes a call):
#   run(command="bash scripts/device_train.sh run", carry=["runs/device"], timeout_s=600)
# Held-out scoring stays here (the held-out photos' forgeries must be byte-identical to the ones the
# ledger's other lines were scored on, and library versions there differ).
# Knobs: MINUTES (7), N_PHOTO (6000), N_PROC (1600), BATCH (32), WORKERS (nproc - 2), PY, OUT,
# SEED (the forgeries' seed; default 1000 + the program's step, as scripts/train_session.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEV=runs/device
cmd=${1:-}

case "$cmd" in
prepare)
  SRC=${PHOTOS:-data/photos}
  [ -f "$SRC/photos.jsonl" ] || { echo "no $SRC/photos.jsonl: run 'defaker data photos --out $SRC' first" >&2; exit 2; }
  rm -rf "$DEV/photos" && mkdir -p "$DEV/photos"
  cp "$SRC/photos.jsonl" "$DEV/photos/"
  cp -r "$SRC/files" "$DEV/photos/"
  du -sh "$DEV" >&2
  ;;
run)
  [ -f "$DEV/photos/photos.jsonl" ] || { echo "no $DEV/photos: run '$0 prepare' here and carry $DEV" >&2; exit 2; }
  OUT=${OUT:-$DEV/out}
  mkdir -p "$OUT"
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
  CORES=$(nproc)
  WORKERS=${WORKERS:-$(( CORES > 2 ? CORES - 2 : 0 ))}
  SYN_W=$(( CORES > 1 ? CORES : 1 ))
  D=$DEV/work
  say() { echo "== [$(date +%H:%M:%S)] $*" >&2; }
  INFO='import torch; c = torch.cuda.is_available(); print("torch", torch.__version__, torch.cuda.get_device_name(0) if c else "cpu")'
  say "$($PY -c "$INFO")"
  # forgeries no earlier session saw, as scripts/train_session.sh makes them: a seed from the program's step
  SEED=${SEED:-$($PY scripts/fresh_seed.py)}
  if [ ! -f "$D/data/manifest.jsonl" ]; then
    say "forgeries (seed $SEED): ${N_PHOTO:-6000} on the photos, ${N_PROC:-1600} procedural, $SYN_W processes"
    $PY -m defaker_edge data synth --photos "$DEV/photos" --out "$D/photo" --n "${N_PHOTO:-6000}" --seed "$SEED" \
      --domains natural,document --size-min 384 --size-max 1024 --workers "$SYN_W" --overwrite >&2
    $PY -m defaker_edge data synth --out "$D/proc" --n "${N_PROC:-1600}" --seed "$((SEED + 1))" --domains face,aigc \
      --size-min 256 --size-max 768 --workers "$SYN_W" --overwrite >&2
    $PY -m defaker_edge data merge --out "$D/data/manifest.jsonl" "$D/photo" "$D/proc" >&2
  fi
  before=$( [ -f models/ledger.jsonl ] && wc -l < models/ledger.jsonl || echo 0 )
  say "train ${MINUTES:-7} minutes, batch ${BATCH:-32}, $WORKERS workers"
  BF16=$($PY -c "import torch; print('--bf16' if torch.cuda.is_available() else '')")
  $PY -m defaker_edge train run --data "$D/data/manifest.jsonl" --minutes "${MINUTES:-7}" --ckpt-minutes 2 \
    --batch "${BATCH:-32}" --workers "$WORKERS" --work "$D/program" $BF16 ${EXTRA:-} >&2
  tar -cf "$OUT/state.tar" models/program
  tail -n +"$(( before + 1 ))" models/ledger.jsonl > "$OUT/ledger.jsonl"
  say "done: $OUT/state.tar ($(du -h "$OUT/state.tar" | cut -f1)), $(wc -l < "$OUT/ledger.jsonl") ledger line(s)"
  ;;
adopt)
  SRC=${2:?usage: $0 adopt DIR (the files_at of the device run)}
  [ -f "$SRC/state.tar" ] && [ -f "$SRC/ledger.jsonl" ] || { echo "$SRC: no state.tar + ledger.jsonl" >&2; exit 2; }
  tar -xf "$SRC/state.tar"
  cat "$SRC/ledger.jsonl" >> models/ledger.jsonl
  echo "adopted $(wc -l < "$SRC/ledger.jsonl") ledger line(s); now: defaker train eval --heldout data/heldout/manifest.jsonl" >&2
  ;;
*)
  echo "usage: $0 prepare | run | adopt DIR   (see the comments at the top)" >&2
  exit 2
  ;;
esac
